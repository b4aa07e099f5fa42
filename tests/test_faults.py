"""Faults: kills at random moments, damaged checkpoints, and a workdir that holds another experiment."""

import errno
import glob
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fitnets_jax import FitnetsError, checkpoint, experiment, saved, train, workdir_lock
from fitnets_jax.errors import Preempted, WorkdirWriteError

from conftest import ROOT, tiny_digits
from helpers import assert_same_run, comparable_summary, final_state


def assert_checkpoints_readable(workdir):
  """Every live checkpoint (state and metadata) and a saved teacher restore without error."""
  checkpointer = ocp.StandardCheckpointer()
  directory = os.path.join(workdir, "checkpoints")
  for step in [os.path.join(directory, d) for d in os.listdir(directory) if d.isdigit()]:
    checkpointer.restore(os.path.join(step, "state"))
    with open(os.path.join(step, "meta", "metadata")) as f:
      json.load(f)
  if os.path.isfile(os.path.join(workdir, "teacher", "network.json")):
    checkpointer.restore(os.path.join(workdir, "teacher", "variables"))
  assert not os.path.exists(os.path.join(workdir, "checkpoints_damaged"))


# ---------------------------------------------------------------------------- kill harness

KILL_FLAGS = [
  "--config.num_devices=1",
  "--config.batch_size=32",
  "--config.log_every_steps=1",
  "--config.checkpoint_every_steps=2",
  "--config.stages.teacher.steps=24",
  "--config.stages.hint.steps=12",
  "--config.stages.student.steps=36",
]
# The KD stage is the longest, so the plans that land there still find steps and saves to kill on a
# fast machine (each kill costs a restart, so the run advances only a few steps per attempt).
KILL_CONFIG = dict(teacher=24, hint=12, student=36, log_every_steps=1, checkpoint_every_steps=2, keep_checkpoints=3)


class Attempt:
  """One start of the command line on `workdir`, killed (SIGKILL) when `should_kill` says so."""

  def __init__(self, workdir):
    self.workdir = workdir
    cmd = [
      sys.executable,
      "-u",
      "-m",
      "fitnets_jax.main",
      "--config",
      "configs/digits.py",
      "--workdir",
      workdir,
      *KILL_FLAGS,
    ]
    self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self.lines = queue.Queue()
    self.stderr = []
    threading.Thread(target=lambda: [self.lines.put(l) for l in self.proc.stdout], daemon=True).start()
    threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

  def saving(self):
    """True while orbax writes a checkpoint or the teacher (its temporary folder exists)."""
    return bool(
      glob.glob(os.path.join(self.workdir, "checkpoints", "*.orbax-checkpoint-tmp*"))
      or glob.glob(os.path.join(self.workdir, "teacher", "*.orbax-checkpoint-tmp*"))
    )

  def run(self, plan):
    """Runs until `plan` fires (then SIGKILL) or the process ends; returns (killed, last stage seen)."""
    kind, count, delay = plan
    seen, saves, stage, was_saving, fire_at = 0, 0, "startup", False, None
    while self.proc.poll() is None:
      try:
        line = self.lines.get(timeout=0.001)
      except queue.Empty:
        line = ""
      if line.startswith("["):
        stage = line[1 : line.index("]")]
      if line.startswith("Resuming from"):
        stage = line.split("stage '")[1].split("'")[0]
      if kind == "step" and " step " in line and "test accuracy" not in line:
        seen += 1
        if seen == count and fire_at is None:
          fire_at = time.monotonic() + delay
      if kind == "stage_end" and "test accuracy" in line and fire_at is None:
        fire_at = time.monotonic() + delay  # the stage's last save, then the next stage's start
      if kind == "restore" and line.startswith("Resuming from") and fire_at is None:
        fire_at = time.monotonic() + delay  # mid-restore / mid-recompile
      if kind == "checkpoint":
        now_saving = self.saving()
        saves += now_saving and not was_saving
        was_saving = now_saving
        if now_saving and saves == count:
          fire_at = time.monotonic()
      if fire_at is not None and time.monotonic() >= fire_at:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        return True, f"{stage} ({kind})"
    return False, stage


def test_sigkill_at_random_moments_then_restart_matches_an_uninterrupted_run(tmp_path):
  """Seeded kill plans — mid-step, mid-checkpoint-write, at stage ends and mid-restore — each
  followed by a restart on the same workdir; after every kill each live checkpoint is readable, and
  the finished run's parameters, summary.json and metrics.jsonl equal an uninterrupted run's."""
  reference = str(tmp_path / "reference")
  train.run(tiny_digits(**KILL_CONFIG), reference)
  rng = random.Random(0)
  kinds = ["step", "checkpoint", "step", "stage_end", "step", "restore", "checkpoint", "step"]
  work = str(tmp_path / "killed")
  killed_at = []
  for attempt in range(40):
    covered = len(killed_at) >= 6 and any(w.startswith("kd") for w in killed_at)
    kind = "none" if covered or len(killed_at) >= 18 else kinds[attempt % len(kinds)]
    plan = (kind, rng.randint(2, 8) if kind == "step" else rng.randint(1, 3), rng.uniform(0.0, 0.4))
    runner = Attempt(work)
    killed, where = runner.run(plan)
    if not killed:
      assert runner.proc.returncode == 0, "".join(runner.stderr)[-3000:]
      break
    killed_at.append(where)
    assert_checkpoints_readable(work)
    held = workdir_lock.read(work)  # the killed run's lock is still there; the restart takes it over
    assert held is None or held["pid"] == runner.proc.pid
  print("kill points:", killed_at)
  assert len(killed_at) >= 6  # the six kinds of the plan's first cycle: step, checkpoint, stage end, restore
  stages = {w.split()[0] for w in killed_at}
  assert {"teacher", "hint", "kd"} <= stages, killed_at
  assert any("checkpoint" in w for w in killed_at)
  assert_same_run(work, reference)


def test_sigterm_saves_exits_75_and_the_restart_matches_an_uninterrupted_run(tmp_path, sig=signal.SIGTERM):
  flags = [
    "--config.num_devices=1",
    "--config.batch_size=32",
    "--config.log_every_steps=4",
    "--config.checkpoint_every_steps=4",
    "--config.stages.teacher.steps=24",
    "--config.stages.hint.steps=8",
    "--config.stages.student.steps=16",
  ]
  work = str(tmp_path / "preempted")
  cmd = [sys.executable, "-u", "-m", "fitnets_jax.main", "--config", "configs/digits.py", "--workdir", work, *flags]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in proc.stdout:
    if line.startswith("[kd] step 4/16"):
      proc.send_signal(sig)  # a preemption notice, or Ctrl-C
      break
  proc.stdout.read()
  assert proc.wait(timeout=120) == 75, proc.stderr.read()[-2000:]  # Preempted.exit_code
  err = proc.stderr.read()
  assert "preempted: Stopped on SIGTERM, Ctrl-C or preemption in stage 'kd' at step" in err and "Traceback" not in err
  resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "Resuming from" in resumed.stdout and "stage 'kd' at step" in resumed.stdout
  reference = str(tmp_path / "reference")
  train.run(tiny_digits(), reference)
  assert_same_run(work, reference)


def test_ctrl_c_while_training_saves_and_stops_like_sigterm(tmp_path, monkeypatch):
  """Ctrl-C (SIGINT) at KD step 4: a checkpoint there, Preempted (exit 75), and the restart finishes.
  In process, the signal sent from the loop's own log call (the command line's SIGTERM path is the test
  above; Ctrl-C while starting is a real process below)."""
  log_train = train.log_train

  def interrupted(run, index, done, *args):
    values = log_train(run, index, done, *args)
    if run.exp.stages[index].name == "kd" and done == 4:
      os.kill(os.getpid(), signal.SIGINT)
    return values

  monkeypatch.setattr(train, "log_train", interrupted)
  work = str(tmp_path / "run")
  with pytest.raises(Preempted, match=r"Stopped on SIGTERM, Ctrl-C or preemption in stage 'kd' at step 4/16"):
    train.run(tiny_digits(), work)
  monkeypatch.undo()
  assert max(int(d) for d in os.listdir(os.path.join(work, "checkpoints")) if d.isdigit()) == 36  # 24 + 8 + 4
  summary = train.run(tiny_digits(), work)  # the resume path itself is the SIGTERM test's (bit for bit)
  assert summary["stages"]["kd"]["steps"] == 16 and os.path.isfile(os.path.join(work, "summary.json"))


def test_a_preemption_agreed_on_a_stages_last_step_stops_there_and_resumes(tmp_path, monkeypatch):
  # On several hosts orbax names one step at which every host stops; when that step ends a stage, the
  # stop must not be lost (the stage's end is saved, then exit 75), and the restart ends as an
  # uninterrupted run does.
  config = lambda: tiny_digits(teacher=8, hint=4, student=4, num_devices=1)
  work = str(tmp_path / "stopped")
  monkeypatch.setattr(ocp.CheckpointManager, "reached_preemption", lambda self, step: step == 8)
  with pytest.raises(Preempted, match=r"at the end of stage 'teacher'; it is saved"):
    train.run(config(), work)
  monkeypatch.undo()
  assert not os.path.exists(os.path.join(work, "summary.json"))
  train.run(config(), work)
  reference = str(tmp_path / "reference")
  train.run(config(), reference)
  assert_same_run(work, reference)


# ---------------------------------------------------------------------------- damaged checkpoints


def largest_array_file(checkpoint_dir):
  return max(glob.glob(os.path.join(checkpoint_dir, "state", "**", "d", "*"), recursive=True), key=os.path.getsize)


def flip_bytes(path, count=64):
  """XORs `count` bytes in the middle of a file: the damage a bad disk or a stray write leaves."""
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2 - count // 2)
    data = f.read(count)
    f.seek(-len(data), os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in data))


def test_damaged_latest_checkpoints_fall_back_to_the_previous_good_one(tmp_path, capsys):
  """Three damages, newest first: bytes flipped in an array file (orbax reads it without complaint;
  the state's digest does not match), a truncated array file, a deleted metadata folder."""
  config = lambda: tiny_digits("scratch", student=16)
  full = str(tmp_path / "full")
  train.run(config(), full)  # checkpoints at steps 4, 8, 12, 16
  work = str(tmp_path / "damaged")
  shutil.copytree(full, work)
  os.remove(os.path.join(work, "summary.json"))
  flip_bytes(largest_array_file(os.path.join(work, "checkpoints", "16")))
  truncated = largest_array_file(os.path.join(work, "checkpoints", "12"))
  with open(truncated, "r+b") as f:
    f.truncate(os.path.getsize(truncated) // 2)
  shutil.rmtree(os.path.join(work, "checkpoints", "8", "meta"))
  capsys.readouterr()
  summary = train.run(config(), work)
  err = capsys.readouterr()
  assert "checkpoint at global step 16 is unreadable (DamagedCheckpoint: its state's SHA-256 differs" in err.err
  assert "checkpoint at global step 12 is unreadable" in err.err
  assert "checkpoint at global step 8 is unreadable" in err.err
  assert "Resuming from" in err.out and "at step 4/16" in err.out
  assert sorted(os.listdir(os.path.join(work, "checkpoints_damaged"))) == ["12", "16", "8"]  # kept, not deleted
  assert summary["student"]["test_accuracy"] == comparable_summary(full)["student"]["test_accuracy"]
  (_, want), (_, got) = final_state(full), final_state(work)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


def test_no_readable_checkpoint_refuses_to_start_over_silently(tmp_path):
  work = str(tmp_path / "run")
  train.run(tiny_digits("scratch", student=8), work)
  for meta in glob.glob(os.path.join(work, "checkpoints", "*", "meta")):
    shutil.rmtree(meta)
  for _ in range(2):  # the refusal holds on every later start too
    with pytest.raises(FitnetsError, match=r"has no readable checkpoint left.*would silently discard the run"):
      train.run(tiny_digits("scratch", student=8), work)
  assert sorted(os.listdir(os.path.join(work, "checkpoints_damaged"))) == ["4", "8"]


# ---------------------------------------------------------------------------- another experiment


def snapshot(workdir):
  return {
    os.path.relpath(os.path.join(d, f), workdir): open(os.path.join(d, f), "rb").read()
    for d, _, files in os.walk(workdir)
    for f in files
  }


def test_a_workdir_of_another_experiment_is_refused_and_left_as_it_was(tmp_path):
  workdir = str(tmp_path / "run")
  train.run(tiny_digits("scratch", student=4), workdir)
  before = snapshot(workdir)
  other = tiny_digits("scratch", student=4, **{"stages.student.optimizer.learning_rate": 0.01, "dataset.flip": True})
  with pytest.raises(
    FitnetsError,
    match=r"holds another experiment: its config.json differs in dataset.flip "
    r"\(False there, True now\), stages.student.optimizer.learning_rate "
    r"\(0.001 there, 0.01 now\)\. Nothing in the workdir was changed",
  ):
    train.run(other, workdir)
  with pytest.raises(FitnetsError, match=r"differs in method \('scratch' there, 'kd' now\)"):
    train.run(tiny_digits("kd", student=4), workdir)
  assert snapshot(workdir) == before
  # Without config.json the newest checkpoint's record of the config guards the workdir.
  os.remove(os.path.join(workdir, "config.json"))
  before = snapshot(workdir)
  with pytest.raises(
    FitnetsError,
    match=r"holds another experiment: the config its newest checkpoint records "
    r"\(config.json is gone\) differs in dataset.flip",
  ):
    train.run(other, workdir)
  assert snapshot(workdir) == before
  train.run(tiny_digits("scratch", student=4), workdir)  # the same experiment resumes, and config.json is back
  assert os.path.isfile(os.path.join(workdir, "config.json"))


def test_a_key_added_by_a_later_version_counts_as_its_default_in_an_older_workdir():
  """A workdir's config.json written before `dataset.streaming`, `dataset.crop` and `dataset.mean` existed:
  resuming at their defaults changes nothing; setting one is a change."""
  from fitnets_jax import config as config_lib

  config = tiny_digits("scratch", student=4)
  saved = json.loads(config.to_json_best_effort())
  for key in ("streaming", "crop", "mean", "std"):
    del saved["dataset"][key]
  assert config_lib.changed_keys(saved, config) == []
  config.dataset.mean, config.dataset.std = [0.5], [0.25]
  assert config_lib.changed_keys(saved, config) == [("dataset.mean", [], [0.5]), ("dataset.std", [], [0.25])]


def test_keys_documented_as_safe_may_change_on_resume(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_digits("scratch", student=8)
  shutil.rmtree(workdir, ignore_errors=True)
  first = train.run(config, workdir)
  os.remove(os.path.join(workdir, "summary.json"))
  again = train.run(
    tiny_digits(
      "scratch",
      student=8,
      log_every_steps=2,
      checkpoint_every_steps=2,
      num_devices=2,
      eval_batch_size=40,
      on_nan="skip_step",
    ),
    workdir,
  )
  assert again["student"]["test_accuracy"] == first["student"]["test_accuracy"]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["log_every_steps"] == 2  # the record follows the latest start


# ---------------------------------------------------------------------------- one run per workdir

SMALL_FLAGS = [
  "--config.num_devices=1",
  "--config.batch_size=32",
  "--config.log_every_steps=4",
  "--config.checkpoint_every_steps=4",
  "--config.keep_checkpoints=100",
  "--config.stages.teacher.steps=24",
  "--config.stages.hint.steps=8",
  "--config.stages.student.steps=16",
]  # tiny_digits() as flags


def command(workdir, *flags):
  return [
    sys.executable,
    "-u",
    "-m",
    "fitnets_jax.main",
    "--config",
    "configs/digits.py",
    "--workdir",
    str(workdir),
    *flags,
  ]


def test_a_second_start_on_a_live_workdir_is_refused_at_once_and_the_first_run_is_untouched(tmp_path):
  """The first run is paused (SIGSTOP) while it holds the workdir, so the second start meets it for
  sure; once resumed it ends as an uninterrupted run does."""
  work = str(tmp_path / "run")
  first = subprocess.Popen(
    command(work, *SMALL_FLAGS), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  for line in first.stdout:
    if line.startswith("[teacher] step 4/"):
      first.send_signal(signal.SIGSTOP)
      break
  try:
    second = subprocess.run(command(work, *SMALL_FLAGS), cwd=ROOT, capture_output=True, text=True, timeout=300)
  finally:
    first.send_signal(signal.SIGCONT)
  assert second.returncode == 2, second.stderr[-3000:]
  errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and f"is in use by another run: process {first.pid} on host" in errors[0], second.stderr
  assert "Traceback" not in second.stderr and "[teacher]" not in second.stdout  # refused before it trained
  first.stdout.read()
  assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
  reference = str(tmp_path / "reference")
  train.run(tiny_digits(), reference)
  assert_same_run(work, reference)
  assert workdir_lock.read(work) is None  # released: the lock file is left empty


def test_a_local_lock_is_held_by_one_run_and_freed_when_its_holder_dies(tmp_path):
  work = str(tmp_path / "run")
  with workdir_lock.WorkdirLock(work):
    with pytest.raises(FitnetsError, match=rf"in use by another run: process {os.getpid()} on host"):
      workdir_lock.check_free(work)
    with pytest.raises(FitnetsError, match="in use by another run"):
      workdir_lock.WorkdirLock(work).acquire()
  workdir_lock.check_free(work)  # released
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from fitnets_jax import workdir_lock; "
      "workdir_lock.WorkdirLock(sys.argv[1]).acquire(); print('held', flush=True); "
      "time.sleep(600)",
      work,
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(FitnetsError, match=rf"process {holder.pid} on host .*, holding the lock now \("):
    workdir_lock.check_free(work)  # a live OS lock: no "last seen" age from a record never renewed
  holder.kill()
  holder.wait()
  lock = workdir_lock.WorkdirLock(work).acquire()  # at once: the killed holder's lock went with its process
  assert workdir_lock.read(work)["pid"] == os.getpid()
  lock.release()


def test_a_filesystem_without_flock_falls_back_to_a_heartbeat_record_with_a_warning(tmp_path, monkeypatch, capsys):
  import fcntl

  def no_flock(fd, operation):
    raise OSError(errno.ENOSYS, "Function not implemented")

  monkeypatch.setattr(fcntl, "flock", no_flock)
  work = str(tmp_path / "run")
  lock = workdir_lock.WorkdirLock(work).acquire()
  assert "flock is not supported" in capsys.readouterr().err and workdir_lock.read(work)["token"] == lock.token
  with pytest.raises(FitnetsError, match=r"in use by another run: process .*, last seen \d+ s ago"):
    workdir_lock.check_free(work)  # the fresh record holds the workdir
  with pytest.raises(FitnetsError, match="in use by another run"):
    workdir_lock.WorkdirLock(work).acquire()
  lock.release()
  workdir_lock.check_free(work)
  workdir_lock.WorkdirLock(work).acquire().release()  # free again: no refusal "forever"


def test_a_holder_that_cannot_renew_its_heartbeat_or_is_taken_over_stops_with_exit_75(tmp_path, monkeypatch):
  from fitnets_jax import files

  monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.05)
  monkeypatch.setattr(workdir_lock, "STALE_S", 0.3)
  monkeypatch.setattr(workdir_lock, "_settle", lambda: None)
  work = str(tmp_path / "run")
  lock = workdir_lock.WorkdirLock(work)
  lock.remote = True  # the heartbeat mode of buckets and of filesystems without flock
  lock.acquire()
  write = files.write_atomically
  monkeypatch.setattr(files, "write_atomically", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
  deadline = time.time() + 10
  while not lock.lost and time.time() < deadline:
    time.sleep(0.05)
  with pytest.raises(Preempted, match=r"lost the lock .*could not be renewed for 0 s .*EIO") as info:
    lock.check_held()
  assert info.value.exit_code == 75
  monkeypatch.setattr(files, "write_atomically", write)
  lock.release()
  taken = workdir_lock.WorkdirLock(work)
  taken.remote = True
  taken.acquire()
  write(os.path.join(work, "run.lock"), json.dumps({"token": "another", "heartbeat": time.time()}))
  deadline = time.time() + 10
  while not taken.lost and time.time() < deadline:
    time.sleep(0.05)
  assert "another run took the workdir's lock over" in taken.lost
  # The training loop asks at every step and writes nothing more once the lock is lost.
  acquire = workdir_lock.WorkdirLock.acquire

  def acquired_then_lost(self):
    acquire(self)
    self.lost = "a test"
    return self

  monkeypatch.setattr(workdir_lock.WorkdirLock, "acquire", acquired_then_lost)
  with pytest.raises(Preempted, match=r"lost the lock of --workdir=.*: a test\. It stopped without writing more"):
    train.run(tiny_digits("scratch"), str(tmp_path / "loop"))
  assert not os.path.exists(tmp_path / "loop" / "checkpoints" / "4")


def read_only_mount(source, target):
  """Mounts `source` read-only at `target` (a bind mount), or skips: mounting needs CAP_SYS_ADMIN."""
  os.makedirs(target, exist_ok=True)
  mounted = subprocess.run(["mount", "--bind", source, target], capture_output=True)
  if mounted.returncode != 0:
    pytest.skip(f"no bind mounts here ({mounted.stderr.decode().strip()[:100]}): a read-only workdir needs one")
  if subprocess.run(["mount", "-o", "remount,ro,bind", target], capture_output=True).returncode != 0:
    subprocess.run(["umount", target])
    pytest.skip("a bind mount could not be made read-only here")


def test_a_read_only_workdir_is_exit_2_for_a_run_and_readable_by_explore(tmp_path):
  """Real processes on a real read-only filesystem (EROFS; as root, permission bits would not stop writes)."""
  source, target = str(tmp_path / "source"), str(tmp_path / "ro")
  train.run(tiny_digits("scratch", student=8), os.path.join(source, "run"))
  read_only_mount(source, target)
  try:
    result = subprocess.run(
      command(os.path.join(target, "run"), *SMALL_FLAGS, "--config.method=scratch", "--config.stages.student.steps=8"),
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "cannot be written (OSError: Read-only file system)" in result.stderr and "Traceback" not in result.stderr
    explored = subprocess.run(
      [
        sys.executable,
        "-c",
        "import sys; from fitnets_jax.tools import explore; "
        "print(explore.open_run(sys.argv[1]).summary['student']['test_accuracy'])",
        os.path.join(target, "run"),
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert explored.returncode == 0 and float(explored.stdout.split()[-1]) >= 0, explored.stderr[-3000:]
  finally:
    subprocess.run(["umount", target])


# ---------------------------------------------------------------------------- teacher files


def test_a_lost_teacher_folder_is_recovered_from_the_teacher_stage_checkpoint(tmp_path, capsys):
  """A run resumed in its KD stage loads the teacher it trained from workdir/teacher. With that folder
  deleted, its weights deleted, its bytes flipped or its network.json cut short, the teacher stage's last
  checkpoint (always kept) holds the same weights: the run saves them there again and ends as an
  uninterrupted one."""
  full = str(tmp_path / "full")
  train.run(tiny_digits(), full)  # teacher 24, hint 8, KD 16 steps: checkpoints every 4
  damages = {
    "deleted": lambda w: shutil.rmtree(os.path.join(w, "teacher")),
    "weights deleted": lambda w: shutil.rmtree(os.path.join(w, "teacher", "variables")),
    "bytes flipped": lambda w: flip_bytes(largest_variables_file(os.path.join(w, "teacher"))),
    "network.json damaged": lambda w: open(os.path.join(w, "teacher", "network.json"), "w").write('{"model": "dig'),
  }
  for name, damage in damages.items():
    work = str(tmp_path / name.replace(" ", "_"))
    shutil.copytree(full, work)
    os.remove(os.path.join(work, "summary.json"))
    for step in (40, 44, 48):  # back to KD step 4 (global 36), as a kill there leaves it
      shutil.rmtree(os.path.join(work, "checkpoints", str(step)))
    damage(work)
    capsys.readouterr()
    train.run(tiny_digits(), work)
    err = capsys.readouterr().err
    assert "the teacher was recovered from the 'teacher' stage's last checkpoint (global step 24)" in err, (name, err)
    assert_same_run(work, full)
    assert os.path.isfile(os.path.join(work, "teacher", "network.json"))
  # With that checkpoint gone too, the teacher is lost: one paragraph, and nothing else changes.
  os.remove(os.path.join(work, "summary.json"))
  shutil.rmtree(os.path.join(work, "teacher"))
  shutil.rmtree(os.path.join(work, "checkpoints", "24"))
  for step in (40, 44, 48):
    shutil.rmtree(os.path.join(work, "checkpoints", str(step)))
  with pytest.raises(
    FitnetsError,
    match=r"The teacher this run trained is lost: .*teacher is missing, and the "
    r"'teacher' stage's last checkpoint \(global step 24",
  ):
    train.run(tiny_digits(), work)


def largest_variables_file(teacher_folder):
  return max(glob.glob(os.path.join(teacher_folder, "variables", "**", "d", "*"), recursive=True), key=os.path.getsize)


def test_a_reused_teacher_with_damaged_weights_is_one_paragraph(tmp_path):
  teacher_run = str(tmp_path / "teacher_run")  # a saved digits_teacher, as a run's teacher stage leaves it
  net = experiment.build_network("teacher", tiny_digits().teacher, 10, (8, 8, 1))
  params, stats = net.init(jax.random.PRNGKey(0))
  saved.save_network(teacher_run, "teacher", {"params": params, "batch_stats": stats}, net.describe())
  config = tiny_digits("kd", **{"teacher.checkpoint": teacher_run})
  flip_bytes(largest_variables_file(os.path.join(teacher_run, "teacher")))
  with pytest.raises(
    FitnetsError, match=r"teacher.checkpoint=.*: the network's variables in .* differ from those saved"
  ):
    experiment.prepare(config, str(tmp_path / "run"))
  shutil.rmtree(os.path.join(teacher_run, "teacher", "variables"))
  with pytest.raises(FitnetsError, match=r"teacher.checkpoint=.*: the network's variables in .* cannot be read"):
    experiment.prepare(config, str(tmp_path / "run"))


# ---------------------------------------------------------------------------- a full disk, a read-only folder


@pytest.mark.parametrize(
  "error",
  [OSError(errno.ENOSPC, "No space left on device"), PermissionError(errno.EACCES, "Permission denied")],
  ids=["disk full", "read-only"],
)
def test_a_failed_checkpoint_write_stops_with_one_paragraph_and_loses_nothing(error, tmp_path, monkeypatch):
  """The write of the step-8 checkpoint fails as orbax reports a full disk or a read-only folder (the
  OSError inside its own error); the step-4 checkpoint survives, and a rerun ends as an uninterrupted run."""
  work = str(tmp_path / "run")
  save = ocp.CheckpointManager.save

  def failing_save(self, step, *args, **kwargs):
    if step == 8:
      raise ValueError("orbax: the save did not complete") from error
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
  with pytest.raises(
    WorkdirWriteError,
    match=rf"Could not write the checkpoint at global step 8 to .*checkpoints/8 "
    rf"\({type(error).__name__}: .*{error.strerror}\)\. The checkpoints saved "
    r"before are intact \(the newest: global step 4\)",
  ) as info:
    train.run(tiny_digits("scratch", student=12), work)
  assert info.value.exit_code == 74 and "\n" not in str(info.value)
  monkeypatch.undo()
  assert sorted(d for d in os.listdir(os.path.join(work, "checkpoints")) if d.isdigit()) == ["4"]
  assert workdir_lock.read(work) is None  # the lock went with the failed run
  train.run(tiny_digits("scratch", student=12), work)
  reference = str(tmp_path / "reference")
  train.run(tiny_digits("scratch", student=12), reference)
  assert_same_run(work, reference)


def test_a_disk_that_fills_mid_run_exits_74_and_the_rerun_resumes(tmp_path):
  """A real full disk: the workdir on a small tmpfs, filled once the first checkpoint is written."""
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the monkeypatched test covers it")
  try:
    work = disk / "run"
    flags = [f for f in SMALL_FLAGS if "stages." not in f] + [
      "--config.method=scratch",
      "--config.stages.student.steps=16",
    ]
    proc = subprocess.Popen(command(work, *flags), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not os.path.isdir(work / "checkpoints" / "4" / "state") and proc.poll() is None and time.time() < deadline:
      time.sleep(0.02)
    proc.send_signal(signal.SIGSTOP)  # paused while the disk fills, so its next write meets a full disk
    with open(disk / "filler", "wb") as f:  # every byte left
      try:
        while True:
          f.write(b"\0" * 65536)
          f.flush()
      except OSError:
        pass
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 74, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "run the same command again" in errors[0]
    assert "Traceback" not in err
    os.remove(disk / "filler")
    resumed = subprocess.run(command(work, *flags), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout
  finally:
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ---------------------------------------------------------------------------- SIGTERM while starting


@pytest.mark.parametrize(
  "when,sig",
  [
    ("2 s after launch", signal.SIGTERM),
    ("at the backend line", signal.SIGTERM),
    ("at the backend line", signal.SIGINT),
  ],
  ids=["SIGTERM 2 s after launch", "SIGTERM at the backend line", "Ctrl-C at the backend line"],
)
def test_sigterm_while_starting_exits_75_with_a_message(when, sig, tmp_path):
  proc = subprocess.Popen(
    command(tmp_path / "run", *SMALL_FLAGS), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  if when == "2 s after launch":
    time.sleep(2.0)  # importing: long before JAX or TensorFlow is up
  else:
    for line in proc.stdout:
      if line.startswith("JAX "):  # loading the data, building the networks
        break
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 75, err[-3000:]
  assert "preempted: stopped on SIGTERM or Ctrl-C outside the training loop" in err and "Traceback" not in err
  assert "[teacher]" not in out


# ---------------------------------------------------------------------------- smaller items


def test_a_truncated_metrics_file_is_noticed_on_resume(tmp_path, capsys):
  work = str(tmp_path / "run")
  train.run(tiny_digits("scratch", student=12), work)  # logs at steps 4, 8, 12 (+ the test record)
  shutil.rmtree(os.path.join(work, "checkpoints", "12"))  # back to step 8, as a kill there leaves it
  os.remove(os.path.join(work, "summary.json"))
  path = os.path.join(work, "metrics.jsonl")
  with open(path) as f:
    first = f.readline()
  with open(path, "w") as f:  # a damaged copy: only the first record is left
    f.write(first)
  capsys.readouterr()
  train.run(tiny_digits("scratch", student=12), work)
  assert "metrics.jsonl holds 1 of the 2 records written up to global step 8; 1 are lost" in capsys.readouterr().err


def test_seeds_refused_leave_no_folder_behind_and_a_shared_teacher_is_named(tmp_path):
  teacher = experiment.build_network("teacher", tiny_digits().teacher, 10, (8, 8, 1))
  params, stats = teacher.init(jax.random.PRNGKey(0))
  saved.save_network(
    str(tmp_path / "teachers" / "seed_0"), "teacher", {"params": params, "batch_stats": stats}, teacher.describe()
  )
  runs = tmp_path / "runs"
  base = ["--seeds=2", "--config.method=kd", *SMALL_FLAGS]
  result = subprocess.run(
    command(runs, *base, f"--config.teacher.checkpoint={tmp_path}/teachers/seed_{{seed}}"),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 2 and "seed_1' holds no saved teacher" in result.stderr, result.stderr[-3000:]
  assert not runs.exists()  # seed 0's check made no folder
  shared = subprocess.run(
    command(runs, *base, f"--config.teacher.checkpoint={tmp_path}/teachers/seed_0", "--config.kd.temperature=0.0"),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert shared.returncode == 2
  assert "has no {seed}, so all 2 seeds distil from this one teacher" in shared.stdout


# ---------------------------------------------------------------------------- inputs changed under a run


def saved_random_teacher(folder, seed, classes=4, shape=(6, 6, 3)):
  """A valid digits_teacher for write_npz's data saved at folder/teacher, with random weights of `seed`."""
  net = experiment.build_network("teacher", tiny_digits().teacher, classes, shape)
  params, stats = net.init(jax.random.PRNGKey(seed))
  saved.save_network(folder, "teacher", {"params": params, "batch_stats": stats}, net.describe())


def rolled_back(full, work, steps):
  """A copy of the finished run `full` rolled back to before `steps` (as a kill leaves it)."""
  shutil.copytree(full, work)
  os.remove(os.path.join(work, "summary.json"))
  for step in steps:
    shutil.rmtree(os.path.join(work, "checkpoints", str(step)))
  return work


def test_a_resume_on_another_teacher_or_other_data_is_refused_unless_asked(tmp_path):
  """Checkpoints record the SHA-256 of the training data and of each reused teacher. A KD run whose
  teacher.checkpoint now holds another valid teacher, or whose npz changed, is refused with exit 2's
  one paragraph; resume_with_changed_inputs=True goes on, and the new teacher is measured again."""
  from helpers import write_npz

  teacher = str(tmp_path / "teacher_run")
  saved_random_teacher(teacher, 0)
  path = write_npz(tmp_path / "data.npz")
  config = lambda **o: tiny_digits(
    "kd", student=12, **{"teacher.checkpoint": teacher, "dataset.name": "npz", "dataset.path": path, **o}
  )
  full = str(tmp_path / "full")
  first = train.run(config(), full)
  meta = checkpoint.RunCheckpoints(os.path.join(full, "checkpoints"), 100).meta(12)
  assert set(meta["inputs"]) == {"data", "teacher"}
  # Another teacher in the same folder.
  shutil.rmtree(os.path.join(teacher, "teacher"))
  saved_random_teacher(teacher, 1)
  work = rolled_back(full, str(tmp_path / "other_teacher"), (8, 12))
  before = sorted(os.listdir(os.path.join(work, "checkpoints")))
  changed = r"checkpointed \(global step 4\) on other inputs than this run reads: the teacher read from .*\(SHA-256 "
  with pytest.raises(FitnetsError, match=changed):
    train.run(config(), work)
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == before
  summary = train.run(config(resume_with_changed_inputs=True), work)
  fresh = train.run(config(), str(tmp_path / "fresh"))  # the new teacher, measured by a run of its own
  assert summary["teacher"]["test_accuracy"] == fresh["teacher"]["test_accuracy"] != first["teacher"]["test_accuracy"]
  # Other data under the same dataset.path.
  work = rolled_back(str(tmp_path / "fresh"), str(tmp_path / "other_data"), (8, 12))
  rng = np.random.default_rng(5)
  write_npz(path, train_images=rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8))
  with pytest.raises(FitnetsError, match=r"on other inputs than this run reads: dataset.name='npz', dataset.path="):
    train.run(config(), work)


# ---------------------------------------------------------------------------- I/O errors while restoring

# Started as `python -c FAULTY_MAIN <flags>`: the real command line, with reads of checkpoint metadata
# failing with EIO while the file named by FITNETS_TEST_EIO holds a positive count (decremented per
# failure; "always" never runs out): a disk or bucket that errs for a while.
FAULTY_MAIN = """
import errno, os, runpy, sys
from fitnets_jax import checkpoint
read_meta = checkpoint.RunCheckpoints.meta
def failing_meta(self, step):
  path = os.environ["FITNETS_TEST_EIO"]
  left = open(path).read().strip() if os.path.exists(path) else "0"
  if left == "always" or int(left) > 0:
    if left != "always":
      open(path, "w").write(str(int(left) - 1))
    raise OSError(errno.EIO, "Input/output error")
  return read_meta(self, step)
checkpoint.RunCheckpoints.meta = failing_meta
checkpoint.READ_RETRY_S = 0.1
sys.argv[0] = "fitnets_jax.main"
runpy.run_module("fitnets_jax.main", run_name="__main__")
"""


def faulty_run(workdir, faults, counter, *flags):
  with open(counter, "w") as f:
    f.write(faults)
  return subprocess.run(
    [
      sys.executable,
      "-c",
      FAULTY_MAIN,
      "--config",
      "configs/digits.py",
      "--workdir",
      str(workdir),
      *SMALL_FLAGS,
      "--config.method=scratch",
      *flags,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "FITNETS_TEST_EIO": str(counter)},
  )


def test_an_io_error_while_restoring_is_retried_then_exit_74_and_never_taken_for_damage(tmp_path):
  """Real processes. An EIO that outlasts the retries exits 74 with nothing moved; one that clears within
  them resumes as if nothing happened; checkpoints set aside by mistake come back with one key."""
  full, counter = str(tmp_path / "full"), str(tmp_path / "eio")
  train.run(tiny_digits("scratch"), full)  # 16 steps, checkpoints every 4
  work = rolled_back(full, str(tmp_path / "work"), (12, 16))
  before = sorted(os.listdir(os.path.join(work, "checkpoints")))
  stuck = faulty_run(work, "always", counter)
  assert stuck.returncode == 74, stuck.stderr[-3000:]
  assert "after 3 tries" in stuck.stderr and "not damage, so nothing was moved" in stuck.stderr
  assert "Traceback" not in stuck.stderr
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == before
  assert not os.path.exists(os.path.join(work, "checkpoints_damaged"))
  passing = faulty_run(work, "2", counter)  # two failures, then the disk answers
  assert passing.returncode == 0, passing.stderr[-3000:]
  assert_same_run(work, full)
  # Checkpoints an earlier version set aside by mistake: the run refuses, then one key brings them back.
  work = rolled_back(full, str(tmp_path / "set_aside"), (16,))
  os.makedirs(os.path.join(work, "checkpoints_damaged"))
  for step in ("4", "8", "12"):
    os.rename(os.path.join(work, "checkpoints", step), os.path.join(work, "checkpoints_damaged", step))
  with pytest.raises(FitnetsError, match=r"--config.bring_back_set_aside=True moves them back"):
    train.run(tiny_digits("scratch"), work)
  back = faulty_run(work, "0", counter, "--config.bring_back_set_aside=True")
  assert back.returncode == 0, back.stderr[-3000:]
  assert "Brought back the checkpoints set aside at global steps [4, 8, 12]" in back.stdout
  assert not os.path.exists(os.path.join(work, "checkpoints_damaged"))
  assert_same_run(work, full)


def test_the_write_probe_removes_only_the_empty_folders_it_made_never_a_sibling_run(tmp_path, monkeypatch):
  """check_workdir creates runs/new/a/b to probe it and removes what it made; a run that started meanwhile
  in runs/new/other loses nothing."""
  from fitnets_jax import files

  target = tmp_path / "runs" / "new" / "a" / "b"
  sibling = tmp_path / "runs" / "new" / "other"
  probe = files.check_reachable

  def probe_while_a_sibling_starts(workdir, **kwargs):
    probe(workdir, **kwargs)
    sibling.mkdir(parents=True)
    (sibling / "config.json").write_text("{}")

  monkeypatch.setattr(files, "check_reachable", probe_while_a_sibling_starts)
  experiment.check_workdir(str(target))
  assert (sibling / "config.json").read_text() == "{}"
  assert not (tmp_path / "runs" / "new" / "a").exists() and (tmp_path / "runs" / "new").exists()
  monkeypatch.setattr(files, "check_reachable", probe)
  experiment.check_workdir(str(tmp_path / "fresh" / "x"))  # alone: every folder it made is gone again
  assert not (tmp_path / "fresh").exists()


def test_a_changed_byte_in_metrics_jsonl_is_skipped_with_a_count_on_resume_and_in_the_report(tmp_path, capsys):
  from fitnets_jax.tools import report

  work = str(tmp_path / "run")
  train.run(tiny_digits("scratch", student=12), work)  # records at steps 4, 8, 12 and the test record
  shutil.rmtree(os.path.join(work, "checkpoints", "12"))  # back to step 8, as a kill there leaves it
  os.remove(os.path.join(work, "summary.json"))
  path = os.path.join(work, "metrics.jsonl")
  with open(path, "rb") as f:
    lines = f.read().splitlines(keepends=True)
  lines[0] = lines[0].replace(b'"stage"', b'"stbge"', 1)  # valid JSON, but not a record any more
  lines[1] = lines[1][:5] + b"\xff" + lines[1][6:]  # not UTF-8, not JSON
  with open(path, "wb") as f:
    f.write(b"".join(lines))
  capsys.readouterr()
  summary = train.run(tiny_digits("scratch", student=12), work)
  err = capsys.readouterr().err
  assert "skipped 2 malformed line(s)" in err and summary["student"]["test_accuracy"] is not None
  with open(path, "rb") as f:  # damage the finished run's file again: the report reads past it too
    lines = f.read().splitlines(keepends=True)
  lines[-1] = b'{"stage": 3, "step": "x"}\n'
  with open(path, "wb") as f:
    f.write(b"".join(lines) + b'{"stage": "scratch", "step": 12, "split": "train", "loss": 1.0}\n')
  rows = report.write([work], str(tmp_path / "report"), curves=False)
  assert len(rows) == 1 and "skipped 1 malformed line(s)" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["student/preprocessing.npz", "summary.json"])
def test_write_failures_at_the_end_of_a_run_exit_74_and_the_rerun_finishes(target, tmp_path, monkeypatch):
  from fitnets_jax import files

  work = str(tmp_path / "run")
  write = files.write_atomically if target == "summary.json" else files.open_path

  def failing(path, *args, **kwargs):
    if str(path).endswith(target):
      raise OSError(errno.ENOSPC, "No space left on device")
    return write(path, *args, **kwargs)

  monkeypatch.setattr(files, "write_atomically" if target == "summary.json" else "open_path", failing)
  with pytest.raises(WorkdirWriteError, match=r"Could not write .* \(OSError: \[Errno 28\] No space left") as info:
    train.run(tiny_digits("scratch", student=8), work)
  assert info.value.exit_code == 74
  monkeypatch.undo()
  summary = train.run(tiny_digits("scratch", student=8), work)  # the last stage is saved: only the end is redone
  assert summary["student"]["test_accuracy"] is not None and os.path.isfile(os.path.join(work, target))


def test_what_counts_as_damage_and_what_as_a_transient_read_error():
  # Damage is set aside; a transient fault is retried and never moves a checkpoint (the real-process test
  # above drives the whole path).
  assert checkpoint.is_damage(checkpoint.DamagedCheckpoint("digest differs"))
  assert checkpoint.is_damage(_raised_from(FileNotFoundError(errno.ENOENT, "gone")))
  assert checkpoint.is_damage(ValueError("DATA_LOSS: Error reading: unexpected end of file"))
  assert not checkpoint.is_damage(_raised_from(OSError(errno.EIO, "Input/output error")))
  assert not checkpoint.is_damage(ValueError("UNKNOWN: Error reading local file: Input/output error [OSError 5]"))


def _raised_from(cause):
  """An orbax-like error raised from `cause`, with its chain."""
  try:
    try:
      raise cause
    except OSError as e:
      raise ValueError("orbax could not restore") from e
  except ValueError as outer:
    return outer

"""Faults: kills at random moments, damaged checkpoints, and a workdir that holds another experiment."""

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

from conftest import ROOT, tiny_digits
from fitnets_jax import FitnetsError, train
from helpers import assert_same_run, comparable_summary, final_state

def assert_checkpoints_readable(workdir):
  """Every live checkpoint (state and metadata) and a saved teacher restore without error."""
  checkpointer = ocp.StandardCheckpointer()
  directory = os.path.join(workdir, "checkpoints")
  for step in [os.path.join(directory, d) for d in os.listdir(directory) if d.isdigit()]:
    checkpointer.restore(os.path.join(step, "state"))
    with open(os.path.join(step, "meta", "metadata")) as f:
      json.load(f)
  if os.path.isfile(os.path.join(workdir, "teacher", "teacher.json")):
    checkpointer.restore(os.path.join(workdir, "teacher", "variables"))
  assert not os.path.exists(os.path.join(workdir, "checkpoints_damaged"))


# ---------------------------------------------------------------------------- kill harness

KILL_FLAGS = ["--config.num_devices=1", "--config.batch_size=32", "--config.log_every_steps=1",
              "--config.checkpoint_every_steps=2", "--config.stages.teacher.steps=24",
              "--config.stages.hint.steps=12", "--config.stages.student.steps=24"]
KILL_CONFIG = dict(teacher=24, hint=12, student=24, log_every_steps=1, checkpoint_every_steps=2, keep_checkpoints=3)


class Attempt:
  """One start of the command line on `workdir`, killed (SIGKILL) when `should_kill` says so."""

  def __init__(self, workdir):
    self.workdir = workdir
    cmd = [sys.executable, "-u", "-m", "fitnets_jax.main", "--config", "configs/digits.py", "--workdir", workdir,
           *KILL_FLAGS]
    self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self.lines = queue.Queue()
    self.stderr = []
    threading.Thread(target=lambda: [self.lines.put(l) for l in self.proc.stdout], daemon=True).start()
    threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

  def saving(self):
    """True while orbax writes a checkpoint or the teacher (its temporary folder exists)."""
    return bool(glob.glob(os.path.join(self.workdir, "checkpoints", "*.orbax-checkpoint-tmp*"))
                or glob.glob(os.path.join(self.workdir, "teacher", "*.orbax-checkpoint-tmp*")))

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
        stage = line[1:line.index("]")]
      if line.startswith("Resuming from"):
        stage = line.split("stage '")[1].split("'")[0]
      if kind == "step" and " step " in line and "test accuracy" not in line:
        seen += 1
        if seen == count and fire_at is None:
          fire_at = time.monotonic() + delay
      if kind == "stage_end" and "test accuracy" in line and fire_at is None:
        fire_at = time.monotonic() + delay       # the stage's last save, then the next stage's start
      if kind == "restore" and line.startswith("Resuming from") and fire_at is None:
        fire_at = time.monotonic() + delay       # mid-restore / mid-recompile
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
    covered = len(killed_at) >= 10 and any(w.startswith("kd") for w in killed_at)
    kind = "none" if covered or len(killed_at) >= 18 else kinds[attempt % len(kinds)]
    plan = (kind, rng.randint(2, 8) if kind == "step" else rng.randint(1, 3), rng.uniform(0.0, 0.4))
    runner = Attempt(work)
    killed, where = runner.run(plan)
    if not killed:
      assert runner.proc.returncode == 0, "".join(runner.stderr)[-3000:]
      break
    killed_at.append(where)
    assert_checkpoints_readable(work)
  print("kill points:", killed_at)
  assert len(killed_at) >= 10
  stages = {w.split()[0] for w in killed_at}
  assert {"teacher", "hint", "kd"} <= stages, killed_at
  assert any("checkpoint" in w for w in killed_at)
  assert_same_run(work, reference)


def test_sigterm_saves_exits_75_and_the_restart_matches_an_uninterrupted_run(tmp_path):
  flags = ["--config.num_devices=1", "--config.batch_size=32", "--config.log_every_steps=4",
           "--config.checkpoint_every_steps=4", "--config.stages.teacher.steps=24", "--config.stages.hint.steps=8",
           "--config.stages.student.steps=16"]
  work = str(tmp_path / "preempted")
  cmd = [sys.executable, "-u", "-m", "fitnets_jax.main", "--config", "configs/digits.py", "--workdir", work, *flags]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in proc.stdout:
    if line.startswith("[kd] step 4/16"):
      proc.send_signal(signal.SIGTERM)     # a preemption notice
      break
  proc.stdout.read()
  assert proc.wait(timeout=120) == 75, proc.stderr.read()[-2000:]     # Preempted.exit_code
  assert "preempted: Stopped on SIGTERM/preemption in stage 'kd' at step" in proc.stderr.read()
  resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "Resuming from" in resumed.stdout and "stage 'kd' at step" in resumed.stdout
  reference = str(tmp_path / "reference")
  train.run(tiny_digits(), reference)
  assert_same_run(work, reference)


# ---------------------------------------------------------------------------- damaged checkpoints


def test_damaged_latest_checkpoints_fall_back_to_the_previous_good_one(tmp_path, capsys):
  config = lambda: tiny_digits("scratch", student=12)
  full = str(tmp_path / "full")
  train.run(config(), full)                                  # checkpoints at steps 4, 8, 12
  work = str(tmp_path / "damaged")
  shutil.copytree(full, work)
  os.remove(os.path.join(work, "summary.json"))
  state_files = glob.glob(os.path.join(work, "checkpoints", "12", "state", "**", "d", "*"), recursive=True)
  biggest = max(state_files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)                # a truncated latest checkpoint
  shutil.rmtree(os.path.join(work, "checkpoints", "8", "meta"))   # a partly deleted one before it
  capsys.readouterr()
  summary = train.run(config(), work)
  err = capsys.readouterr()
  assert "checkpoint at global step 12 is unreadable" in err.err
  assert "checkpoint at global step 8 is unreadable" in err.err
  assert "Resuming from" in err.out and "at step 4/12" in err.out
  assert sorted(os.listdir(os.path.join(work, "checkpoints_damaged"))) == ["12", "8"]   # kept, not deleted
  assert summary["student"]["test_accuracy"] == comparable_summary(full)["student"]["test_accuracy"]
  (_, want), (_, got) = final_state(full), final_state(work)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


def test_no_readable_checkpoint_refuses_to_start_over_silently(tmp_path):
  work = str(tmp_path / "run")
  train.run(tiny_digits("scratch", student=8), work)
  for meta in glob.glob(os.path.join(work, "checkpoints", "*", "meta")):
    shutil.rmtree(meta)
  for _ in range(2):   # the refusal holds on every later start too
    with pytest.raises(FitnetsError, match=r"has no readable checkpoint left.*would silently discard the run"):
      train.run(tiny_digits("scratch", student=8), work)
  assert sorted(os.listdir(os.path.join(work, "checkpoints_damaged"))) == ["4", "8"]


# ---------------------------------------------------------------------------- another experiment


def snapshot(workdir):
  return {os.path.relpath(os.path.join(d, f), workdir): open(os.path.join(d, f), "rb").read()
          for d, _, files in os.walk(workdir) for f in files}


def test_a_workdir_of_another_experiment_is_refused_and_left_as_it_was(tmp_path):
  workdir = str(tmp_path / "run")
  train.run(tiny_digits("scratch", student=4), workdir)
  before = snapshot(workdir)
  other = tiny_digits("scratch", student=4, **{"stages.student.optimizer.learning_rate": 0.01, "dataset.flip": True})
  with pytest.raises(FitnetsError, match=r"holds another experiment: its config.json differs in dataset.flip "
                                         r"\(False there, True now\), stages.student.optimizer.learning_rate "
                                         r"\(0.001 there, 0.01 now\)\. Nothing in the workdir was changed"):
    train.run(other, workdir)
  with pytest.raises(FitnetsError, match=r"differs in method \('scratch' there, 'kd' now\)"):
    train.run(tiny_digits("kd", student=4), workdir)
  assert snapshot(workdir) == before


def test_keys_documented_as_safe_may_change_on_resume(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_digits("scratch", student=8)
  shutil.rmtree(workdir, ignore_errors=True)
  first = train.run(config, workdir)
  os.remove(os.path.join(workdir, "summary.json"))
  again = train.run(tiny_digits("scratch", student=8, log_every_steps=2, checkpoint_every_steps=2, num_devices=2,
                                eval_batch_size=40, on_nan="skip_step"), workdir)
  assert again["student"]["test_accuracy"] == first["student"]["test_accuracy"]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["log_every_steps"] == 2          # the record follows the latest start

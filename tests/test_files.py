"""The path layer (fitnets_jax.files): every run file through it, a remote workdir without a network,
and a static check that the package opens no file behind its back."""

import io
import json
import os
import re
import subprocess
import sys
import time

import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath
from etils.epath import stat_utils as epath_stat

from fitnets_jax import experiment, files, metrics, saved, teachers, workdir_lock
from fitnets_jax.errors import FitnetsError
from fitnets_jax.tools import plots, report

from conftest import ROOT


class MemoryBackend(epath_backend.Backend):
  """An object store in a dict, standing in for gs:// (no network): files are whole objects written on
  close, folders are implied by the names below them, as in a bucket."""

  def __init__(self):
    self.objects = {}
    self.folders = set()
    self.mtimes = {}  # object → its modification time by the bucket's clock, `now()`
    self.now = time.time

  def _children(self, path):
    prefix = path.rstrip("/") + "/"
    names = {k[len(prefix) :].split("/")[0] for k in list(self.objects) + list(self.folders) if k.startswith(prefix)}
    return sorted(n for n in names if n)

  def open(self, path, mode):
    path = os.fspath(path)
    if "r" in mode:
      if path not in self.objects:
        raise FileNotFoundError(path)
      data = self.objects[path]
      return io.BytesIO(data) if "b" in mode else io.StringIO(data.decode())
    store, initial = self.objects, (self.objects.get(path, b"") if "a" in mode else b"")
    mtimes, now = self.mtimes, self.now

    class Upload(io.BytesIO if "b" in mode else io.StringIO):
      def close(self):
        value = self.getvalue()
        store[path] = initial + (value if isinstance(value, bytes) else value.encode())
        mtimes[path] = now()
        super().close()

    return Upload()

  def exists(self, path):
    return self.isdir(path) or os.fspath(path) in self.objects

  def isdir(self, path):
    path = os.fspath(path).rstrip("/")
    return path in self.folders or bool(self._children(path))

  def listdir(self, path):
    return self._children(os.fspath(path))

  def glob(self, path):
    raise NotImplementedError

  def walk(self, top, *, top_down=True, on_error=None):
    raise NotImplementedError

  def makedirs(self, path, *, exist_ok=False, mode=None):
    self.folders.add(os.fspath(path).rstrip("/"))

  def mkdir(self, path, *, exist_ok=False, mode=None):
    self.makedirs(path)

  def rmtree(self, path):
    prefix = os.fspath(path).rstrip("/")
    self.objects = {k: v for k, v in self.objects.items() if not (k == prefix or k.startswith(prefix + "/"))}
    self.folders = {k for k in self.folders if not (k == prefix or k.startswith(prefix + "/"))}

  def remove(self, path):
    del self.objects[os.fspath(path)]

  def rename(self, path, dst):
    src, dst = os.fspath(path).rstrip("/"), os.fspath(dst).rstrip("/")
    for key in [k for k in self.objects if k == src or k.startswith(src + "/")]:
      self.objects[dst + key[len(src) :]] = self.objects.pop(key)
      self.mtimes[dst + key[len(src) :]] = self.now()  # a bucket renames by copying: a new object
    self.folders = {dst + k[len(src) :] if k == src or k.startswith(src + "/") else k for k in self.folders}

  replace = rename

  def copy(self, path, dst, overwrite):
    self.objects[os.fspath(dst)] = self.objects[os.fspath(path)]

  def stat(self, path):
    path = os.fspath(path)
    if path not in self.objects:
      raise FileNotFoundError(path)
    return epath_stat.StatResult(is_directory=False, length=len(self.objects[path]), mtime=int(self.mtimes[path]))


@pytest.fixture
def bucket(monkeypatch):
  """gs:// served from memory: what a run would write to a bucket, inspectable, no network."""
  store = MemoryBackend()
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", store)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  return store


def test_the_layer_keeps_uris_and_round_trips_files_on_a_bucket(bucket):
  run = "gs://lab/runs/svhn"
  assert files.join(run, "checkpoints", "12") == "gs://lab/runs/svhn/checkpoints/12"
  assert files.absolute(run) == run and files.is_remote(run)
  assert files.absolute("runs/x") == os.path.join(os.getcwd(), "runs", "x") and not files.is_remote("runs/x")
  files.check_reachable(run)  # creates the folder, writes and deletes a probe
  assert files.isdir(run) and not [k for k in bucket.objects if "probe" in k]
  files.write_atomically(files.join(run, "config.json"), '{"seed": 0}')
  files.write_atomically(files.join(run, "config.json"), '{"seed": 1}')  # an object store needs no rename
  assert json.loads(files.read_text(files.join(run, "config.json"))) == {"seed": 1}
  assert not files.exists(files.join(run, "config.json.tmp"))
  files.append_text(files.join(run, "log"), "a\n")
  files.append_text(files.join(run, "log"), "b\n")
  assert files.read_text(files.join(run, "log")) == "a\nb\n"
  files.write_atomically(files.join(run, "checkpoints", "8", "meta"), "{}")
  files.move(files.join(run, "checkpoints", "8"), files.join(run, "checkpoints_damaged", "8"))
  assert files.listdir(files.join(run, "checkpoints_damaged")) == ["8"]
  assert files.isfile(files.join(run, "checkpoints_damaged", "8", "meta"))
  files.rmtree(files.join(run, "checkpoints_damaged"))
  assert not files.exists(files.join(run, "checkpoints_damaged"))
  assert files.listdir(run) == ["config.json", "log"]  # as in a bucket, an emptied folder is gone
  assert not os.path.exists("gs:")  # nothing local, as os.path.join would have made


def test_run_files_go_to_the_bucket(bucket, monkeypatch, digits_config):
  """metrics.jsonl, config.json (the same-experiment guard reads it back), network.json, a report with
  its plots: written to and read from the bucket. Array data is orbax's (tensorstore's gcs driver) and
  TensorBoard's event files TensorFlow's (its GCS filesystem), each with its own gs:// client."""
  import tensorflow as tf

  monkeypatch.setattr(tf.summary, "create_file_writer", lambda path: tf.summary.create_noop_writer())
  run = "gs://lab/runs/digits"
  writer = metrics.Writer(run)
  writer.write({"stage": "kd", "step": 4, "split": "train", "loss": 1.5}, 4)
  writer.write({"stage": "kd", "step": 8, "split": "train", "loss": 1.0}, 8)
  writer.truncate(lambda r: r["step"] <= 4)
  writer.close()
  assert [json.loads(line)["step"] for line in files.read_text(f"{run}/metrics.jsonl").splitlines()] == [4]

  config = digits_config()
  files.write_atomically(f"{run}/{experiment.CONFIG_FILE}", config.to_json_best_effort())
  experiment.check_same_experiment(config, run)  # the same experiment: accepted
  with config.unlocked():
    config.stages.student.optimizer.learning_rate *= 2
  with pytest.raises(FitnetsError, match="holds another experiment"):
    experiment.check_same_experiment(config, run)

  files.write_atomically(f"{run}/teacher/{saved.NETWORK_INFO}", json.dumps({"model": "maxout_digits_teacher"}))
  assert teachers.teacher_dir(run) == f"{run}/teacher"
  assert teachers.teacher_info(run)["model"] == "maxout_digits_teacher"

  summary = {
    "method": "kd",
    "dataset": "digits",
    "seed": 0,
    "teachers": [],
    "stages": {},
    "student": {"model": "fitnet_digits", "params": 10, "macs": 20, "test_accuracy": 0.5},
  }
  files.write_atomically(f"{run}/summary.json", json.dumps(summary))
  report.write([run], "gs://lab/report")
  assert files.listdir("gs://lab/report") == ["accuracy_vs_macs.png", "curves_digits.png", "report.md"]
  assert bucket.objects["gs://lab/report/curves_digits.png"].startswith(b"\x89PNG")
  assert "fitnet_digits" in files.read_text("gs://lab/report/report.md")
  assert plots.save(plots.figure(1, 1)[0], "gs://lab/x.png") == "gs://lab/x.png"


def test_a_bucket_workdir_is_held_by_a_heartbeat_and_a_silent_holder_is_taken_over(bucket, monkeypatch):
  """An object store has no locks: a record written less than STALE_S ago refuses a second start; one
  silent for STALE_S is a killed run's, taken over; of two starts writing at once, the one overwritten
  stops. Silence is measured by the bucket's clock (object times), so a holder whose own clock runs
  minutes behind is not taken over while it writes."""
  run = "gs://lab/runs/locked"
  monkeypatch.setattr(workdir_lock, "_settle", lambda: None)
  other = {
    "token": "theirs",
    "host": "worker-7",
    "pid": 4242,
    "started": "2026-12-01 10:00:00 UTC",
    "heartbeat": time.time() - 5 * workdir_lock.STALE_S,  # its host's clock runs 5 minutes behind
    "command": "python -m fitnets_jax.main --config configs/svhn.py",
  }
  files.write_atomically(f"{run}/run.lock", json.dumps(other))  # written now, by the bucket's clock
  with pytest.raises(
    FitnetsError,
    match=r"in use by another run: process 4242 on host 'worker-7', started "
    r"2026-12-01 10:00:00 UTC, last seen \d s ago \(`python -m fitnets_jax.main",
  ):
    workdir_lock.check_free(run)
  with pytest.raises(FitnetsError, match="process 4242 on host 'worker-7'"):
    workdir_lock.WorkdirLock(run).acquire()
  bucket.mtimes[f"{run}/run.lock"] -= workdir_lock.STALE_S + 1  # then silent for a minute, by the bucket's clock
  workdir_lock.check_free(run)
  lock = workdir_lock.WorkdirLock(run).acquire()  # a killed holder's lock: taken over
  assert workdir_lock.read(run)["token"] == lock.token and workdir_lock.read(run)["pid"] == os.getpid()
  lock.release()
  assert not files.exists(f"{run}/run.lock") and not [k for k in bucket.objects if "lock-clock" in k]
  # Two starts at once: while this one waits to read its record back, the other's overwrites it.
  monkeypatch.setattr(workdir_lock, "_settle", lambda: files.write_atomically(f"{run}/run.lock", json.dumps(other)))
  with pytest.raises(FitnetsError, match="process 4242 on host 'worker-7'"):
    workdir_lock.WorkdirLock(run).acquire()
  assert workdir_lock.read(run)["token"] == "theirs"  # the other run's record stays


def test_an_unreachable_bucket_fails_in_seconds_with_exit_2_and_creates_nothing_locally(tmp_path):
  """No network here: the real gs:// client cannot resolve the storage host. The run stops before it
  loads anything, with one paragraph, and leaves the current folder as it was."""
  started = time.perf_counter()
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "fitnets_jax.main",
      "--config",
      os.path.join(ROOT, "configs", "digits.py"),
      "--workdir",
      "gs://fitnets-jax-test-no-such-bucket/run",
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, PYTHONPATH=ROOT, GCE_METADATA_HOST="127.0.0.1:9", NO_GCE_CHECK="true"),
  )
  seconds = time.perf_counter() - started
  assert result.returncode == 2, result.stderr[-3000:]
  error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(error) == 1 and "gs://fitnets-jax-test-no-such-bucket/run" in error[0] and "credentials" in error[0]
  assert "Traceback" not in result.stderr
  assert os.listdir(tmp_path) == []
  assert seconds < files.REACH_TIMEOUT_S + 60, seconds  # the refusal, plus the program's start


LOCAL_IO = re.compile(
  r"(^|[^.\w])open\(|\bos\.(makedirs|mkdir|replace|remove|unlink|rename|listdir|access|walk|"
  r"scandir|stat)\(|\bos\.path\.(exists|isdir|isfile|getsize)\(|\bshutil\.|"
  r"\.savefig\((?!f,)|\bnp\.(load|save|savez)\((?!raw)|\bpathlib\."
)


# Modules that may read a local file directly, and why.
LOCAL_ONLY = {
  "files.py": "the layer itself",
  "install.py": "reads the checkout's pyproject.toml before any dependency (etils) is installed",
}


def test_the_package_touches_files_only_through_the_layer():
  """A run's files on gs:// need every read and write to go through fitnets_jax.files."""
  package = os.path.join(ROOT, "fitnets_jax")
  offending = []
  for folder, _, names in os.walk(package):
    for name in names:
      file = os.path.join(folder, name)
      if not name.endswith(".py") or os.path.relpath(file, package) in LOCAL_ONLY:
        continue
      with open(file) as f:
        for number, line in enumerate(f, 1):
          if LOCAL_IO.search(line.split("#")[0]):
            offending.append(f"{os.path.relpath(file, ROOT)}:{number}: {line.strip()}")
  assert not offending, "local-only file calls; use fitnets_jax.files:\n" + "\n".join(offending)
  assert LOCAL_IO.search("with open(path) as f:") and LOCAL_IO.search("os.makedirs(d)")  # the check can fail

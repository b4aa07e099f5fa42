"""Run outputs: `metrics.jsonl` (one JSON object per logged event), TensorBoard scalars, the
progress line, and `summary.json`. Only process 0 writes."""

import datetime
import json
import sys

import jax

from fitnets_jax import files
from fitnets_jax.errors import WorkdirWriteError


class Writer:
  def __init__(self, workdir):
    self.enabled = jax.process_index() == 0
    self.path = files.join(workdir, "metrics.jsonl")
    self.records = 0  # in metrics.jsonl: a checkpoint records the count, so a truncated file is noticed
    self._tb = None
    if self.enabled:
      import tensorflow as tf

      self._tf = tf
      self._tb = tf.summary.create_file_writer(files.join(workdir, "tensorboard"))

  def write(self, record, global_step):
    """Appends `record` ({stage, step, epoch, split, ...scalars}) to metrics.jsonl and TensorBoard."""
    if not self.enabled:
      return
    try:
      files.append_text(self.path, json.dumps(record) + "\n")
      with self._tb.as_default(step=global_step):
        for key, value in record.items():
          if isinstance(value, (int, float)) and key not in ("step", "epoch"):
            self._tf.summary.scalar(f"{record['stage']}/{record['split']}/{key}", value)
      self._tb.flush()
    except Exception as e:  # noqa: BLE001  (an OSError, or TensorFlow's own error for the same full disk)
      raise WorkdirWriteError.of("a metrics record", self.path, e) from None
    self.records += 1

  def truncate(self, keep):
    """Drops records logged after the checkpoint a run resumes from (they will be logged again); returns
    how many are kept."""
    if not self.enabled or not files.exists(self.path):
      self.records = 0
      return 0
    kept = [r for r in read_records(self.path) if keep(r)]
    files.write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept))
    self.records = len(kept)
    return self.records

  def resume_at(self, step, offsets, names, expected):
    """Keeps the records up to global `step`, the checkpoint a run resumes from, and warns when fewer
    are left than the `expected` count that checkpoint recorded."""
    kept = self.truncate(lambda r: offsets[names.index(r["stage"])] + r["step"] <= step)
    if self.enabled and expected is not None and kept < expected:
      print(
        f"warning: {self.path} holds {kept} of the {expected} records written up to global step {step}; "
        f"{expected - kept} are lost (the file was truncated or edited). The run goes on and logs from here; "
        "the checkpoints and summary.json are unaffected.",
        file=sys.stderr,
        flush=True,
      )

  def progress(self, stage, step, total, scalars, images_per_s, seconds_left, run_seconds_left=None):
    """The progress line: the stage's step, its main scalars, speed, and the time left in the stage and,
    when later stages follow, in the whole run (their steps at this stage's pace: an estimate)."""
    if not self.enabled:
      return
    parts = " ".join(f"{k} {v:.4f}" for k, v in scalars.items() if k in ("loss", "accuracy", "hint", "lambda"))
    if "learning_rate" in scalars:
      parts += f" lr {scalars['learning_rate']:.3g}"
    eta = f"ETA {datetime.timedelta(seconds=int(seconds_left))}"
    if run_seconds_left is not None:
      eta += f" (run ≈ {datetime.timedelta(seconds=int(run_seconds_left))})"
    print(f"[{stage}] step {step}/{total} {parts} {images_per_s:,.0f} img/s {eta}", flush=True)

  def note(self, text):
    """A line about what the run is doing (compiling, evaluating), from process 0 only."""
    if self.enabled:
      print(text, flush=True)

  def close(self):
    if self._tb is not None:
      self._tb.close()


def environment(exp):
  """What ran the run: the library's and JAX's versions, the backend and its device kind."""
  from importlib import metadata

  try:
    version = metadata.version("fitnets_jax")
  except metadata.PackageNotFoundError:  # run from a checkout that was not installed
    version = "unknown"
  device = exp.mesh.devices.flat[0]
  return {"fitnets_jax": version, "jax": jax.__version__, "backend": device.platform, "device_kind": device.device_kind}


def summary(exp, results, workdir):
  """summary.json (written by process 0) and its dict: the method, data and devices, each teacher's
  model, sizes, accuracy and source, the student's, and every stage's record in `results`."""
  cfg = exp.config
  last = [s for s in exp.stages if s.trains not in exp.teachers and s.evaluate][-1]  # the student's
  stages = {name: {k: v for k, v in r.items() if k != "train_time_s"} for name, r in results["stages"].items()}
  teachers = [
    {
      "role": role,
      **net.describe(),
      **results["teachers"].get(role, {}),
      "checkpoint": exp.teacher_sources.get(role) or files.join(files.absolute(workdir), role),
    }
    for role, net in exp.teachers.items()
  ]
  summary = {
    "method": cfg.method,
    "dataset": exp.data.name,
    "seed": cfg.seed,
    "devices": int(exp.mesh.size),
    "processes": jax.process_count(),
    "teacher": teachers[0] if teachers else None,  # the (first) teacher
    "teachers": teachers,
    "student": {**exp.student.describe(), "test_accuracy": results["stages"][last.name].get("test_accuracy")},
    "stages": stages,
    "environment": environment(exp),
    "time": {  # the first start (kept across resumes), the end, and every stage's wall time added up
      "started": results.get("started"),
      "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "wall_time_s": round(sum(r.get("wall_time_s", 0.0) for r in results["stages"].values()), 3),
    },
  }
  if last.summarize:
    summary.update(last.summarize(results["stages"][last.name].get("test", {})))
  if "teacher_cache" in results:
    summary["teacher_cache"] = results["teacher_cache"]
  if jax.process_index() == 0:
    path = files.join(workdir, "summary.json")
    try:
      files.write_atomically(path, json.dumps(summary, indent=2))
    except OSError as e:
      raise WorkdirWriteError.of("summary.json", path, e) from None
  return summary


RECORD_FIELDS = {"stage": str, "step": int, "split": str}


def _record(line):
  """The metrics record on `line`, or None when the line is not one (cut short, or changed on disk)."""
  try:
    record = json.loads(line)
  except ValueError:
    return None
  ok = isinstance(record, dict) and all(
    isinstance(record.get(k), t) and not isinstance(record.get(k), bool) for k, t in RECORD_FIELDS.items()
  )
  return record if ok else None


def read_records(path):
  """The records of a metrics.jsonl file. A line that is not a record ({stage, step, split, …}) is
  skipped: the last line of a run killed while appending is only cut short, and one changed byte must not
  block a resume or a report; any but a cut-short last line is counted in a warning."""
  lines = files.read_bytes(path).decode("utf-8", errors="replace").splitlines()
  records = [_record(line) for line in lines]
  malformed = sum(r is None for r in records[:-1])
  if malformed:
    print(
      f"warning: {path}: skipped {malformed} malformed line(s) of {len(lines)} (changed or damaged on disk); "
      "the other records are used.",
      file=sys.stderr,
      flush=True,
    )
  return [r for r in records if r is not None]


def global_steps(records):
  """[(global step, record)]: each record's step within its stage, offset by the stages before it (their
  last logged step)."""
  offsets, offset, result = {}, 0, []
  for r in records:
    if r["stage"] not in offsets:
      offsets[r["stage"]] = offset
    step = offsets[r["stage"]] + r["step"]
    result.append((step, r))
    offset = max(offset, step)
  return result

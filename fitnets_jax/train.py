"""The one training loop: any method's stages, data-parallel, checkpointed, resumable.

`train_and_evaluate` reads top to bottom: resume from the newest readable checkpoint (`checkpoint`),
then for each stage: make its teachers ready once (`teachers`), build or restore its state, step it
(`step`) to its end while logging, evaluating (`evaluation`) and checkpointing, and finally save
the trained networks on their own (`saved`) and write summary.json (`metrics`).

Checkpoints (orbax) hold the current stage's state and JSON metadata (stage, step, results so
far) every `checkpoint_every_steps` and at each stage end; a restarted run resumes in the right
stage with the same parameters, optimizer state, RNG and data order.
"""

import dataclasses
import datetime
import json
import math
import signal
import sys
import threading
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from fitnets_jax import (
  checkpoint,
  cluster,
  data,
  evaluation,
  experiment,
  files,
  metrics,
  saved,
  teachers,
  train_step,
  workdir_lock,
)
from fitnets_jax.errors import FitnetsError, NonFiniteLoss, Preempted, WorkdirWriteError
from fitnets_jax.parallel import prefetch_to_device


def _mean_scalars(values):
  """Means over the steps whose update was applied, and the number of skipped steps."""
  good = [v for v in values if not v["nonfinite"]] or values
  means = {k: float(np.mean([v[k] for v in good])) for k in values[0] if k != "nonfinite"}
  return dict(means, skipped_steps=int(sum(v["nonfinite"] for v in values)))


class StopRequest:
  """SIGTERM or Ctrl-C (SIGINT) sets a flag that the loop reads at the next step boundary, where it saves
  a checkpoint and exits 75 (single-host runs; on multi-host TPU slices orbax's preemption sync point
  tells every host at the same step)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


@dataclasses.dataclass(frozen=True)
class Training:
  """One run's training in progress, what every stage reads and writes: the experiment, its workdir
  and outputs, and `results` (per stage and per teacher), which each checkpoint carries and
  summary.json reports."""

  exp: experiment.Experiment
  workdir: str
  writer: metrics.Writer
  checkpoints: checkpoint.RunCheckpoints
  evaluator: evaluation.Evaluator
  stop: StopRequest
  offsets: list  # each stage's first global step (train_step.stage_offsets)
  results: dict
  lock: Any = None  # the workdir's lock (workdir_lock.WorkdirLock): a lost lock stops the run at its next step

  def stopped(self, where):
    """The Preempted that ends a run stopped by SIGTERM, Ctrl-C or a preemption notice `where` (all
    three stops: between stages, inside one, at a stage's last step). Raised, it closes the checkpoints
    on its way out (`train_and_evaluate`)."""
    return Preempted(
      f"Stopped on SIGTERM, Ctrl-C or preemption {where}. Run the same command again to resume from {self.workdir}."
    )


class StageSetup(NamedTuple):
  """What `train_step.stage_setup` gives a stage besides its rng: its index, optimizer and parameter labels."""

  index: int
  tx: Any
  labels: Any


def train_and_evaluate(exp, workdir, lock=None):
  """Trains (or resumes) every stage of `exp` in `workdir` (held by `lock`); returns summary.json's dict.
  Whatever ends it, its checkpoints are closed (every pending save finished) once, here."""
  offsets = train_step.stage_offsets(exp.stages)
  if exp.config.bring_back_set_aside:
    checkpoint.bring_back_set_aside(workdir)
  checkpoints = checkpoint.RunCheckpoints(files.join(workdir, "checkpoints"), exp.config.keep_checkpoints, offsets[1:])
  writer = metrics.Writer(workdir)
  try:
    resumed, results, pending = start_or_resume(exp, workdir, checkpoints, writer, offsets)
    with StopRequest() as stop:
      training = Training(exp, workdir, writer, checkpoints, evaluation.Evaluator(exp), stop, offsets, results, lock)
      state = train_stages(training, resumed, pending)
  finally:
    checkpoints.close()
  saved.save_trained(exp, workdir, exp.stages[-1], state, results)
  summary = metrics.summary(exp, results, workdir)
  writer.close()
  return summary


def start_or_resume(exp, workdir, checkpoints, writer, offsets):
  """(the newest readable checkpoint as `checkpoint.Resumed`, or None; the results so far; the step
  metrics it had not logged). Refusals leave the workdir as it was: nothing restored, nothing truncated."""
  checkpoint.check_hosts_agree(checkpoints, workdir)
  resumed = checkpoint.resume(checkpoints, workdir, exp.stages, lambda index: restore_target(exp, index))
  if not resumed:
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    writer.truncate(lambda r: False)  # a run killed before its first checkpoint logs afresh
    return None, {"stages": {}, "teachers": {}, "started": started}, []
  results = resumed.meta["results"]
  for role in check_inputs(exp, resumed, workdir):  # accepted: the new teacher is measured afresh
    results["teachers"].pop(role, None)
  pending = [{k: np.float32(v) for k, v in scalars.items()} for scalars in resumed.meta.get("pending", [])]
  writer.resume_at(resumed.step, offsets, [s.name for s in exp.stages], resumed.meta.get("metrics_records"))
  return resumed, results, pending


def train_stages(training, resumed, pending):
  """Runs every stage from where `resumed` stopped (or the first); returns the last stage's state."""
  exp = training.exp
  carry, trained_teachers, teaching = None, {}, None
  for index, stage in enumerate(exp.stages):
    if resumed and index < resumed.stage_index:
      continue
    if training.stop.requested:  # between stages: the previous stage's end is saved
      raise training.stopped(f"before stage {stage.name!r}; its previous stage is saved")
    if stage.uses_teacher and teaching is None:
      teaching = teachers.prepare(
        exp, training.workdir, training.results, training.evaluator, training.checkpoints, trained_teachers
      )
    _, rng, labels, tx = train_step.stage_setup(exp, index)
    resuming_here = resumed and index == resumed.stage_index
    state = resumed.state if resuming_here else train_step.init_state(stage, tx, rng, carry, exp.mesh)
    if int(state.step) < stage.num_steps:
      state = train_stage(training, StageSetup(index, tx, labels), state, teaching or {}, pending)
      pending = []
    carry = stage.output(state.params, state.batch_stats)
    if stage.trains in exp.teachers:
      trained_teachers[stage.trains], carry = carry, None
  return state


def check_inputs(exp, resumed, workdir):
  """The inputs (the training data, a reused teacher) that differ from those `resumed`'s checkpoint recorded.
  A difference is refused (a FitnetsError naming each) unless `resume_with_changed_inputs` accepts it;
  then it is returned, with a warning. Checkpoints from before inputs were recorded check nothing."""
  recorded = resumed.meta.get("inputs") or {}
  changed = {
    key: (what, recorded[key], now)
    for key, (what, now) in exp.describe_inputs().items()
    if recorded.get(key) not in (None, now)
  }
  if not changed:
    return []
  listed = "; ".join(f"{what} (SHA-256 {old[:12]}… then, {new[:12]}… now)" for what, old, new in changed.values())
  if not exp.config.resume_with_changed_inputs:
    raise FitnetsError(
      f"--workdir={workdir!r} was checkpointed (global step {resumed.step}) on other inputs than this run reads: "
      f"{listed}. Resuming would silently train on different data or a different teacher, so nothing was changed. "
      "Restore the inputs it was trained on, use a new --workdir, or set --config.resume_with_changed_inputs=True "
      "to go on with the new ones (their teachers are then measured again)."
    )
  if jax.process_index() == 0:
    print(f"warning: resuming on changed inputs, as resume_with_changed_inputs asks: {listed}.", file=sys.stderr)
  return list(changed)


def restore_target(exp, index):
  """Stage `index`'s state as replicated ShapeDtypeStructs: what its checkpoints restore into."""
  stage, rng, _, tx = train_step.stage_setup(exp, index)
  return train_step.abstract_state(stage, tx, rng, exp.mesh)


def train_stage(training, setup, state, teaching, pending):
  """Steps stage `setup.index` from `state` to its end, logging every `log_every_steps` (`pending` holds
  the step metrics a resumed checkpoint had not logged yet), evaluating every `eval_every_steps`,
  checkpointing every `checkpoint_every_steps` and on SIGTERM or preemption (then raising
  Preempted), and at its end. `teaching`: what the step receives of the teachers (`fitnets_jax.teachers`).
  Returns the final state."""
  exp, cfg, index = training.exp, training.exp.config, setup.index
  stage = exp.stages[index]
  started = time.perf_counter()
  start = int(state.step)
  batches = prefetch_to_device(
    data.train_batches(
      exp.data, exp.local_batch, exp.steps_per_epoch, cfg.seed, index, start, cfg.dataset.shuffle_buffer
    ),
    exp.mesh,
  )
  batch = next(batches)
  training.writer.note(f"[{stage.name}] compiling the step (a repeated run loads it from the compilation cache) …")
  step_fn, compile_s, flops = train_step.compile_step(stage, setup.tx, setup.labels, exp.mesh, state, batch, teaching)
  training.writer.note(f"[{stage.name}] compiled in {compile_s:.1f} s; training steps {start + 1}…{stage.num_steps}")
  record = training.results["stages"].setdefault(stage.name, {})
  record.update(steps=stage.num_steps, compile_s=round(compile_s, 3), flops_per_step=flops)
  # Time before a resume counts too: both totals travel in the checkpoint's metadata.
  prior_wall = record.get("wall_time_s", 0.0)
  wall = lambda: round(prior_wall + time.perf_counter() - started, 3)
  log = StageLog(training, index, record, list(pending), start)
  preempted = False
  for s in range(start, stage.num_steps):
    if training.lock is not None and training.lock.lost:  # the workdir may be another run's now: write nothing
      training.lock.check_held()
    state, scalars = step_fn(state, batch, teaching)
    log.pending.append(scalars)
    done = s + 1
    if done < stage.num_steps:
      batch = next(batches)
    if done % cfg.log_every_steps == 0 or done == stage.num_steps:
      log.flush(done)
    if stage.evaluate and cfg.eval_every_steps and done % cfg.eval_every_steps == 0 and done < stage.num_steps:
      evaluate(training, index, state, done)
    # Every host asks at every step, the stage's last included: on several hosts a preemption notice
    # is acted on at one agreed step, and when that step ends a stage the stop must not be lost.
    preempted = training.stop.requested or training.checkpoints.manager.reached_preemption(
      training.offsets[index] + done
    )
    stopping = preempted and done < stage.num_steps
    if stopping and log.pending:  # metrics of the steps since the last log are not lost
      check_finite(training, stage, done - len(log.pending), jax.device_get(log.pending))
    if (done % cfg.checkpoint_every_steps == 0 or stopping) and done < stage.num_steps:
      record.update(train_time_s=log.train_time, wall_time_s=wall())
      save(training, index, done, state, log.pending)
    if stopping:
      raise training.stopped(f"in stage {stage.name!r} at step {done}/{stage.num_steps}; a checkpoint is saved")
  record.update(
    train_time_s=log.train_time, images_per_s=round(stage.num_steps * cfg.batch_size / max(log.train_time, 1e-9), 1)
  )
  finish_stage(training, index, state, record)
  record["wall_time_s"] = wall()
  save(training, index, stage.num_steps, state)
  if preempted and index < len(exp.stages) - 1:  # stopped at the stage's last step: its end is saved
    raise training.stopped(f"at the end of stage {stage.name!r}; it is saved")
  return state


class StageLog:
  """The step metrics of one stage not yet logged, and its training time so far: `flush` logs their
  means (metrics.jsonl, TensorBoard, the progress line) after checking them for NaN/Inf."""

  def __init__(self, training, index, record, pending, start):
    self.training, self.index, self.record, self.pending = training, index, record, pending
    self.train_time = record.get("train_time_s", 0.0)
    self.tick, self.tick_step = time.perf_counter(), start

  def flush(self, done):
    stage = self.training.exp.stages[self.index]
    fetched = jax.device_get(self.pending)
    check_finite(self.training, stage, done - len(fetched), fetched)
    seconds = time.perf_counter() - self.tick
    self.train_time += seconds
    values = log_train(self.training, self.index, done, fetched, seconds, done - self.tick_step)
    self.record["skipped_steps"] = self.record.get("skipped_steps", 0) + values["skipped_steps"]
    self.record["final_train_loss"] = values["loss"]
    self.pending, self.tick, self.tick_step = [], time.perf_counter(), done


def finish_stage(training, index, state, record):
  """A stage's end: its test evaluation, and a teacher's saved network."""
  exp, stage = training.exp, training.exp.stages[index]
  if stage.evaluate:
    values = evaluate(training, index, state, stage.num_steps)
    record["test_accuracy"] = values["accuracy"]
    if len(values) > 1:
      record["test"] = values
  if stage.trains in exp.teachers:
    training.results["teachers"].setdefault(stage.trains, {})["test_accuracy"] = record["test_accuracy"]
    teachers.save(exp, training.workdir, training.results, stage, state)


def log_train(training, index, done, fetched, seconds, steps):
  """Logs the means of the `fetched` step metrics of the last `steps` steps (taking `seconds`) at
  stage step `done`: to metrics.jsonl, TensorBoard and the progress line. Returns the means."""
  exp, stage = training.exp, training.exp.stages[index]
  values = _mean_scalars(fetched)
  images_per_s = steps * exp.config.batch_size / max(seconds, 1e-9)
  training.writer.write(
    {
      "stage": stage.name,
      "step": done,
      "epoch": round(done / exp.steps_per_epoch, 4),
      "split": "train",
      **values,
      "images_per_s": images_per_s,
    },
    training.offsets[index] + done,
  )
  per_step = seconds / max(steps, 1)
  later = sum(s.num_steps for s in exp.stages[index + 1 :])
  left = (stage.num_steps - done) * per_step
  training.writer.progress(
    stage.name, done, stage.num_steps, values, images_per_s, left, left + later * per_step if later else None
  )
  return values


def save(training, index, stage_step, state, pending=()):
  """Checkpoints `state` at stage `index`'s step `stage_step`, with the JSON metadata a resume reads:
  the stages, where it is, the results so far and `pending`, the step metrics not yet logged
  (float32 values round-trip exactly through JSON, so a resumed training logs the same means as an
  uninterrupted one)."""
  names = [s.name for s in training.exp.stages]
  meta = {
    "stages": names,
    "stage": names[index],
    "stage_index": index,
    "stage_step": stage_step,
    "results": training.results,
    "pending": [{k: float(v) for k, v in scalars.items()} for scalars in jax.device_get(list(pending))],
    "metrics_records": training.writer.records,  # what a truncated metrics.jsonl is checked against
    "config": json.loads(training.exp.config.to_json_best_effort()),  # the same-experiment guard's copy
    "inputs": training.exp.inputs,  # the data's and reused teachers' SHA-256, checked on resume (`check_inputs`)
  }
  training.checkpoints.save(training.offsets[index] + stage_step, state, meta)


def check_finite(training, stage, first_step, fetched):
  """With on_nan='stop', raises NonFiniteLoss naming the first bad step and its loss terms."""
  if training.exp.config.on_nan != "stop":
    return
  for offset, scalars in enumerate(fetched):
    if scalars["nonfinite"]:
      terms = {k: float(v) for k, v in scalars.items() if k != "nonfinite" and not math.isfinite(float(v))}
      what = ", ".join(f"{k}={v}" for k, v in terms.items()) if terms else "the gradient (the loss itself was finite)"
      training.checkpoints.manager.wait_until_finished()  # the newest checkpoint, complete
      bad_step = first_step + offset + 1
      latest = training.checkpoints.manager.latest_step()
      kept = (
        f"the newest checkpoint (global step {latest} in {training.workdir}/checkpoints) holds the last good "
        f"parameters, from before step {bad_step}"
        if latest is not None
        else "no checkpoint had been saved yet"
      )
      raise NonFiniteLoss(
        f"Stage {stage.name!r}, step {bad_step}: non-finite {what}. Non-finite updates are never applied, so "
        f"{kept}. "
        "Lower the stage's learning_rate (or set grad_clip_norm), or set on_nan=skip_step to skip such steps."
      )


def evaluate(training, index, state, done):
  """Stage `index`'s test metrics ({"accuracy": …, and any the stage's evaluation adds}), logged."""
  exp, stage = training.exp, training.exp.stages[index]
  training.writer.note(
    f"[{stage.name}] step {done}/{stage.num_steps} evaluating on the {exp.data.num_test:,} test images …"
  )
  values = training.evaluator.metrics(*evaluation.stage_evaluation(exp, stage, state.params, state.batch_stats))
  training.writer.write(
    {"stage": stage.name, "step": done, "epoch": round(done / exp.steps_per_epoch, 4), "split": "test", **values},
    training.offsets[index] + done,
  )
  if training.writer.enabled:
    others = "".join(f", {k} {v:.4f}" for k, v in values.items() if k != "accuracy")
    print(f"[{stage.name}] step {done}/{stage.num_steps} test accuracy {values['accuracy']:.4f}{others}", flush=True)
  return values


def run(config, workdir, source=None, prepared=None):
  """Validates, then trains every stage of `config.method` holding the workdir's lock; returns (and
  writes) summary.json. `source`: the `data.Arrays` of `dataset.name='arrays'`; `prepared`: the
  experiment `experiment.prepare` already built (and every host agreed on) for this config and workdir."""
  cluster.initialize(config)
  cluster.warn_if_accelerator_idle()
  exp = prepared
  if exp is None:
    try:
      exp, failure = experiment.prepare(config, workdir, source=source), None
    except FitnetsError as e:
      exp, failure = None, e
    cluster.agree(failure)  # on several hosts, all go on or all stop
  with workdir_lock.WorkdirLock(workdir) as lock:
    if jax.process_index() == 0:
      try:
        files.write_atomically(files.join(workdir, experiment.CONFIG_FILE), config.to_json_best_effort(indent=2))
      except OSError as e:
        raise WorkdirWriteError.of("the run's config", files.join(workdir, experiment.CONFIG_FILE), e) from None
    return train_and_evaluate(exp, workdir, lock)

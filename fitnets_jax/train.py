"""The one training loop: any method's stages, data-parallel, checkpointed, resumable.

Each stage's step is one `jax.jit` over a 1-D device mesh: the batch is sharded on the `data`
axis, the state and the frozen teacher are replicated, the old state is donated, and XLA inserts
the gradient all-reduce, so 1 device and N devices compute the same numbers, up to the order of
float sums (tests/helpers.py says how closely). A stage trains only the leaves its labels mark
'train' (`optax.partition` + `set_to_zero`); frozen leaves pass through the step unchanged.

Checkpoints (orbax) hold the current stage's state and JSON metadata (stage, step, results so
far) every `checkpoint_every_steps` and at each stage end; a restarted run resumes in the right
stage with the same parameters, optimizer state, RNG and data order.
"""

import collections
import json
import math
import signal
import sys
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fitnets_jax import (
  checkpoint,
  cluster,
  compiler,
  data,
  experiment,
  files,
  metrics,
  optim,
  teacher_cache,
  workdir_lock,
)
from fitnets_jax.errors import FitnetsError, NonFiniteLoss, Preempted, WorkdirWriteError
from fitnets_jax.methods import base


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def replicated(mesh):
  return NamedSharding(mesh, P())


def replicate(tree, mesh):
  """Host arrays (the same on every process) → arrays replicated over the mesh, as fresh copies
  (a donated state must not alias arrays anyone else holds). On several hosts each process builds
  its own devices' copies: `jax.device_put` would first gather every leaf from every process to
  check that they agree, one collective per leaf (minutes for a network's state)."""
  sharding = replicated(mesh)
  host = jax.tree.map(lambda x: np.array(x), jax.device_get(tree))
  if jax.process_count() == 1:
    return jax.device_put(host, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]), host)


def batch_sharding(mesh):
  return NamedSharding(mesh, P("data"))


def to_global(batch, mesh):
  """This host's numpy batch → global arrays sharded over the mesh's 'data' axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def prefetch_to_device(batches, mesh, size=2):
  """Keeps `size` batches in flight to the devices ahead of the step that consumes them."""
  queue = collections.deque()
  for batch in batches:
    queue.append(to_global(batch, mesh))
    if len(queue) > size:
      yield queue.popleft()
  yield from queue


def make_step(stage, tx, labels):
  """The stage's train step: loss, gradients, update of the trained leaves, metrics (or the
  stage's own `update`), with non-finite updates discarded."""

  def gradient_update(params, batch_stats, opt_state, teacher, batch, rng, step):
    def loss_fn(p):
      return stage.loss(p, batch_stats, teacher, batch, rng, step)

    (loss, (scalars, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    new_params = jax.tree.map(lambda label, new, old: new if label == "train" else old, labels, new_params, params)
    return base.Update(new_params, new_stats, new_opt_state, loss, scalars, grads)

  update = stage.update or gradient_update

  def step(state, batch, teacher):
    rng = jax.random.fold_in(state.rng, state.step)
    params, batch_stats, opt_state, loss, scalars, grads = update(
      state.params, state.batch_stats, state.opt_state, teacher, batch, rng, state.step
    )
    # A NaN/Inf loss or gradient leaves the state as it was (the host decides, at the next log
    # interval, whether that stops the run); no per-step host sync is needed to stay safe.
    finite = jnp.isfinite(loss) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    scalars = dict(scalars, loss=loss, nonfinite=1.0 - finite.astype(jnp.float32))
    return state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      batch_stats=keep(batch_stats, state.batch_stats),
      opt_state=keep(opt_state, state.opt_state),
    ), scalars

  return step


def lower_step(stage, tx, labels, mesh, state, batch, teacher):
  """The stage's jitted step, lowered for these arguments (arrays, or ShapeDtypeStructs of them):
  (lowered, the step function)."""
  rep = replicated(mesh)
  step = make_step(stage, tx, labels)
  jitted = compiler.jit(step, in_shardings=(rep, batch_sharding(mesh), rep), out_shardings=(rep, rep), donate_argnums=0)
  return jitted.lower(state, batch, teacher), step


def compile_step(stage, tx, labels, mesh, state, batch, teacher):
  """AOT-compiles the jitted step; returns (compiled, compile seconds, FLOPs per step)."""
  start = time.perf_counter()
  lowered, step = lower_step(stage, tx, labels, mesh, state, batch, teacher)
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  return compiled, seconds, step_flops(lowered, step, (state, batch, teacher))


def step_flops(lowered, fn, args):
  """FLOPs of one step on all devices together, from XLA's cost analysis of the lowered program
  (`lowered`, of `fn(*args)`), or None where no backend gives one.

  The lowered program, not the compiled one: once compiled, the analysis covers one device's part
  of a sharded step, and on GPUs it leaves out the convolutions (cuDNN calls, 0.06 of the digits
  teacher step's 1.16 GFLOP). On CPU the two agree within 2 % on one device. Backends reached as
  PJRT plugins (GPUs, TPUs) analyse nothing, so there the same program, traced for that backend, is
  lowered for the host's CPU and analysed.
  """
  flops = _flops(lowered.cost_analysis())
  if flops is None and jax.default_backend() != "cpu":
    try:
      cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    except RuntimeError:  # JAX_PLATFORMS leaves out the CPU
      return None
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu), args)
    flops = _flops(jax.jit(fn).lower(*abstract).cost_analysis())
  return flops


def _flops(cost):
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def network_accuracy(net):
  """The default evaluation: per-example hits of `net` ({"accuracy": …})."""

  def evaluation(variables, images, labels):
    return {"accuracy": jnp.argmax(base.predict(net, variables, images), -1) == labels}

  return evaluation


def stage_evaluation(exp, stage, params, batch_stats):
  """(key, evaluation, variables) that measure what `stage` trains: its own evaluation of all its
  variables, or the accuracy of the network it outputs."""
  if stage.evaluation:
    return ("stage", stage.name), stage.evaluation, {"params": params, "batch_stats": batch_stats}
  net = exp.teachers.get(stage.trains, exp.student)
  return ("network", net.name), network_accuracy(net), base.variables(*stage.output(params, batch_stats))


class Evaluator:
  """Test (or validation) metrics, data-parallel, with padded final batches masked out."""

  def __init__(self, exp):
    self.exp = exp
    self._steps = {}

  def step(self, key, evaluation):
    """The jitted evaluation step: (variables, batch) → ({metric: sum over the batch}, examples)."""
    if key not in self._steps:

      def step(variables, batch):
        values = evaluation(variables, batch["image"], batch["label"])
        sums = {k: jnp.sum(v.astype(jnp.float32) * batch["mask"]) for k, v in values.items()}
        return sums, jnp.sum(batch["mask"])

      rep = replicated(self.exp.mesh)
      self._steps[key] = compiler.jit(step, in_shardings=(rep, batch_sharding(self.exp.mesh)), out_shardings=rep)
    return self._steps[key]

  def metrics(self, key, evaluation, variables, split="test"):
    """{metric: mean over the split} of `evaluation(variables, images, labels)`'s per-example values."""
    step = self.step(key, evaluation)
    totals = jax.device_get(
      [
        step(variables, b)
        for b in prefetch_to_device(data.eval_batches(self.exp.data, self.exp.local_eval_batch, split), self.exp.mesh)
      ]
    )
    count = sum(float(c) for _, c in totals)
    return {k: float(sum(float(t[k]) for t, _ in totals) / count) for k in totals[0][0]}

  def accuracy(self, net, params, batch_stats, split="test"):
    return self.metrics(("network", net.name), network_accuracy(net), base.variables(params, batch_stats), split)[
      "accuracy"
    ]


def transformation(stage, labels):
  """The stage's optimizer over its parameter tree: frozen leaves get zero updates and no state.
  A stage with its own `update` applies its own transformations to its own optimizer state."""
  return stage.tx if stage.update else optim.partitioned(stage.tx, labels)


def initial_state(stage, tx, rng, carry=None):
  params, batch_stats = stage.init(rng, carry)
  return TrainState(
    step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=tx.init(params), rng=rng
  )


def init_state(stage, tx, rng, carry, mesh):
  """The stage's first state, replicated over the mesh: one program compiled for a single run
  (`compiler.RUN_ONCE_OPTIONS`; op by op, a network's initialisation compiles dozens of small
  programs), with the values op-by-op execution gives. Its outputs are fresh buffers (a donated
  state must not alias the carried arrays), and each process computes them for its own devices."""

  def make(carry):
    return initial_state(stage, tx, rng, jax.tree.map(jnp.copy, carry))

  return compiler.jit(make, run_once=True, out_shardings=replicated(mesh))(carry)


def abstract_state(stage, tx, rng, mesh):
  """The stage's state as replicated ShapeDtypeStructs: the target of a checkpoint restore."""
  rep = replicated(mesh)
  return jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
    jax.eval_shape(lambda: initial_state(stage, tx, rng)),
  )


def stage_rng(seed, index):
  """Stage `index`'s RNG key: its initialisation, and (folded with the step) its steps' randomness."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), index)


def stage_setup(exp, index):
  """(stage, rng, parameter labels, partitioned optimizer) of the experiment's stage `index`."""
  stage = exp.stages[index]
  rng = stage_rng(exp.config.seed, index)
  labels = stage.param_labels(jax.eval_shape(lambda: stage.init(rng, None))[0])
  return stage, rng, labels, transformation(stage, labels)


def _mean_scalars(values):
  """Means over the steps whose update was applied, and the number of skipped steps."""
  good = [v for v in values if not v["nonfinite"]] or values
  means = {k: float(np.mean([v[k] for v in good])) for k in values[0] if k != "nonfinite"}
  return dict(means, skipped_steps=int(sum(v["nonfinite"] for v in values)))


class StopRequest:
  """SIGTERM sets a flag that the loop reads at the next step boundary (single-host runs; on
  multi-host TPU slices orbax's preemption sync point tells every host at the same step)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Runner:
  """Runs an Experiment's stages in order, resuming from the workdir's checkpoints."""

  def __init__(self, exp, workdir):
    self.exp, self.workdir, self.config = exp, workdir, exp.config
    self.names = [s.name for s in exp.stages]
    self.offsets = np.cumsum([0] + [s.num_steps for s in exp.stages]).tolist()
    self.writer = metrics.Writer(workdir)
    self.checkpoints = checkpoint.RunCheckpoints(
      files.join(workdir, "checkpoints"), self.config.keep_checkpoints, self.offsets[1:]
    )
    self.evaluator = Evaluator(exp)
    # teachers: role → {test_accuracy, validation_accuracy, weight}, measured once the teachers are ready
    self.results = {"stages": {}, "teachers": {}}
    self.stop = StopRequest()
    self.pending = []  # un-logged step metrics restored from a checkpoint

  def preempted(self, global_step):
    return self.stop.requested or self.checkpoints.manager.reached_preemption(global_step)

  # ------------------------------------------------------------------ resume

  def resume(self):
    """(stage index, stage step, restored state) from the newest readable checkpoint, or None.

    A checkpoint that cannot be read (truncated, partly deleted) is moved to checkpoints_damaged/
    with a warning and the next older one is tried; if none is readable the run refuses to start
    rather than silently begin again from step 0.
    """
    damaged = []
    for step in reversed(self.checkpoints.steps()):
      started = time.perf_counter()
      try:
        meta = self.checkpoints.meta(step)
      except Exception as e:  # noqa: BLE001  (orbax/tensorstore/json all raise their own types)
        damaged.append(self.set_aside(step, e))
        continue
      if meta.get("stages") != self.names:
        raise FitnetsError(
          f"--workdir={self.workdir!r} holds a run with stages {meta.get('stages')}, but this config runs "
          f"{self.names}; use a new workdir, or the config that made it (saved in its config.json)."
        )
      index = meta["stage_index"]
      stage, rng, labels, tx = self.stage_setup(index)
      try:
        state = self.checkpoints.restore(step, abstract_state(stage, tx, rng, self.exp.mesh), meta)
      except Exception as e:  # noqa: BLE001  (DamagedCheckpoint, or orbax's own errors)
        damaged.append(self.set_aside(step, e))
        continue
      self.results = meta["results"]
      self.pending = [{k: np.float32(v) for k, v in scalars.items()} for scalars in meta.get("pending", [])]
      kept = self.writer.truncate(lambda r: self.offsets[self.names.index(r["stage"])] + r["step"] <= step)
      expected = meta.get("metrics_records")
      if self.writer.enabled and expected is not None and kept < expected:
        print(
          f"warning: {self.writer.path} holds {kept} of the {expected} records written up to global step {step}; "
          f"{expected - kept} are lost (the file was truncated or edited). The run goes on and logs from here; "
          "the checkpoints and summary.json are unaffected.",
          file=sys.stderr,
          flush=True,
        )
      done = meta["stage_step"] == stage.num_steps
      print(
        f"Resuming from {self.workdir}: stage {stage.name!r} "
        + ("finished" if done else f"at step {meta['stage_step']}/{stage.num_steps}")
        + f" (checkpoint restored in {time.perf_counter() - started:.2f} s)",
        flush=True,
      )
      return index, meta["stage_step"], state
    quarantine = files.join(self.workdir, "checkpoints_damaged")
    if damaged or files.isdir(quarantine):
      raise FitnetsError(
        f"--workdir={self.workdir!r} has no readable checkpoint left: the unreadable ones are in {quarantine}. "
        "Starting again from step 0 would silently discard the run, so nothing else was changed; to start "
        f"over in this workdir delete {quarantine}, or use a new --workdir."
      )
    self.writer.truncate(lambda r: False)  # a run killed before its first checkpoint logs afresh
    return None

  def set_aside(self, step, error):
    where = self.checkpoints.set_aside(step)
    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    print(
      f"warning: the checkpoint at global step {step} is unreadable ({type(error).__name__}: {reason}); "
      f"moved it to {where} and trying the previous one.",
      file=sys.stderr,
      flush=True,
    )
    return where

  def stage_setup(self, index):
    return stage_setup(self.exp, index)

  def meta(self, index, stage_step, pending=()):
    """A checkpoint's JSON metadata; `pending` holds the step metrics not yet logged (float32 values
    round-trip exactly through JSON), so a resumed run logs the same means as an uninterrupted one."""
    return {
      "stages": self.names,
      "stage": self.names[index],
      "stage_index": index,
      "stage_step": stage_step,
      "results": self.results,
      "pending": [{k: float(v) for k, v in scalars.items()} for scalars in jax.device_get(list(pending))],
      "metrics_records": self.writer.records,  # what a truncated metrics.jsonl is checked against
      "config": json.loads(self.config.to_json_best_effort()),
    }  # the same-experiment guard's copy

  # ------------------------------------------------------------------ teacher

  def teacher_variables(self, carried):
    """{role: replicated variables, "mu": weights} of every teacher: carried from this run's teacher
    stage, reused from a checkpoint, or (after a resume) restored from workdir/<role>."""
    exp, variables = self.exp, {}
    for role, net in exp.teachers.items():
      if role in carried:
        params, stats = carried[role]
        v = {"params": params, "batch_stats": stats}
      else:
        v = exp.teacher_variables.get(role) or self.own_teacher(role, net)
        v = {"params": v["params"], "batch_stats": v.get("batch_stats", {})}
      variables[role] = replicate(v, exp.mesh)
      record = self.results["teachers"].setdefault(role, {})
      if record.get("test_accuracy") is None:
        record["test_accuracy"] = self.evaluator.accuracy(
          net, variables[role]["params"], variables[role]["batch_stats"]
        )
    roles = list(exp.teachers)
    if exp.teacher_weights is None:
      mu = [1.0 / len(roles)] * len(roles)
    elif "weight" in self.results["teachers"][roles[0]]:
      mu = [self.results["teachers"][r]["weight"] for r in roles]
    else:
      mu, accuracies = exp.teacher_weights(
        self.config,
        roles,
        lambda r: self.evaluator.accuracy(
          exp.teachers[r], variables[r]["params"], variables[r]["batch_stats"], split="validation"
        ),
      )
      for r, m in zip(roles, mu):
        self.results["teachers"][r].update(weight=m, validation_accuracy=accuracies[r])
    variables["mu"] = replicate(np.asarray(mu, np.float32), exp.mesh)
    if self.config.teacher.cache:
      tables, info = teacher_cache.build(
        exp.teachers,
        variables,
        teacher_cache.needed_layers(exp.stages),
        exp.data,
        self.config.eval_batch_size,
        self.config.teacher.cache_budget_mb,
      )
      variables["cache"] = replicate(tables, exp.mesh)
      self.results["teacher_cache"] = info
      if self.writer.enabled:
        left_out = f"; over the budget, computed live: {', '.join(info['left_out'])}" if info["left_out"] else ""
        print(
          f"Teacher cache: {info['examples']:,} examples, {info['bytes'] / 2**20:.1f} MiB "
          f"(logits, features {info['layers']}) in {info['seconds']:.1f} s{left_out}",
          flush=True,
        )
    return variables

  def own_teacher(self, role, net):
    """The variables of a teacher this run trained, after a resume: from workdir/<role>, or, when that
    folder is gone or damaged, from the teacher stage's last checkpoint (always kept), saved again."""
    folder = files.join(self.workdir, role)
    try:
      return checkpoint.load_teacher(folder, net.abstract_variables())
    except FitnetsError:
      problem = "damaged" if files.isfile(files.join(folder, checkpoint.TEACHER_INFO)) else "missing"
    index = next(i for i, s in enumerate(self.exp.stages) if s.trains == role)
    step = self.offsets[index + 1]
    stage, rng, _, tx = self.stage_setup(index)
    try:
      state = self.checkpoints.restore(step, abstract_state(stage, tx, rng, self.exp.mesh), self.checkpoints.meta(step))
    except Exception as e:  # noqa: BLE001
      raise FitnetsError(
        f"The {role} this run trained is lost: {folder} is {problem}, and the {stage.name!r} stage's last checkpoint "
        f"(global step {step} in {self.checkpoints.directory}), which also holds it, cannot be read "
        f"({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}). Nothing was changed; restore "
        f"{folder} from a copy, or start over in a new --workdir."
      ) from None
    params, stats = stage.output(state.params, state.batch_stats)
    variables = jax.device_get({"params": params, "batch_stats": stats})
    checkpoint.save_teacher(self.workdir, role, variables, self.teacher_info(role, stage.name))
    print(
      f"warning: {folder} was {problem}; the {role} was recovered from the {stage.name!r} stage's last "
      f"checkpoint (global step {step}) and saved there again.",
      file=sys.stderr,
      flush=True,
    )
    return variables

  def teacher_info(self, role, stage_name):
    """teacher.json of a teacher this run trained: its model, sizes, test accuracy and data."""
    exp = self.exp
    return {
      **exp.teachers[role].describe(),
      "test_accuracy": self.results["stages"][stage_name]["test_accuracy"],
      "dataset": exp.data.name,
      "num_classes": exp.data.num_classes,
      "image_shape": list(exp.data.image_shape),
    }

  # ------------------------------------------------------------------ stages

  def run(self):
    with self.stop:
      return self._run()

  def _run(self):
    exp = self.exp
    resume = self.resume()
    carry, teacher_carry, teacher = None, {}, None
    for index, stage in enumerate(exp.stages):
      if resume is not None and index < resume[0]:
        continue
      if self.stop.requested:  # between stages: the previous stage's end is saved
        self.checkpoints.close()
        raise Preempted(
          f"Stopped before stage {stage.name!r} on SIGTERM; its previous stage is saved. "
          f"Run the same command again to resume from {self.workdir}."
        )
      if stage.uses_teacher and teacher is None:
        teacher = self.teacher_variables(teacher_carry)
      _, rng, labels, tx = self.stage_setup(index)
      if resume is not None and index == resume[0]:
        state = resume[2]
      else:
        state = init_state(stage, tx, rng, carry, exp.mesh)
      if int(state.step) < stage.num_steps:
        state = self.train_stage(index, stage, tx, labels, state, teacher or {})
      carry = stage.output(state.params, state.batch_stats)
      if stage.trains in exp.teachers:
        teacher_carry[stage.trains], carry = carry, None
    self.checkpoints.close()
    summary = self.summary()
    self.writer.close()
    return summary

  def train_stage(self, index, stage, tx, labels, state, teacher):
    """Steps `stage` from `state` to its end; logs, evaluates and checkpoints on the way."""
    exp, cfg = self.exp, self.config
    started = time.perf_counter()
    start = int(state.step)
    batches = prefetch_to_device(
      data.train_batches(
        exp.data, exp.local_batch, exp.steps_per_epoch, cfg.seed, index, start, cfg.dataset.shuffle_buffer
      ),
      exp.mesh,
    )
    first = next(batches)
    step_fn, compile_s, flops = compile_step(stage, tx, labels, exp.mesh, state, first, teacher)
    record = self.results["stages"].setdefault(stage.name, {})
    record.update(steps=stage.num_steps, compile_s=round(compile_s, 3), flops_per_step=flops)
    # Time before a resume counts too: both totals travel in the checkpoint's metadata.
    prior_wall, train_time = record.get("wall_time_s", 0.0), record.get("train_time_s", 0.0)
    wall = lambda: round(prior_wall + time.perf_counter() - started, 3)
    pending, batch, self.pending = self.pending, first, []
    tick, tick_step = time.perf_counter(), start
    for s in range(start, stage.num_steps):
      state, scalars = step_fn(state, batch, teacher)
      pending.append(scalars)
      done = s + 1
      if done < stage.num_steps:
        batch = next(batches)
      if done % cfg.log_every_steps == 0 or done == stage.num_steps:
        fetched = jax.device_get(pending)
        self.check_finite(index, stage, done - len(fetched), fetched)
        values = _mean_scalars(fetched)
        record["skipped_steps"] = record.get("skipped_steps", 0) + values["skipped_steps"]
        now = time.perf_counter()
        seconds = now - tick
        train_time += seconds
        images_per_s = (done - tick_step) * cfg.batch_size / max(seconds, 1e-9)
        self.writer.write(
          {
            "stage": stage.name,
            "step": done,
            "epoch": round(done / exp.steps_per_epoch, 4),
            "split": "train",
            **values,
            "images_per_s": images_per_s,
          },
          self.offsets[index] + done,
        )
        self.writer.progress(
          stage.name,
          done,
          stage.num_steps,
          values,
          images_per_s,
          (stage.num_steps - done) * seconds / max(done - tick_step, 1),
        )
        record["final_train_loss"] = values["loss"]
        pending, tick, tick_step = [], time.perf_counter(), done
      if stage.evaluate and cfg.eval_every_steps and done % cfg.eval_every_steps == 0 and done < stage.num_steps:
        self.evaluate(index, stage, state, done)
      stopping = done < stage.num_steps and self.preempted(self.offsets[index] + done)
      if stopping and pending:  # metrics of the steps since the last log are not lost
        self.check_finite(index, stage, done - len(pending), jax.device_get(pending))
      if (done % cfg.checkpoint_every_steps == 0 or stopping) and done < stage.num_steps:
        record.update(train_time_s=train_time, wall_time_s=wall())
        self.checkpoints.save(self.offsets[index] + done, state, self.meta(index, done, pending))
      if stopping:
        self.checkpoints.close()
        raise Preempted(
          f"Stopped on SIGTERM/preemption in stage {stage.name!r} at step {done}/{stage.num_steps}; "
          f"a checkpoint is saved. Run the same command again to resume from {self.workdir}."
        )
    record.update(
      train_time_s=train_time, images_per_s=round(stage.num_steps * cfg.batch_size / max(train_time, 1e-9), 1)
    )
    if stage.evaluate:
      values = self.evaluate(index, stage, state, stage.num_steps)
      record["test_accuracy"] = values["accuracy"]
      if len(values) > 1:
        record["test"] = values
    if stage.trains in exp.teachers:
      self.results["teachers"].setdefault(stage.trains, {})["test_accuracy"] = record["test_accuracy"]
      params, stats = stage.output(state.params, state.batch_stats)
      checkpoint.save_teacher(
        self.workdir,
        stage.trains,
        jax.device_get({"params": params, "batch_stats": stats}),
        self.teacher_info(stage.trains, stage.name),
      )
    record["wall_time_s"] = wall()
    self.checkpoints.save(self.offsets[index] + stage.num_steps, state, self.meta(index, stage.num_steps))
    return state

  def check_finite(self, index, stage, first_step, fetched):
    """With on_nan='stop', raises NonFiniteLoss naming the first bad step and its loss terms."""
    if self.config.on_nan != "stop":
      return
    for offset, scalars in enumerate(fetched):
      if scalars["nonfinite"]:
        terms = {k: float(v) for k, v in scalars.items() if k != "nonfinite" and not math.isfinite(float(v))}
        what = ", ".join(f"{k}={v}" for k, v in terms.items()) if terms else "the gradient (the loss itself was finite)"
        self.checkpoints.close()
        bad_step = first_step + offset + 1
        latest = self.checkpoints.manager.latest_step()
        kept = (
          f"the newest checkpoint (global step {latest} in {self.workdir}/checkpoints) holds the last good "
          f"parameters, from before step {bad_step}"
          if latest is not None
          else "no checkpoint had been saved yet"
        )
        raise NonFiniteLoss(
          f"Stage {stage.name!r}, step {bad_step}: non-finite {what}. Non-finite updates are never applied, so "
          f"{kept}. "
          "Lower the stage's learning_rate (or set grad_clip_norm), or set on_nan=skip_step to skip such steps."
        )

  def evaluate(self, index, stage, state, done):
    """The stage's test metrics ({"accuracy": …, and any the stage's evaluation adds}), logged."""
    values = self.evaluator.metrics(*stage_evaluation(self.exp, stage, state.params, state.batch_stats))
    self.writer.write(
      {
        "stage": stage.name,
        "step": done,
        "epoch": round(done / self.exp.steps_per_epoch, 4),
        "split": "test",
        **values,
      },
      self.offsets[index] + done,
    )
    if self.writer.enabled:
      others = "".join(f", {k} {v:.4f}" for k, v in values.items() if k != "accuracy")
      print(f"[{stage.name}] step {done}/{stage.num_steps} test accuracy {values['accuracy']:.4f}{others}", flush=True)
    return values

  # ------------------------------------------------------------------ outputs

  def summary(self):
    exp, cfg = self.exp, self.config
    last = [s for s in exp.stages if s.trains not in exp.teachers and s.evaluate][-1]  # the student's
    stages = {name: {k: v for k, v in r.items() if k != "train_time_s"} for name, r in self.results["stages"].items()}
    teachers = [
      {
        "role": role,
        **net.describe(),
        **self.results["teachers"].get(role, {}),
        "checkpoint": exp.teacher_sources.get(role) or files.join(files.absolute(self.workdir), role),
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
      "student": {**exp.student.describe(), "test_accuracy": self.results["stages"][last.name].get("test_accuracy")},
      "stages": stages,
    }
    if last.summarize:
      summary.update(last.summarize(self.results["stages"][last.name].get("test", {})))
    if "teacher_cache" in self.results:
      summary["teacher_cache"] = self.results["teacher_cache"]
    if jax.process_index() == 0:
      files.write_atomically(files.join(self.workdir, "summary.json"), json.dumps(summary, indent=2))
    return summary


def run(config, workdir):
  """Validates, then trains every stage of `config.method` holding the workdir's lock; returns (and
  writes) summary.json."""
  cluster.initialize(config)
  cluster.warn_if_accelerator_idle()
  exp = experiment.prepare(config, workdir)
  with workdir_lock.WorkdirLock(workdir):
    if jax.process_index() == 0:
      try:
        files.write_atomically(files.join(workdir, experiment.CONFIG_FILE), config.to_json_best_effort(indent=2))
      except OSError as e:
        raise WorkdirWriteError.of("the run's config", files.join(workdir, experiment.CONFIG_FILE), e) from None
    return Runner(exp, workdir).run()

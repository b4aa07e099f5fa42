"""A stage's train state and its jitted step.

Each stage's step is one `jax.jit` over the device mesh (`parallel`): the batch is sharded on the
`data` axis, the state and the frozen teacher are replicated, the old state is donated, and XLA inserts
the gradient all-reduce, so 1 device and N devices compute the same numbers, up to the order of
float sums (tests/helpers.py says how closely). A stage trains only the leaves its labels mark
'train' (`optax.partition` + `set_to_zero`); frozen leaves pass through the step unchanged.
"""

import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from fitnets_jax import compiler, optim
from fitnets_jax.methods.shared import Update
from fitnets_jax.parallel import batch_sharding, replicated


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


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


def stage_offsets(stages):
  """Each stage's first global step, and the run's total: [0, n_0, n_0 + n_1, …]."""
  offsets = [0]
  for stage in stages:
    offsets.append(offsets[-1] + stage.num_steps)
  return offsets


def make_step(stage, tx, labels):
  """The stage's train step: loss, gradients, update of the trained leaves, metrics (or the
  stage's own `update`), with non-finite updates discarded."""

  def gradient_update(params, batch_stats, opt_state, teaching, batch, rng, step):
    (loss, (scalars, new_stats)), grads = jax.value_and_grad(stage.loss, has_aux=True)(
      params, batch_stats, teaching, batch, rng, step
    )
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    new_params = jax.tree.map(lambda label, new, old: new if label == "train" else old, labels, new_params, params)
    return Update(new_params, new_stats, new_opt_state, loss, scalars, grads)

  update = stage.update or gradient_update

  def step(state, batch, teaching):
    rng = jax.random.fold_in(state.rng, state.step)
    params, batch_stats, opt_state, loss, scalars, grads = update(
      state.params, state.batch_stats, state.opt_state, teaching, batch, rng, state.step
    )
    # A NaN/Inf loss or gradient leaves the state as it was (the host decides, at the next log
    # interval, whether that stops the run); no per-step host sync is needed to stay safe.
    finite = jnp.isfinite(loss) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    scalars = dict(scalars, loss=loss, nonfinite=1.0 - finite.astype(jnp.float32))
    if stage.learning_rate is not None:
      scalars["learning_rate"] = jnp.asarray(stage.learning_rate(state.step), jnp.float32)
    return state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      batch_stats=keep(batch_stats, state.batch_stats),
      opt_state=keep(opt_state, state.opt_state),
    ), scalars

  return step


def lower_step(stage, tx, labels, mesh, state, batch, teaching):
  """The stage's jitted step, lowered for these arguments (arrays, or ShapeDtypeStructs of them):
  (lowered, the step function)."""
  rep = replicated(mesh)
  step = make_step(stage, tx, labels)
  jitted = compiler.jit(step, in_shardings=(rep, batch_sharding(mesh), rep), out_shardings=(rep, rep), donate_argnums=0)
  return jitted.lower(state, batch, teaching), step


def compile_step(stage, tx, labels, mesh, state, batch, teaching):
  """AOT-compiles the jitted step; returns (compiled, compile seconds, FLOPs per step)."""
  start = time.perf_counter()
  lowered, step = lower_step(stage, tx, labels, mesh, state, batch, teaching)
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  return compiled, seconds, step_flops(lowered, step, (state, batch, teaching))


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

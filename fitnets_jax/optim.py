"""Optimizers per stage: schedule, base optimizer, L2, clipping, max-norm, and freezing.

Freezing uses `optax.partition` with `set_to_zero` for frozen leaves (not `optax.masked`, which
would pass raw gradients through); frozen leaves have no optimizer state.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fitnets_jax.errors import check, one_of

OPTIMIZERS = ("rmsprop", "sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "piecewise", "linear", "exponential")


def learning_rate(cfg, num_steps, steps_per_epoch, key):
  """The stage's learning-rate schedule (a function of the stage step)."""
  one_of(f"{key}.schedule", cfg.schedule, SCHEDULES)
  check(cfg.learning_rate > 0, f"{key}.learning_rate={cfg.learning_rate!r} must be > 0.")
  check(cfg.warmup_epochs >= 0, f"{key}.warmup_epochs={cfg.warmup_epochs!r} must be ≥ 0.")
  lr = cfg.learning_rate
  warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
  if cfg.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, max(1, num_steps - warmup))
  elif cfg.schedule == "linear":  # pylearn2's LinearDecayOverEpoch (per step here, per epoch there)
    check(
      len(cfg.boundaries_epochs) == 2 and 0 <= cfg.boundaries_epochs[0] < cfg.boundaries_epochs[1],
      f"{key}.boundaries_epochs={list(cfg.boundaries_epochs)!r}: schedule='linear' takes [begin, end] epochs, "
      "0 ≤ begin < end (lr falls linearly to learning_rate × decay_factor between them).",
    )
    begin, end = (int(round(b * steps_per_epoch)) - warmup for b in cfg.boundaries_epochs)
    main = optax.linear_schedule(lr, lr * cfg.decay_factor, max(1, end - max(begin, 0)), max(begin, 0))
  elif cfg.schedule == "exponential":  # pylearn2's ExponentialDecay: lr × decay_factor per step, floored
    check(0 < cfg.decay_factor <= 1, f"{key}.decay_factor={cfg.decay_factor!r} must be in (0, 1] for 'exponential'.")
    floor = cfg.min_learning_rate
    main = lambda step: jnp.maximum(lr * cfg.decay_factor ** jnp.asarray(step, jnp.float32), floor)
  else:
    check(cfg.decay_factor > 0, f"{key}.decay_factor={cfg.decay_factor!r} must be > 0.")
    bounds = [int(round(b * steps_per_epoch)) - warmup for b in cfg.boundaries_epochs if b > 0]
    main = optax.piecewise_constant_schedule(lr, {b: cfg.decay_factor for b in bounds if b > 0})
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def momentum_schedule(cfg, steps_per_epoch, key):
  """Momentum ramped linearly from `momentum` to `momentum_final` between `momentum_ramp_epochs`
  (pylearn2's MomentumAdjustor, per step here, per epoch there)."""
  begin, end = cfg.momentum_ramp_epochs
  check(
    0 < cfg.momentum_final < 1 and 0 <= begin < end,
    f"{key}.momentum_final={cfg.momentum_final!r} with momentum_ramp_epochs={list(cfg.momentum_ramp_epochs)!r}: "
    "momentum_final must be in (0, 1) and the ramp [begin, end] epochs with 0 ≤ begin < end.",
  )
  first = int(round(begin * steps_per_epoch))
  return optax.linear_schedule(
    cfg.momentum, cfg.momentum_final, max(1, int(round(end * steps_per_epoch)) - first), first
  )


class RmsState(NamedTuple):
  nu: Any  # moving average of squared gradients


def scale_by_floored_rms(decay, floor):
  """pylearn2's RMSProp (learning_rule.RMSProp, the FitNets yamls' rule): ν ← decay·ν + (1 − decay)·g²,
  update = g / max(√ν, floor), floor = 1/max_scaling (1e-5). optax's rmsprop divides by √ν + ε instead:
  the two differ where √ν is near or below the floor (early steps, rarely used weights)."""

  def init(params):
    return RmsState(jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    nu = jax.tree.map(lambda n, g: decay * n + (1.0 - decay) * jnp.square(g), state.nu, updates)
    scaled = jax.tree.map(lambda g, n: g / jnp.maximum(jnp.sqrt(n), floor), updates, nu)
    return scaled, RmsState(nu)

  return optax.GradientTransformation(init, update)


def _module_of(path):
  return tuple(getattr(k, "key", "") for k in path[:-1])


def _scaled(path, convs):
  return _module_of(path) in convs or getattr(path[-1], "key", "") == "untied_bias"


def conv_lr_scale(scale, exempt=()):
  """Multiplies the updates of every convolution (the kernel, 4-D, and its bias) by `scale`: pylearn2's
  W_lr_scale / b_lr_scale of the maxout yamls' conv layers (0.05), an untied bias included. Top-level
  keys in `exempt` (the hint regressors, which have no W_lr_scale in the authors' code) keep their rate."""

  def update(updates, state, params):
    convs = {_module_of(p) for p, leaf in jax.tree_util.tree_leaves_with_path(params) if leaf.ndim == 4}
    scaled = jax.tree_util.tree_map_with_path(
      lambda p, u: u * scale if _scaled(p, convs) and _module_of(p)[0] not in exempt else u, updates
    )
    return scaled, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def max_norm(conv, dense, logits, layers=None):
  """Max-norm constraint (maxout/FitNets): after each update, rescale every kernel column
  (one output unit's incoming weights) whose L2 norm exceeds the limit. 0 turns a limit off.
  `logits` applies to the layer named 'logits', `conv` to 4-D kernels, `dense` to other 2-D ones;
  `layers` ({top-level layer name: limit}, e.g. {"conv1": 0.9}) overrides them per layer, as the
  pylearn2 yamls set `max_kernel_norm` / `max_col_norm` per layer.
  """
  layers = dict(layers or {})

  def limit_for(path, leaf):
    names = [getattr(k, "key", "") for k in path]
    if names[-1] != "kernel":
      return 0.0
    named = next((layers[n] for n in names if n in layers), None)
    if named is not None:
      return named
    if "logits" in names:
      return logits
    return conv if leaf.ndim == 4 else dense

  def update(updates, state, params):
    def project(path, u, p):
      limit = limit_for(path, p)
      if not limit:
        return u
      new = p + u
      norms = jnp.sqrt(jnp.sum(jnp.square(new), axis=tuple(range(new.ndim - 1)), keepdims=True))
      return new * jnp.minimum(1.0, limit / jnp.maximum(norms, 1e-7)) - p

    return jax.tree_util.tree_map_with_path(project, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def base_optimizer(cfg, lr, steps_per_epoch, key):
  """The update rule `cfg.name` names, at learning rate `lr` (a schedule)."""
  if cfg.name == "rmsprop" and cfg.rms_floor:
    return optax.chain(scale_by_floored_rms(cfg.decay, cfg.rms_floor), optax.scale_by_learning_rate(lr))
  if cfg.name == "rmsprop":
    return optax.rmsprop(lr, decay=cfg.decay, eps=cfg.eps, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
  if cfg.name == "sgd" and cfg.momentum_final:
    momentum = momentum_schedule(cfg, steps_per_epoch, key)
    return optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=momentum, nesterov=cfg.nesterov)
  if cfg.name == "sgd":
    return optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
  if cfg.name == "adam":
    return optax.adam(lr, eps=cfg.eps)
  return optax.adamw(lr, eps=cfg.eps, weight_decay=cfg.weight_decay)


def optimizer(cfg, num_steps, steps_per_epoch, key, regressor_limits=None):
  """The optax transformation for a stage's trained parameters, from `stages.<name>.optimizer`.

  `regressor_limits` ({top-level parameter key: max-norm limit, 0 for none}) names the FitNets
  regressors trained beside the network: they take that limit instead of the network's, and no
  conv_lr_scale.
  """
  regressors = dict(regressor_limits or {})
  one_of(f"{key}.name", cfg.name, OPTIMIZERS)
  for field in ("weight_decay", "grad_clip_norm", "momentum", "max_norm_conv", "max_norm_dense", "max_norm_logits"):
    check(cfg[field] >= 0, f"{key}.{field}={cfg[field]!r} must be ≥ 0.")
  lr = learning_rate(cfg, num_steps, steps_per_epoch, key)
  chain = []
  if cfg.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.weight_decay and cfg.name != "adamw":
    chain.append(optax.add_decayed_weights(cfg.weight_decay))
  check(
    cfg.rms_floor >= 0 and (not cfg.rms_floor or (cfg.name == "rmsprop" and not cfg.momentum)),
    f"{key}.rms_floor={cfg.rms_floor!r}: pylearn2's floored RMSProp is for name='rmsprop' without momentum "
    f"(got name={cfg.name!r}, momentum={cfg.momentum!r}); 0 turns it off (optax's rmsprop, ε added).",
  )
  chain.append(base_optimizer(cfg, lr, steps_per_epoch, key))
  check(
    not cfg.momentum_final or cfg.name == "sgd",
    f"{key}.momentum_final={cfg.momentum_final!r}: the momentum ramp is for name='sgd' (got {cfg.name!r}).",
  )
  check(cfg.conv_lr_scale > 0, f"{key}.conv_lr_scale={cfg.conv_lr_scale!r} must be > 0.")
  if cfg.conv_lr_scale != 1.0:
    chain.append(conv_lr_scale(cfg.conv_lr_scale, exempt=tuple(regressors)))
  layers = dict(cfg.max_norm_layers)
  check(
    all(isinstance(v, (int, float)) and v >= 0 for v in layers.values()),
    f"{key}.max_norm_layers={layers!r}: each limit must be a number ≥ 0 (0: none for that layer).",
  )
  if cfg.max_norm_conv or cfg.max_norm_dense or cfg.max_norm_logits or layers or any(regressors.values()):
    chain.append(max_norm(cfg.max_norm_conv, cfg.max_norm_dense, cfg.max_norm_logits, {**layers, **regressors}))
  return optax.chain(*chain)


def partitioned(tx, labels):
  """`tx` on leaves labelled 'train', zero updates (and no state) on leaves labelled 'freeze'."""
  return optax.partition({"train": tx, "freeze": optax.set_to_zero()}, labels)


def per_network(transforms):
  """One optax transformation per top-level key of the parameters ({"net1": tx1, …}): each network
  keeps its own optimizer state and learning-rate schedule (Deep Mutual Learning's cohort)."""

  def init(params):
    return {k: tx.init(params[k]) for k, tx in transforms.items()}

  def update(updates, state, params=None):
    out = {k: tx.update(updates[k], state[k], None if params is None else params[k]) for k, tx in transforms.items()}
    return {k: u for k, (u, _) in out.items()}, {k: s for k, (_, s) in out.items()}

  return optax.GradientTransformation(init, update)

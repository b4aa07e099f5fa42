"""Optimizers per stage: schedule, base optimizer, L2, clipping, max-norm, and freezing.

Freezing uses `optax.partition` with `set_to_zero` for frozen leaves (not `optax.masked`, which
would pass raw gradients through); frozen leaves have no optimizer state.
"""

import jax
import jax.numpy as jnp
import optax

from fitnets_jax.errors import check, one_of

OPTIMIZERS = ("rmsprop", "sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "piecewise")


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
  else:
    check(cfg.decay_factor > 0, f"{key}.decay_factor={cfg.decay_factor!r} must be > 0.")
    bounds = [int(round(b * steps_per_epoch)) - warmup for b in cfg.boundaries_epochs if b > 0]
    main = optax.piecewise_constant_schedule(lr, {b: cfg.decay_factor for b in bounds if b > 0})
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def max_norm(conv, dense, logits):
  """Max-norm constraint (maxout/FitNets): after each update, rescale every kernel column
  (one output unit's incoming weights) whose L2 norm exceeds the limit. 0 turns a limit off.
  `logits` applies to the layer named 'logits', `conv` to 4-D kernels, `dense` to other 2-D ones.
  """

  def limit_for(path, leaf):
    names = [getattr(k, "key", "") for k in path]
    if names[-1] != "kernel":
      return 0.0
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


def optimizer(cfg, num_steps, steps_per_epoch, key):
  """The optax transformation for a stage's trained parameters, from `stages.<name>.optimizer`."""
  one_of(f"{key}.name", cfg.name, OPTIMIZERS)
  for field in ("weight_decay", "grad_clip_norm", "momentum", "max_norm_conv", "max_norm_dense", "max_norm_logits"):
    check(cfg[field] >= 0, f"{key}.{field}={cfg[field]!r} must be ≥ 0.")
  lr = learning_rate(cfg, num_steps, steps_per_epoch, key)
  chain = []
  if cfg.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.weight_decay and cfg.name != "adamw":
    chain.append(optax.add_decayed_weights(cfg.weight_decay))
  if cfg.name == "rmsprop":
    chain.append(optax.rmsprop(lr, decay=cfg.decay, eps=cfg.eps, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
  elif cfg.name == "sgd":
    chain.append(optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
  elif cfg.name == "adam":
    chain.append(optax.adam(lr, eps=cfg.eps))
  else:
    chain.append(optax.adamw(lr, eps=cfg.eps, weight_decay=cfg.weight_decay))
  if cfg.max_norm_conv or cfg.max_norm_dense or cfg.max_norm_logits:
    chain.append(max_norm(cfg.max_norm_conv, cfg.max_norm_dense, cfg.max_norm_logits))
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

"""`dkd`: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), one stage beside the labels.

The softened outputs split into the target class's binary split b = [p_t, 1 − p_t] and the
distribution p̂ over the non-target classes (eq. 1–2). DKD weighs the two KL terms on their own:

  L = w_ce·H(y, P_S) + min(epoch / warm-up, 1)·(α·TCKD + β·NCKD)·τ²,
  TCKD = KL(b_T ‖ b_S),  NCKD = KL(p̂_T ‖ p̂_S)  (eq. 4; each summed over classes, mean over the batch),

as the authors' code does (mdistiller's `DKD.py`, the DKD authors' repository): the probabilities
are taken at temperature τ, both terms are scaled by τ², and the warm-up factor is the 1-based epoch
over `dkd.warmup_epochs`, constant within an epoch. The code forms p̂ by subtracting 1000 from the
target's logit/τ before the softmax, which leaves the target a probability of exactly 0 in float32 and
float64; here the non-target classes are taken the same way, and log b is computed in log space
(`log p_t`, `log(1 − p_t)` from log-sum-exps), equal to the code's `log(cat_mask(softmax))` wherever
that is finite. Defaults are mdistiller's `CFG.DKD` (CE 1, α 1, β 8, τ 4, warm-up 20 epochs); its
per-pair CIFAR-100 configs change β (e.g. 2 for ResNet-56 → ResNet-20): docs/methods.md lists them.
"""

import ml_collections

from fitnets_jax.errors import check
from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

TARGET_SHIFT = 1000.0  # subtracted from the target's logit/τ to leave it out of p̂ (the authors' code)


def defaults():
  return {
    "dkd": ml_collections.ConfigDict(
      dict(
        ce_weight=1.0,  # w_ce of H(y, P_S) (mdistiller CFG.DKD.CE_WEIGHT)
        alpha=1.0,  # α of TCKD (CFG.DKD.ALPHA)
        beta=8.0,  # β of NCKD (CFG.DKD.BETA; the CIFAR-100 pair configs: 2 to 8)
        temperature=4.0,  # τ (CFG.DKD.T)
        warmup_epochs=20.0,  # the DKD term grows as epoch / warm-up, 1-based epochs (CFG.DKD.WARMUP)
      )
    )
  }


def dkd_terms(student_logits, teacher_logits, labels, temperature):
  """(TCKD, NCKD) of Zhao et al. eq. 4, each Σ over classes, mean over the batch, times τ², in float32."""
  import jax
  import jax.numpy as jnp
  from jax.scipy.special import xlogy

  zs = student_logits.astype(jnp.float32) / temperature
  zt = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature
  target = jax.nn.one_hot(labels, zs.shape[-1], dtype=bool)

  def binary_log_probs(z):  # [log p_t, log(1 − p_t)]
    total = jax.nn.logsumexp(z, axis=-1)
    at_target = jnp.sum(jnp.where(target, z, 0.0), axis=-1)
    others = jax.nn.logsumexp(jnp.where(target, -jnp.inf, z), axis=-1)
    return jnp.stack([at_target - total, others - total], axis=-1)

  log_bs, log_bt = binary_log_probs(zs), binary_log_probs(zt)
  bt = jnp.exp(log_bt)
  tckd = jnp.sum(xlogy(bt, bt) - bt * log_bs, axis=-1)
  log_ps = jax.nn.log_softmax(zs - TARGET_SHIFT * target, axis=-1)
  pt = jax.nn.softmax(zt - TARGET_SHIFT * target, axis=-1)
  nckd = jnp.sum(xlogy(pt, pt) - pt * log_ps, axis=-1)
  scale = temperature**2
  return scale * jnp.mean(tckd), scale * jnp.mean(nckd)


def dkd_stage(ctx):
  from fitnets_jax import losses, teachers
  from fitnets_jax.network import forward

  cfg = ctx.config.dkd
  check(cfg.temperature > 0, f"dkd.temperature={cfg.temperature!r} must be > 0.")
  check(cfg.warmup_epochs > 0, f"dkd.warmup_epochs={cfg.warmup_epochs!r} must be > 0 (1: no warm-up).")
  for key in ("ce_weight", "alpha", "beta"):
    check(cfg[key] >= 0, f"dkd.{key}={cfg[key]!r} must be ≥ 0.")
  student, steps_per_epoch = ctx.student, ctx.steps_per_epoch

  def loss(params, batch_stats, teaching, batch, rng, step):
    x, y = batch["image"], batch["label"]
    t_logits = teachers.logits(ctx, teaching, batch, "teacher")
    s_logits, _, stats = forward(student, params["student"], batch_stats["student"], x, True, rng)
    ce = losses.cross_entropy(s_logits, y)
    tckd, nckd = dkd_terms(s_logits, t_logits, y, cfg.temperature)
    weight = shared.epoch_warmup(step, steps_per_epoch, cfg.warmup_epochs, first_epoch=1)  # mdistiller's 1-based epochs
    total = cfg.ce_weight * ce + weight * (cfg.alpha * tckd + cfg.beta * nckd)
    metrics = {"ce": ce, "tckd": tckd, "nckd": nckd, "warmup": weight, "accuracy": losses.accuracy(s_logits, y)}
    return total, (metrics, {"student": stats})

  return ctx.student_stage("dkd", "student", loss)


METHOD = Method(name="dkd", stages=lambda ctx: [dkd_stage(ctx)], teachers="one", defaults=defaults)

"""`kd`: knowledge distillation from the teacher's softened outputs, no hint stage.

Loss (`kd.loss`): `fitnets` — H(y, P_S) + λ·H(P_T^τ, P_S^τ) with λ annealed linearly
(Romero et al. 2015, eq. 2; no τ²) — or `hinton` — α·τ²·KL(P_T^τ ‖ P_S^τ) + (1−α)·H(y, P_S)
(Hinton et al. 2015). The teacher runs in inference mode inside the step.
"""

import ml_collections

from fitnets_jax import hints, losses
from fitnets_jax.errors import check, one_of
from fitnets_jax.methods.base import (
  Method,
  forward,
  hint_captures,
  linear_anneal,
  teacher_features,
  teacher_logits,
)

KD_LOSSES = ("fitnets", "hinton")


def defaults():
  """The `kd` section, read by every method with a KD stage (kd, fitnets, multi_teacher, fsp.kd)."""
  return {
    "kd": ml_collections.ConfigDict(
      dict(
        loss="fitnets",  # fitnets: H(y,P_S) + λ·H(P_T^τ,P_S^τ) | hinton: α·τ²·KL + (1−α)·CE
        temperature=3.0,
        lambda_start=4.0,  # fitnets: λ annealed linearly start → end
        lambda_end=1.0,
        lambda_decay_begin_epochs=0.0,
        lambda_decay_epochs=-1.0,  # -1: until the end of the stage
        alpha=0.9,  # hinton only
        attention=False,  # add the attention pairs' loss (hint kind 'attention') to the KD loss
      )
    )
  }


def lambda_schedule(cfg, num_steps, steps_per_epoch):
  """λ(step) of the FitNets KD loss: `lambda_start` → `lambda_end`, linear (Romero et al. 2015, §2.2;
  the authors' released yamls: 4 → 1 from epoch 5 for CIFAR-10, 4 → 0 over epochs 5 → 150 for MNIST)."""
  check(
    cfg.lambda_start >= cfg.lambda_end >= 0,
    f"kd.lambda_start={cfg.lambda_start!r} → kd.lambda_end={cfg.lambda_end!r}: FitNets anneals λ "
    "downwards (the teacher's weight falls as the student learns), so 0 ≤ lambda_end ≤ lambda_start.",
  )
  check(
    cfg.lambda_decay_begin_epochs >= 0, f"kd.lambda_decay_begin_epochs={cfg.lambda_decay_begin_epochs!r} must be ≥ 0."
  )
  check(
    cfg.lambda_decay_epochs == -1 or cfg.lambda_decay_epochs > 0,
    f"kd.lambda_decay_epochs={cfg.lambda_decay_epochs!r} must be > 0, or -1 for 'until the stage ends'.",
  )
  begin = int(round(cfg.lambda_decay_begin_epochs * steps_per_epoch))
  length = num_steps - begin if cfg.lambda_decay_epochs < 0 else int(round(cfg.lambda_decay_epochs * steps_per_epoch))
  return linear_anneal(cfg.lambda_start, cfg.lambda_end, begin, length)


def kd_stage(ctx, name="kd"):
  """The KD stage; with several teachers the soft target is their μ-weighted average
  (`losses.soft_target`), and with `kd.attention` the attention pairs' loss (`fitnets_jax.hints`) is
  added."""
  cfg = ctx.config.kd
  one_of("kd.loss", cfg.loss, KD_LOSSES)
  check(cfg.temperature > 0, f"kd.temperature={cfg.temperature!r} must be > 0.")
  check(0.0 <= cfg.alpha <= 1.0, f"kd.alpha={cfg.alpha!r} must be in [0, 1].")
  num_steps = ctx.steps("student")
  lam = lambda_schedule(cfg, num_steps, ctx.steps_per_epoch)
  student, roles = ctx.student, list(ctx.teachers)
  pairs = []
  if cfg.attention:
    pairs = [p for p in hints.pairs(ctx.config, student, ctx.teachers) if p.kind == "attention"]
    check(
      pairs,
      "kd.attention=True adds the attention pairs' loss, but no hint pair has kind='attention'; set "
      "hint.kind=attention (or list pairs in `hints`).",
    )
  by_teacher, guided_names = hint_captures(pairs)
  options = hints.loss_options(ctx.config)

  def loss(params, batch_stats, teacher_vars, batch, rng, step):
    x, y = batch["image"], batch["label"]
    t_logits = [teacher_logits(ctx, teacher_vars, batch, r) for r in roles]
    s_logits, s_feats, stats = forward(
      student, params["student"], batch_stats["student"], x, True, rng, capture=guided_names
    )
    if cfg.loss == "fitnets":
      weight = lam(step)
      total, parts = losses.fitnets_kd_loss(s_logits, t_logits, y, weight, cfg.temperature, teacher_vars["mu"])
      parts["lambda"] = weight
    else:
      total, parts = losses.hinton_kd_loss(s_logits, t_logits, y, cfg.alpha, cfg.temperature, teacher_vars["mu"])
    if pairs:
      t_feats = teacher_features(ctx, teacher_vars, batch, by_teacher)
      parts["attention"] = sum(
        hints.pair_loss(p, t_feats[p.teacher][p.hint.name], s_feats[p.guided.name], None, options) for p in pairs
      )
      total = total + parts["attention"]
    parts["accuracy"] = losses.accuracy(s_logits, y)
    return total, (parts, {"student": stats})

  return ctx.student_stage(name, "student", loss, teacher_layers=by_teacher)


def uses_attention_pairs(config):
  return bool(config.kd.attention)


METHOD = Method(
  name="kd", stages=lambda ctx: [kd_stage(ctx)], teachers="one", defaults=defaults, uses_hint_pairs=uses_attention_pairs
)

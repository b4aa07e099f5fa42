"""`ofd`: a comprehensive overhaul of feature distillation (Heo et al., ICCV 2019), one stage beside the
labels.

At the end of every section the student's features before the ReLU pass through a connector (1×1 conv +
BN, §3.3) to the teacher's channels, and meet the teacher's features before its ReLU with the partial
L2 distance (eq. 6): the teacher's map is first raised to a per-channel margin m (its clipped value,
max(t, m)), and (s − t)² counts only where s > t or t > 0, so the student is free below a negative
teacher response. The margin is the expectation of the teacher's pre-ReLU response where it is negative
(eq. 4), from the BN before that ReLU taken as N(β, γ²): m = β − |γ|·φ(β/|γ|)/Φ(−β/|γ|) where
Φ(−β/|γ|) > 0.001, else −3|γ|. The loss is

  L = H(y, P_S) + w·Σ_i 2^−(n−1−i)·Σ_positions,channels d_p(s_i, t_i) / batch,

as the authors' CIFAR-100 code (clovaai/overhaul-distillation `distiller.py`,
`train_with_distillation.py`): w = 1/1000 (`loss_distill.sum() / batch_size / 1000`; mdistiller's
`OFD.LOSS.FEAT_WEIGHT` 0.001), the deepest section weighted 1 and each shallower one half the next;
connector kernels N(0, 2 / (k²·C_T)), BN 1 and 0, with the batch's statistics (the connectors never run
in inference mode); and the teacher also runs in training mode, its BN normalising with the batch's
statistics (`d_net.t_net.train()`; mdistiller's `OFD.train` does the same): `ofd.teacher_mode`. Levels
are each section's pre-activation (the last block's `preact`); the margin's BN is that block's `bn2`,
as RepDistiller's and mdistiller's `get_bn_before_relu`. Where the teacher's map is larger,
mdistiller average-pools it to the student's size (`adaptive_avg_pool2d`); so does this code. The
connectors train with the student and are left behind.
"""

import math

import ml_collections

from fitnets_jax.errors import check, one_of
from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

TEACHER_MODES = ("train", "inference")
MARGIN_FLOOR = 0.001  # Φ(−β/|γ|) below it: the margin is −3|γ| (the authors' get_margin_from_BN)


def defaults():
  return {
    "ofd": ml_collections.ConfigDict(
      dict(
        weight=1e-3,  # the authors' loss_distill.sum() / batch_size / 1000; mdistiller OFD.LOSS.FEAT_WEIGHT
        # The levels, shallow to deep, each a post-activation block's `preact` (its BN `bn2` gives the
        # margin); []: each section's pre-activation.
        student_layers=[],
        teacher_layers=[],
        teacher_mode="train",  # train: BN with the batch's statistics, as the authors | inference
      )
    )
  }


def margin(gamma, beta):
  """Heo et al. eq. 4 per channel: E[x | x < 0] for x ~ N(β, γ²), or −3|γ| where P(x < 0) ≤ 0.001."""
  import jax.numpy as jnp
  from jax.scipy.stats import norm

  s, m = jnp.abs(gamma.astype(jnp.float32)), beta.astype(jnp.float32)
  s_safe = jnp.where(s > 0, s, 1.0)
  below = norm.cdf(-m / s_safe)
  expected = -s * jnp.exp(-jnp.square(m / s_safe) / 2) / math.sqrt(2 * math.pi) / jnp.maximum(below, MARGIN_FLOOR) + m
  return jnp.where(below > MARGIN_FLOOR, expected, -3 * s)


def partial_l2(student, teacher, channel_margin):
  """Σ over positions and channels of (s − t')²·[s > t' or t' > 0] with t' = max(t, m), ÷ batch (eq. 6)."""
  import jax
  import jax.numpy as jnp

  s = student.astype(jnp.float32)
  t = jnp.maximum(jax.lax.stop_gradient(teacher.astype(jnp.float32)), channel_margin)
  mask = (s > t) | (t > 0)
  return jnp.sum(jnp.where(mask, jnp.square(s - t), 0.0)) / s.shape[0]


def margin_layers(net, role, levels):
  """The BN layer before each level's ReLU: a post-activation block's `bn2` (RepDistiller's and
  mdistiller's `get_bn_before_relu`)."""
  by_name = {l.name: l for l in net.layers}
  bns = []
  for name in levels:
    bn = name.rpartition("/")[0] + "/bn2"
    check(
      name.endswith("/preact") and by_name.get(bn) is not None and by_name[bn].kind == "BatchNorm",
      f"OFD's level {name!r} of {role}.model={net.name!r} is not a post-activation block's `preact` after a BN "
      "`bn2`; OFD takes the margin from the BN before the ReLU, so its levels are such blocks' pre-activations "
      "(e.g. section2/block3/preact of a resnetD; `python -m fitnets_jax.tools.layers` lists them).",
    )
    bns.append(bn)
  return bns


def levels(config, student, teacher):
  return shared.level_pairs(student, teacher, "ofd", config.ofd, "OFD")


def ofd_stage(ctx):
  import jax

  from fitnets_jax import features, losses

  cfg = ctx.config.ofd
  one_of("ofd.teacher_mode", cfg.teacher_mode, TEACHER_MODES)
  pairs = levels(ctx.config, ctx.student, ctx.teacher)
  s_levels, t_levels = [s.name for s, _ in pairs], [t.name for _, t in pairs]
  margin_layers(ctx.student, "student", s_levels)
  t_bns = margin_layers(ctx.teacher, "teacher", t_levels)
  for s, t in pairs:
    check(
      t.shape[0] % s.shape[0] == 0 and t.shape[1] % s.shape[1] == 0,
      f"OFD's teacher level {t.name!r} ({t.shape[0]}×{t.shape[1]}) cannot be average-pooled onto the student's "
      f"{s.name!r} ({s.shape[0]}×{s.shape[1]}); the teacher's map must be a whole multiple of the student's.",
    )

  def heads(rng):
    return {
      f"connector{i}": shared.connector_init(jax.random.fold_in(rng, i), s.shape[-1], t.shape[-1])
      for i, (s, t) in enumerate(pairs)
    }

  def term(s_feats, t_feats, params, teaching):
    t_feats = t_feats["teacher"]
    total, n = 0.0, len(pairs)
    for i, (s, t) in enumerate(pairs):
      source = shared.connect(params[f"connector{i}"], s_feats[s.name])
      target = losses.average_pool(t_feats[t.name], s.shape[:2])
      bn = features.layer_variables(teaching["teacher"]["params"], t_bns[i])
      total = total + partial_l2(source, target, margin(bn["scale"], bn["bias"])) / 2 ** (n - 1 - i)
    return total

  captures = (tuple(s_levels), {"teacher": tuple(t_levels)})
  train = cfg.teacher_mode == "train"
  return shared.distiller_stage(ctx, "ofd", cfg, captures, term, heads, teachers_train=train, pass_teaching=True)


METHOD = Method(name="ofd", stages=lambda ctx: [ofd_stage(ctx)], teachers="one", defaults=defaults, levels=levels)

"""`vid`: variational information distillation (Ahn et al., CVPR 2019), one stage beside the labels.

For each guided pair the student maximises a variational lower bound on the mutual information with
the teacher's map t: a Gaussian q(t | s) with mean μ(s), a small network on the student's map, and one
learned variance per teacher channel, σ²_c = log(1 + e^{α_c}) + ε (eq. 2–5). The loss is the negative
log-likelihood without its constant, mean over batch, positions and channels of
½·((μ(s) − t)²/σ² + log σ²). As RepDistiller's and mdistiller's `VID.py` (the authors' code as given to
RepDistiller): μ is 1×1 conv → ReLU → 1×1 conv → ReLU → 1×1 conv, no biases, every width the teacher's
channel count; σ² starts at 5 (α = log(e^{5 − ε} − 1)), ε = 1e-5; torch's default initialisation of
the convolutions; the larger map is average-pooled to the smaller; weight 1 (RepDistiller's `-b 1`,
mdistiller's `VID.LOSS.FEAT_WEIGHT`). The regressors and variances train with the student and are left
behind. Layers: the hint pairs (`hint` or `hints`, their `kind` not read), RepDistiller's every
section output.
"""

import math

import ml_collections

from fitnets_jax.errors import check
from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method


def defaults():
  return {
    "vid": ml_collections.ConfigDict(
      dict(
        weight=1.0,  # RepDistiller -b 1, mdistiller VID.LOSS.FEAT_WEIGHT
        init_variance=5.0,  # σ² at the start (RepDistiller init_pred_var, mdistiller VID.INIT_PRED_VAR)
        eps=1e-5,  # the variance's floor (VID.EPS)
      )
    )
  }


def regressor_init(rng, in_channels, out_channels):
  """μ's three 1×1 kernels (as (in, out) matrices), torch's default initialisation."""
  import jax

  keys = jax.random.split(rng, 3)
  widths = [(in_channels, out_channels), (out_channels, out_channels), (out_channels, out_channels)]
  return {f"conv{i + 1}": shared.torch_uniform(n)(k, (n, m)) for i, (k, (n, m)) in enumerate(zip(keys, widths))}


def vid_loss(student_map, teacher_map, params, eps):
  """mean of ½·((μ(s) − t)²/σ² + log σ²) with σ² = softplus(α) + ε, in float32."""
  import jax
  import jax.numpy as jnp

  x = student_map.astype(jnp.float32)
  x = jax.nn.relu(x @ params["conv1"])
  x = jax.nn.relu(x @ params["conv2"])
  mean = x @ params["conv3"]
  variance = jax.nn.softplus(params["log_scale"]) + eps
  target = jax.lax.stop_gradient(teacher_map.astype(jnp.float32))
  return jnp.mean(0.5 * (jnp.square(mean - target) / variance + jnp.log(variance)))


def vid_stage(ctx):
  import jax.numpy as jnp

  cfg = ctx.config.vid
  check(cfg.eps > 0, f"vid.eps={cfg.eps!r} must be > 0.")
  check(cfg.init_variance > cfg.eps, f"vid.init_variance={cfg.init_variance!r} must be > vid.eps={cfg.eps!r}.")
  alpha = math.log(math.expm1(cfg.init_variance - cfg.eps))

  def heads(rng, pair):
    channels = pair.hint.shape[-1]
    params = regressor_init(rng, pair.guided.shape[-1], channels)
    return {**params, "log_scale": jnp.full((channels,), alpha, jnp.float32)}

  return shared.map_pairs_stage(ctx, "vid", cfg, lambda s, t, params: vid_loss(s, t, params, cfg.eps), heads=heads)


METHOD = Method(
  name="vid",
  stages=lambda ctx: [vid_stage(ctx)],
  teachers="one",
  defaults=defaults,
  uses_hint_pairs=lambda config: True,
)

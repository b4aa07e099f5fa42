"""`nst`: neuron selectivity transfer (Huang & Wang, 2017), one stage beside the labels.

Each channel of a feature map is one neuron's selectivity pattern over the positions; the student
matches the distribution of its patterns to the teacher's through the squared maximum mean discrepancy
with the polynomial kernel k(x, y) = (xᵀy + c)², c = 0 (eq. 4 and 9):
MMD² = mean_ij k(t_i, t_j) + mean_ij k(s_i, s_j) − 2·mean_ij k(s_i, t_j), per example, averaged over
the batch. As the authors' MXNet code (TuSimple/neuron-selectivity-transfer `symbol/transfer.py`,
`mmd_poly`): each channel is divided by √(Σ_positions x² + 1e-10) (`L2Normalization`, mode 'spatial'),
and the weight is 50 (`kt_weight`, which RepDistiller's `-b 50` and mdistiller's
`NST.LOSS.FEAT_WEIGHT` keep). The authors leave out the teacher-only term, a constant with no
gradient; it is kept here, as RepDistiller and mdistiller do, so the logged `nst` is the MMD² itself.
Layers: the hint pairs (`hint` or `hints`, their `kind` not read) — the authors guide the last
feature map only, RepDistiller every section's output; a larger map is average-pooled to the smaller.
"""

import ml_collections

from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

NORMALIZE_EPS = 1e-10  # L2Normalization's eps, inside the square root


def defaults():
  return {
    "nst": ml_collections.ConfigDict(
      dict(
        weight=50.0,  # the authors' kt_weight (RepDistiller -b 50, mdistiller NST.LOSS.FEAT_WEIGHT)
      )
    )
  }


def mmd_poly(student_map, teacher_map):
  """MMD² between the channels' spatial patterns under k(x, y) = (xᵀy)², mean over the batch, float32."""
  import jax
  import jax.numpy as jnp

  def patterns(f):  # (b, h, w, c) → (b, c, h·w), each channel's pattern of unit norm
    f = f.astype(jnp.float32).reshape(f.shape[0], -1, f.shape[-1]).transpose(0, 2, 1)
    return f / jnp.sqrt(jnp.sum(f * f, axis=2, keepdims=True) + NORMALIZE_EPS)

  def kernel_mean(a, b):
    return jnp.mean(jnp.square(jnp.einsum("bip,bjp->bij", a, b)))

  s, t = patterns(student_map), patterns(jax.lax.stop_gradient(teacher_map))
  return kernel_mean(t, t) + kernel_mean(s, s) - 2.0 * kernel_mean(s, t)


METHOD = Method(
  name="nst",
  stages=lambda ctx: [shared.map_pairs_stage(ctx, "nst", ctx.config.nst, mmd_poly)],
  teachers="one",
  defaults=defaults,
  uses_hint_pairs=lambda config: True,
)

"""`rkd`: relational knowledge distillation (Park et al., CVPR 2019), one stage beside the labels.

The student matches the structure of the batch in the teacher's embedding space: pairwise distances
(eq. 3–4), normalised by their mean over the pairs of distinct examples, and the angles of every
triplet (eq. 5–6), cos∠(t_i, t_j, t_k) = ⟨e_ij, e_kj⟩ with e the unit difference vectors; both
compared through the Huber loss (smooth L1, δ = 1) averaged over all entries. As the authors' code
(lenscloth/RKD `metric/loss.py`, `RkdDistance` and `RKdAngle`, which RepDistiller's and mdistiller's
`RKD.py` keep): distances are √max(‖a‖² + ‖b‖² − 2⟨a, b⟩, 1e-12) with a zero diagonal, the mean is
over the positive distances, unit vectors divide by max(‖·‖, 1e-12) (`F.normalize`; the gradient is
0 at the zero difference of an example with itself, as there), and the teacher's side carries no
gradient. The embedding is the layer the classifier reads, averaged over its positions
(mdistiller's `pooled_feat`). Weights: distance 25 and angle 50, the CIFAR-100 settings of
RepDistiller and mdistiller (`RKD.DISTANCE_WEIGHT`, `RKD.ANGLE_WEIGHT`, `RKD.LOSS.FEAT_WEIGHT` 1); the
authors' metric-learning runs set theirs with `--dist_ratio` and `--angle_ratio`.
"""

import ml_collections

from fitnets_jax.errors import check
from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

PDIST_EPS = 1e-12  # the squared distance's floor (mdistiller RKD.PDIST.EPSILON)
NORMALIZE_EPS = 1e-12  # F.normalize's floor


def defaults():
  return {
    "rkd": ml_collections.ConfigDict(
      dict(
        weight=1.0,  # the RKD term's weight (mdistiller RKD.LOSS.FEAT_WEIGHT)
        distance_weight=25.0,  # λ_D (RepDistiller, mdistiller RKD.DISTANCE_WEIGHT)
        angle_weight=50.0,  # λ_A (mdistiller RKD.ANGLE_WEIGHT)
        student_layer="",  # "": the layer the classifier reads, averaged over its positions
        teacher_layer="",
      )
    )
  }


def huber(a, b):
  """torch's smooth_l1_loss (δ = 1), mean over every element."""
  import jax.numpy as jnp

  d = jnp.abs(a - b)
  return jnp.mean(jnp.where(d < 1.0, 0.5 * d * d, d - 0.5))


def distances(e):
  """Pairwise Euclidean distances with a zero diagonal, normalised by their mean over the positive ones."""
  import jax.numpy as jnp

  sq = jnp.sum(e * e, axis=1)
  d = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * e @ e.T, PDIST_EPS)) * (1.0 - jnp.eye(len(e)))
  positive = d > 0
  return d / (jnp.sum(jnp.where(positive, d, 0.0)) / jnp.sum(positive))


def angles(e):
  """⟨u_ij, u_ik⟩ for every i, j, k, u_ij the unit vector of e_j − e_i, flattened."""
  import jax.numpy as jnp

  diff = e[None, :, :] - e[:, None, :]
  unit = diff / shared.safe_norm(diff, axis=2, floor=NORMALIZE_EPS)
  return jnp.einsum("ijc,ikc->ijk", unit, unit).reshape(-1)


def rkd_terms(student_embedding, teacher_embedding):
  """(distance term, angle term) of Park et al. eq. 4 and 6 with the Huber loss, in float32."""
  import jax
  import jax.numpy as jnp

  s = student_embedding.astype(jnp.float32).reshape(len(student_embedding), -1)
  t = jax.lax.stop_gradient(teacher_embedding.astype(jnp.float32)).reshape(len(teacher_embedding), -1)
  return huber(distances(s), distances(t)), huber(angles(s), angles(t))


def rkd_stage(ctx):
  cfg = ctx.config.rkd
  for key in ("distance_weight", "angle_weight"):
    check(cfg[key] >= 0, f"rkd.{key}={cfg[key]!r} must be ≥ 0.")

  def relation(student_embedding, teacher_embedding):
    distance, angle = rkd_terms(student_embedding, teacher_embedding)
    return cfg.distance_weight * distance + cfg.angle_weight * angle

  return shared.feature_pair_stage(ctx, "rkd", cfg, relation, pool=True)


METHOD = Method(name="rkd", stages=lambda ctx: [rkd_stage(ctx)], teachers="one", defaults=defaults)

"""`pkt`: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), one stage beside the labels.

Each network's pooled embeddings give the batch a conditional distribution over neighbours from
their cosine similarities, p_{j|i} = K(i, j) / Σ_j K(i, j) with K = (cos + 1)/2 (eq. 9–10); the
student minimises KL(p_T ‖ p_S) (eq. 11). As the authors' code (passalis/probabilistic_kt, which
RepDistiller's and mdistiller's `PKT.py` reproduce): each embedding is divided by its norm + 1e-7, the
kernel matrix includes the example itself (j = i; an all-zero embedding gets gradient 0 here, NaN in
torch), and the loss is the mean over all b² entries of
p_T·log((p_T + 1e-7)/(p_S + 1e-7)) — a KL summed per row divided by b². The embedding is the layer the
classifier reads, averaged over its positions (mdistiller's `pooled_feat`); the weight is 30000
(RepDistiller's `-b 30000`, mdistiller's `PKT.LOSS.FEAT_WEIGHT`).
"""

import ml_collections

from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

EPS = 1e-7  # the authors' eps, in the norm and in the log ratio


def defaults():
  return {
    "pkt": ml_collections.ConfigDict(
      dict(
        weight=30000.0,  # (RepDistiller -b 30000, mdistiller PKT.LOSS.FEAT_WEIGHT)
        student_layer="",  # "": the layer the classifier reads, averaged over its positions
        teacher_layer="",
      )
    )
  }


def pkt_loss(student_embedding, teacher_embedding):
  """mean over b² of p_T·log((p_T + ε)/(p_S + ε)), p the row-normalised (cos + 1)/2 kernels, in float32."""
  import jax
  import jax.numpy as jnp

  def neighbours(f):
    f = f.astype(jnp.float32).reshape(len(f), -1)
    f = f / (shared.safe_norm(f, axis=1) + EPS)
    k = (f @ f.T + 1.0) / 2.0
    return k / jnp.sum(k, axis=1, keepdims=True)

  p_s, p_t = neighbours(student_embedding), neighbours(jax.lax.stop_gradient(teacher_embedding))
  return jnp.mean(p_t * jnp.log((p_t + EPS) / (p_s + EPS)))


METHOD = Method(
  name="pkt",
  stages=lambda ctx: [shared.feature_pair_stage(ctx, "pkt", ctx.config.pkt, pkt_loss, pool=True)],
  teachers="one",
  defaults=defaults,
)

"""`sp`: similarity-preserving KD (Tung & Mori, ICCV 2019), one stage beside the labels.

L = H(y, P_S) + γ·(1/b²)·‖G_T − G_S‖²_F, with G = row-normalised F·Fᵀ over the b examples of the
batch and F one layer's output flattened per example (eq. 2–4). The authors released no code; this
follows RepDistiller's `SP.py` and mdistiller's `SP.py`, which agree: the last feature map before
pooling (`feat[-2]` / `feats[-1]`, here `shared.classifier_input`), rows normalised by their L2 norm
(`F.normalize`, ε = 1e-12; its gradient is 0 at a zero row, where torch's is NaN), the squared
difference summed ÷ b², γ = 3000 (RD's `-b 3000`, MD's `SP.LOSS.FEAT_WEIGHT`). On several devices
the batch is the global batch: G spans every example, as on one device.
"""

import ml_collections

from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's floor on the row norm


def defaults():
  return {
    "sp": ml_collections.ConfigDict(
      dict(
        weight=3000.0,  # γ (RepDistiller -b 3000, mdistiller SP.LOSS.FEAT_WEIGHT)
        student_layer="",  # "": the layer the classifier reads
        teacher_layer="",
      )
    )
  }


def similarity_loss(student_features, teacher_features):
  """‖G_T − G_S‖²_F / b², G = F·Fᵀ with its rows L2-normalised (Tung & Mori eq. 2–4), in float32."""
  import jax
  import jax.numpy as jnp

  def gram(f):
    f = f.astype(jnp.float32).reshape(len(f), -1)
    g = f @ f.T
    return g / shared.safe_norm(g, axis=1, floor=NORMALIZE_EPS)

  b = len(student_features)
  diff = gram(jax.lax.stop_gradient(teacher_features)) - gram(student_features)
  return jnp.sum(diff * diff) / (b * b)


METHOD = Method(
  name="sp",
  stages=lambda ctx: [shared.feature_pair_stage(ctx, "sp", ctx.config.sp, similarity_loss)],
  teachers="one",
  defaults=defaults,
)

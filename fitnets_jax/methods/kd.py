"""`kd`: knowledge distillation from the teacher's softened outputs, no hint stage.

Loss (`kd.loss`): `fitnets` — H(y, P_S) + λ·H(P_T^τ, P_S^τ) with λ annealed linearly
(Romero et al. 2015, eq. 2; no τ²) — or `hinton` — α·τ²·KL(P_T^τ ‖ P_S^τ) + (1−α)·H(y, P_S)
(Hinton et al. 2015). The teacher runs in inference mode inside the step. The stage and its `kd`
section are shared with fitnets, fsp and multi_teacher (`fitnets_jax.methods.shared.kd_stage`).
"""

from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method


def uses_attention_pairs(config):
  return bool(config.kd.attention)


METHOD = Method(
  name="kd", stages=lambda ctx: [shared.kd_stage(ctx)], teachers="one", uses_hint_pairs=uses_attention_pairs
)

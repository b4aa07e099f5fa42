"""Relational KD (Park et al., CVPR 2019) on the embedded digits: the quick start's teacher and student,
distance and angle terms on the layer each classifier reads, at RepDistiller's weights (25, 50).

  python -m fitnets_jax.main --config configs/rkd_digits.py --workdir runs/rkd
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "rkd"
  return c

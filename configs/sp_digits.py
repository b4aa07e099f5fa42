"""Similarity-preserving KD (Tung & Mori, ICCV 2019) on the embedded digits: the quick start's
teacher and student, the relation term on the layer each classifier reads, at RepDistiller's weight.

  python -m fitnets_jax.main --config configs/sp_digits.py --workdir runs/sp
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "sp"
  return c

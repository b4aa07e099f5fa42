"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) on the embedded digits: the quick start's
teacher and student, the relation term on the layer each classifier reads, at RepDistiller's weight.

  python -m fitnets_jax.main --config configs/pkt_digits.py --workdir runs/pkt
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "pkt"
  return c

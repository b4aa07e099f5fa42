"""Correlation congruence (Peng et al., ICCV 2019) on the embedded digits: the quick start's teacher
and student, the consecutive-example correlation of the two networks' linear embeddings of the layer
each classifier reads, at RepDistiller's weight.

  python -m fitnets_jax.main --config configs/cc_digits.py --workdir runs/cc
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "cc"
  return c

"""Neuron selectivity transfer (Huang & Wang, 2017) on the embedded digits: the quick start's teacher
and student, the MMD² of the hint pair's channel patterns (the quick start's pair: teacher conv2 →
student conv5), at the authors' weight.

  python -m fitnets_jax.main --config configs/nst_digits.py --workdir runs/nst
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "nst"
  return c

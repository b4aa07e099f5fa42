"""Contrastive representation distillation (Tian et al., ICLR 2020) on the embedded digits: the quick
start's teacher and student, the two networks' embeddings of the layer each classifier reads contrasted
through memory banks of the 1,437 training examples, with the authors' τ, momentum and weight. K keeps
the authors' share of the training set (16384 of CIFAR-100's 50,000, about a third): 480 of 1,437, so
the negatives are drawn without replacement from the other classes, as theirs are.

  python -m fitnets_jax.main --config configs/crd_digits.py --workdir runs/crd
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "crd"
  c.crd.negatives = 480
  return c

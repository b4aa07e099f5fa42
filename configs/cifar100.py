"""FitNets on CIFAR-100 (Romero et al. 2015, §4.1): maxout teacher (paper: 63.54 %) → FitNet 4
(paper: 64.96 %); the CIFAR-10 recipe with 100 classes.

  python -m fitnets_jax.main --config configs/cifar100.py --workdir runs/cifar100
"""

from fitnets_jax.configs import cifar10  # the sibling config


def get_config(student="fitnet4"):
  return cifar10.get_config(student, dataset="cifar100")

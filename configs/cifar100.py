"""FitNets on CIFAR-100 (Romero et al. 2015, §4.1): maxout teacher (paper: 63.54 %) → FitNet 4
(paper: 64.96 %); the CIFAR-10 recipe with 100 classes.

  python -m fitnets_jax.main --config configs/cifar100.py --workdir runs/cifar100
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cifar10  # noqa: E402  (sibling config file)


def get_config(student="fitnet4"):
  return cifar10.get_config(student, dataset="cifar100")

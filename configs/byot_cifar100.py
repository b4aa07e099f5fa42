"""Be Your Own Teacher on CIFAR-100 (Zhang et al. 2019): ResNet-18 with four exits (paper:
67.85 / 74.57 / 78.23 / 78.64 %, baseline ≈ 77.09 %). SGD lr 0.1, momentum 0.9, weight decay
5e-4, batch 128, 250 epochs, lr divided by 10 at epochs 83, 166 and 240; random flips,
4-pixel padded crops and Cutout(16), as the authors' train.py. Its AutoAugment (CIFAR policy, on by
default there) is not in this library: results here are without it. Loss weights of the authors'
code: α = 0.3, τ = 3, λ = 0.03.

  python -m fitnets_jax.main --config configs/byot_cifar100.py --workdir runs/byot_cifar100
"""

from fitnets_jax.config import stage_config
from fitnets_jax.configs import resnet_cifar  # the sibling config: data pipeline and cadence


def get_config():
  c = resnet_cifar.get_config("cifar100")
  c.method = "byot"
  c.student.model = "resnet18"
  c.dataset.cutout = 16  # the authors' train.py: Cutout(n_holes=1, length=16)
  c.stages.student = stage_config(
    epochs=250,
    name="sgd",
    learning_rate=0.1,
    momentum=0.9,
    weight_decay=5e-4,
    schedule="piecewise",
    boundaries_epochs=[83, 166, 240],
    decay_factor=0.1,
  )
  return c

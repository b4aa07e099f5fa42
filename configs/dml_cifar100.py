"""Deep Mutual Learning on CIFAR-100 (Zhang et al. 2018, §4): two ResNet-32s (paper: 68.99 %
alone → 71.19 / 70.75 % with DML). SGD with Nesterov momentum 0.9, lr 0.1 divided by 10 every
60 epochs, 200 epochs, batch 64, random flips and 4-pixel reflect-padded crops. Weight decay
is not stated in the paper; 5e-4 is used (the usual CIFAR-100 value).

  python -m fitnets_jax.main --config configs/dml_cifar100.py --workdir runs/dml_cifar100
  # different architectures: --config.cohort='[{"model": "wrn_28_10"}, {"model": "resnet32"}]'
"""

from fitnets_jax.config import stage_config
from fitnets_jax.configs import resnet_cifar  # the sibling config: data pipeline and cadence


def get_config():
  c = resnet_cifar.get_config("cifar100")
  c.method = "dml"
  c.dataset.pad_mode = "reflect"
  c.batch_size = 64
  c.cohort = [dict(model="resnet32"), dict(model="resnet32")]
  c.stages.student = stage_config(
    epochs=200,
    name="sgd",
    learning_rate=0.1,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule="piecewise",
    boundaries_epochs=[60, 120, 180],
    decay_factor=0.1,
  )
  return c

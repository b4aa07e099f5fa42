"""FSP on CIFAR-10 (Yim et al. 2017, the 26 → 8 layer minimisation setting): ResNet-26 teacher
(paper ≈ 92 %) → ResNet-8 student. Stage `fsp`: FSP loss only, SGD momentum 0.9, weight decay
1e-4, lr 1e-3 → 1e-4 → 1e-5 at 11k / 16k iterations, 21k iterations. Stage `ce`: cross-entropy
from those weights, lr 0.1 ÷10 at 11k / 16k, 21k iterations (a third of the teacher's 64k). The
teacher follows He et al. 2016 (configs/resnet_cifar.py): SGD 0.1, ÷10 at 32k / 48k, 64k
iterations. Batch 128, flips and 4-px shifts. Weight decay is decoupled (applied to the trained
parameters by the optimizer).

  python -m fitnets_jax.main --config configs/fsp_cifar10.py --workdir runs/fsp_cifar10
"""

from fitnets_jax.configs import resnet_cifar  # the sibling config: data pipeline, cadence, SGD stages


def get_config():
  c = resnet_cifar.get_config("cifar10")
  c.method = "fsp"
  c.teacher.model = "resnet26"
  c.student.model = "resnet8"
  c.stages.teacher = resnet_cifar.sgd(64000, 0.1, (32000, 48000))
  c.stages.hint = resnet_cifar.sgd(21000, 1e-3, (11000, 16000))  # the FSP stage
  c.stages.student = resnet_cifar.sgd(21000, 0.1, (11000, 16000))
  return c

"""FSP on CIFAR-10 (Yim et al. 2017, the 26 → 8 layer minimisation setting): ResNet-26 teacher
(paper ≈ 92 %) → ResNet-8 student. Stage `fsp`: FSP loss only, SGD momentum 0.9, weight decay
1e-4, lr 1e-3 → 1e-4 → 1e-5 at 11k / 16k iterations, 21k iterations. Stage `ce`: cross-entropy
from those weights, lr 0.1 ÷10 at 11k / 16k, 21k iterations (a third of the teacher's 64k). The
teacher follows He et al. 2016: SGD 0.1, ÷10 at 32k / 48k, 64k iterations. Batch 128, flips
and 4-px shifts. Weight decay is decoupled (applied to the trained parameters by the optimizer).

  python -m fitnets_jax.main --config configs/fsp_cifar10.py --workdir runs/fsp_cifar10
"""

from fitnets_jax.config import base_config, stage_config

STEPS_PER_EPOCH = 50000 // 128


def sgd(steps, lr, boundaries):
  return stage_config(epochs=0, steps=steps, name="sgd", learning_rate=lr, momentum=0.9, weight_decay=1e-4,
                      schedule="piecewise", boundaries_epochs=[b / STEPS_PER_EPOCH for b in boundaries],
                      decay_factor=0.1)


def get_config():
  c = base_config()
  c.method = "fsp"
  c.dataset.name = "cifar10"
  c.dataset.flip = True
  c.dataset.shift = 4
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000
  c.teacher.model = "resnet26"
  c.student.model = "resnet8"
  c.stages.teacher = sgd(64000, 0.1, (32000, 48000))
  c.stages.hint = sgd(21000, 1e-3, (11000, 16000))      # the FSP stage
  c.stages.student = sgd(21000, 0.1, (11000, 16000))
  return c

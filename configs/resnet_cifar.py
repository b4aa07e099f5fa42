"""A CIFAR ResNet trained alone (He et al. 2016, §4.2): ResNet-20 on CIFAR-10, SGD lr 0.1 with
momentum 0.9 and weight decay 1e-4, divided by 10 at 32k and 48k iterations, 64k iterations,
batch 128, random flips and 4-pixel padded crops. The baseline of the ResNet distillation configs
(fsp_cifar10, dml_cifar100, byot_cifar100), which start from its data pipeline and cadence.
`resnet_cifar.py:cifar100` trains on CIFAR-100.

  python -m fitnets_jax.main --config configs/resnet_cifar.py --workdir runs/resnet20_cifar10
  python -m fitnets_jax.main --config configs/resnet_cifar.py:cifar100 --workdir runs/resnet32_c100 \
      --config.student.model=resnet32
"""

from fitnets_jax.config import base_config, stage_config

STEPS_PER_EPOCH = 50000 // 128


def sgd(steps, lr, boundaries):
  """A stage of `steps` SGD iterations (momentum 0.9, weight decay 1e-4), lr ÷10 at the iterations
  in `boundaries` (He et al.'s recipe, counted in iterations of batch 128 on 50k images)."""
  return stage_config(
    epochs=0,
    steps=steps,
    name="sgd",
    learning_rate=lr,
    momentum=0.9,
    weight_decay=1e-4,
    schedule="piecewise",
    boundaries_epochs=[b / STEPS_PER_EPOCH for b in boundaries],
    decay_factor=0.1,
  )


def get_config(dataset="cifar10"):
  c = base_config()
  c.method = "scratch"
  c.dataset.name = dataset
  c.dataset.flip = True
  c.dataset.shift = 4
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000
  c.student.model = "resnet20"
  c.stages.teacher = c.stages.student = sgd(64000, 0.1, (32000, 48000))
  return c

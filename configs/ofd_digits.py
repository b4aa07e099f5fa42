"""Overhaul of feature distillation (Heo et al., ICCV 2019) on the embedded digits: the
attention-transfer config's ResNet-20 teacher and ResNet-8 student, every section's pre-activation
distilled with the authors' margin, partial L2 and weight (1/1000), the teacher in training mode as
the authors run it.

  python -m fitnets_jax.main --config configs/ofd_digits.py --workdir runs/ofd
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "ofd"
  c.teacher.model = "digits_resnet20"
  c.student.model = "digits_resnet8"
  return c

"""Multi-teacher KD on the embedded digits: the maxout digits teacher and a digits ResNet-20, both
trained here with the quick start's teacher budget, teach the thin digits student through the
uniform average of their softened outputs (the FitNets KD loss, λ 4 → 1, τ = 3).
`--config.multi_teacher.weights=accuracy --config.dataset.validation_examples=200` weighs them
by validation accuracy instead.

  python -m fitnets_jax.main --config configs/multi_teacher_digits.py --workdir runs/multi_teacher_digits
"""

from fitnets_jax.configs import digits  # the sibling config


def get_config():
  c = digits.get_config()
  c.method = "multi_teacher"
  c.teachers = [dict(model="digits_teacher"), dict(model="digits_resnet20")]
  c.multi_teacher.weights = "uniform"
  return c

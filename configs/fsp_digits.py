"""FSP on the embedded digits: digits ResNet-20 teacher → digits ResNet-8 student (sections of
8/16/32 channels, so every FSP matrix pairs up); stage `fsp` on the FSP loss (the quick start's
hint-stage budget), then stage `ce` on cross-entropy (its KD-stage budget).

  python -m fitnets_jax.main --config configs/fsp_digits.py --workdir runs/fsp_digits
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "fsp"
  c.teacher.model = "digits_resnet20"
  c.student.model = "digits_resnet8"
  return c

"""Factor transfer (Kim et al., NeurIPS 2018) on the embedded digits: the attention-transfer config's
ResNet-20 teacher and ResNet-8 student, the paraphraser trained on the teacher's last section for the
quick start's hint budget, then the student with its translator for the student budget.

  python -m fitnets_jax.main --config configs/ft_digits.py --workdir runs/ft
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "ft"
  c.teacher.model = "digits_resnet20"
  c.student.model = "digits_resnet8"
  return c

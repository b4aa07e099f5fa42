"""KD with singular value decomposition (Lee et al., ECCV 2018) on the embedded digits: the
attention-transfer config's ResNet-20 teacher and ResNet-8 student, one pair per section output (8×8,
4×4, 2×2, equal channel counts), as RepDistiller pairs them, beside the labels with the student budget.

  python -m fitnets_jax.main --config configs/kdsvd_digits.py --workdir runs/kdsvd
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "kdsvd"
  c.teacher.model = "digits_resnet20"
  c.student.model = "digits_resnet8"
  c.hints = [dict(teacher_layer=f"section{i}", student_layer=f"section{i}") for i in (1, 2, 3)]
  return c

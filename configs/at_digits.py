"""Attention transfer on the embedded digits (Zagoruyko & Komodakis 2017): digits ResNet-20 teacher →
digits ResNet-8 student, one attention pair per section output (8×8, 4×4, 2×2), cross-entropy +
attention in one stage with the quick start's student budget. The paper's β = 1000 is for 32×32
inputs; a normalised attention map's entries scale as 1/√(h·w), so the term scales as 1/(h·w), and
β is rescaled by the input area: 1000 · (8·8)/(32·32) = 62.5.

  python -m fitnets_jax.main --config configs/at_digits.py --workdir runs/at_digits
"""

from fitnets_jax.configs import digits  # the sibling config


def get_config():
  c = digits.get_config()
  c.method = "at"
  c.teacher.model = "digits_resnet20"
  c.student.model = "digits_resnet8"
  c.attention.beta = 1000.0 * (8 * 8) / (32 * 32)
  c.hints = [dict(teacher_layer=f"section{i}", student_layer=f"section{i}", kind="attention") for i in (1, 2, 3)]
  return c

"""Activation-boundary distillation (Heo et al., AAAI 2019) on the embedded digits: the
attention-transfer config's ResNet-20 teacher and ResNet-8 student; the boundaries of every section's
pre-activation for the quick start's hint budget, then the student on the authors' KD loss alone
(τ = 3, no label term) for the student budget.

  python -m fitnets_jax.main --config configs/ab_digits.py --workdir runs/ab
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "ab"
  c.teacher.model = "digits_resnet20"
  c.student.model = "digits_resnet8"
  # The authors' train_KD: KL(p_T^τ ‖ p_S^τ) at τ = 3 without the labels (their `loss = loss_KD`); Hinton's
  # form with α = 1 is that term times τ² (docs/conventions.md).
  c.kd.loss = "hinton"
  c.kd.alpha = 1.0
  c.kd.temperature = 3.0
  return c

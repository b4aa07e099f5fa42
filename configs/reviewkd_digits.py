"""ReviewKD (Chen et al., CVPR 2021) on the embedded digits: the attention-transfer config's ResNet-20
teacher and ResNet-8 student, every section reviewed, the review term at the weight of the authors'
closest pair (reviewKD.sh: 0.6 for ResNet-56 → ResNet-20) with the warm-up scaled to this budget.

  python -m fitnets_jax.main --config configs/reviewkd_digits.py --workdir runs/reviewkd
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "reviewkd"
  c.teacher.model = "digits_resnet20"
  c.student.model = "digits_resnet8"
  c.reviewkd.weight = 0.6
  # The authors warm up over 20 of 240 epochs (1/12 of training); the digits student trains 20 epochs.
  c.reviewkd.warmup_epochs = 2.0
  return c

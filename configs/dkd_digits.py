"""Decoupled KD (Zhao et al., CVPR 2022) on the embedded digits: the quick start's teacher and student,
the DKD term at mdistiller's defaults (α 1, β 8, τ 4) with the warm-up scaled to this budget.

  python -m fitnets_jax.main --config configs/dkd_digits.py --workdir runs/dkd
  python -m fitnets_jax.main --config configs/dkd_digits.py --workdir runs/dkd_reuse \
      --config.teacher.checkpoint=runs/digits
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "dkd"
  # mdistiller warms up over 20 of 240 epochs (1/12 of training); the digits student trains 20 epochs.
  c.dkd.warmup_epochs = 2.0
  return c

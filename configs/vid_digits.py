"""Variational information distillation (Ahn et al., CVPR 2019) on the embedded digits: the quick
start's teacher and student, the Gaussian likelihood of the teacher's hint map (conv2) under the
student's guided map (conv5), at RepDistiller's weight.

  python -m fitnets_jax.main --config configs/vid_digits.py --workdir runs/vid
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "vid"
  return c

"""Be Your Own Teacher on the embedded digits: the four-section digits ResNet-18 (sections of
8/16/32/64 channels at 8×8, 4×4, 2×2, 1×1) with an exit after each section, for the quick
start's KD-stage budget (20 epochs, RMSProp 1e-3, cosine). BYOT's loss at the authors' code
defaults (α = 0.3, τ = 3, λ = 0.03).

  python -m fitnets_jax.main --config configs/byot_digits.py --workdir runs/byot_digits
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "byot"
  c.student.model = "digits_resnet18"
  return c

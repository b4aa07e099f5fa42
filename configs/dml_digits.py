"""Deep Mutual Learning on the embedded digits: a cohort of two different networks, the thin
maxout `digits_student` and the digits ResNet-8, trained together from scratch for the quick
start's KD-stage budget (20 epochs, RMSProp 1e-3, cosine), alternating updates, τ = 1.

  python -m fitnets_jax.main --config configs/dml_digits.py --workdir runs/dml_digits
"""

from fitnets_jax.configs import digits  # the sibling config: same data, batch and stage budgets


def get_config():
  c = digits.get_config()
  c.method = "dml"
  c.cohort = [dict(model="digits_student"), dict(model="digits_resnet8")]
  return c

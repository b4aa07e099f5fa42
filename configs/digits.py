"""Quick start: FitNets on scikit-learn's embedded 8×8 digits (no download), about half a minute on 2 CPU
cores (README.md: the figures, and how they vary by CPU).

  python -m fitnets_jax.main --config configs/digits.py --workdir runs/digits
  python -m fitnets_jax.main --config configs/digits.py --workdir runs/digits_kd \
      --config.method=kd --config.teacher.checkpoint=runs/digits
"""

from fitnets_jax.config import base_config, stage_config


def get_config():
  c = base_config()
  c.dataset.name = "digits"
  c.batch_size = 64
  c.eval_batch_size = 360
  c.log_every_steps = 100
  c.checkpoint_every_steps = 200
  c.teacher.model = "digits_teacher"
  c.student.model = "digits_student"
  c.hint.teacher_layer = "conv2"  # 4×4×64
  c.hint.student_layer = "conv5"  # 4×4×6, the middle of 10 convs: a 1×1 maxout regressor
  c.kd.temperature = 3.0
  c.stages.teacher = stage_config(epochs=15, name="adam", learning_rate=3e-3, schedule="cosine")
  c.stages.hint = stage_config(epochs=10, name="rmsprop", learning_rate=1e-3)
  c.stages.student = stage_config(epochs=20, name="rmsprop", learning_rate=1e-3, schedule="cosine")
  return c

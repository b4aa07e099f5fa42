"""FitNets with two hint pairs on the embedded digits, trained progressively: phase `hint1` guides
student conv3 (8×8) by teacher conv1 (8×8), phase `hint2` student conv5 (4×4) by teacher conv2
(4×4), each with its own regressor; then KD. `--config.hint.order=joint` trains both at once.

  python -m fitnets_jax.main --config configs/multi_hint_digits.py --workdir runs/multi_hint_digits
"""

from fitnets_jax.configs import digits  # the sibling config


def get_config():
  c = digits.get_config()
  c.hints = [dict(teacher_layer="conv1", student_layer="conv3"), dict(teacher_layer="conv2", student_layer="conv5")]
  c.stages.hint.epochs = 5.0  # per phase: the same 10 hint epochs in all
  return c

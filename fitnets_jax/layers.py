"""Lists every capturable layer of a config's teacher and student, with output shapes, parameters
and MACs, and the regressor the configured hint pair gets.

  python -m fitnets_jax.layers --config configs/cifar10.py
"""

import sys

import jax
import numpy as np
from absl import app, logging
from ml_collections import config_flags

from fitnets_jax import features, models
from fitnets_jax.data import load as load_data
from fitnets_jax.errors import FitnetsError
from fitnets_jax.methods.base import network

config_flags.DEFINE_config_file("config", "configs/digits.py", "Experiment config file.", lock_config=True)

_INPUT_SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1), "svhn_cropped": (32, 32, 3),
                 "cifar10": (32, 32, 3), "cifar100": (32, 32, 3)}
_CLASSES = {"cifar100": 100}


def report(config):
  """The layer tables and hint pair of `config` as text (no data is read except for npz)."""
  name = config.dataset.name
  if name in _INPUT_SHAPES:
    shape, classes = _INPUT_SHAPES[name], _CLASSES.get(name, 10)
  else:
    data = load_data(config.dataset)
    shape, classes = data.image_shape, data.num_classes
  nets = {role: network(config[role].model, models.get_model(config[role].model, classes, key=f"{role}.model"), shape)
          for role in ("teacher", "student")}
  lines = []
  for role, net in nets.items():
    lines += [f"{role}: {net.name} — {net.params:,} params, {net.macs:,} MACs per example, input {shape}",
              features.layer_table(net.layers), ""]
  hint = features.find_layer(nets["teacher"].layers, config.hint.teacher_layer, "hint.teacher_layer", nets["teacher"].name)
  guided = features.find_layer(nets["student"].layers, config.hint.student_layer, "hint.student_layer",
                               nets["student"].name)
  kernel = features.regressor_kernel(guided, hint)
  pieces = hint.pieces if hint.nonlinearity == "maxout" else 1
  reg_params = int(np.prod(kernel)) * guided.shape[-1] * hint.shape[-1] * pieces + hint.shape[-1] * pieces
  lines.append(f"hint pair: student {guided.name} {guided.shape} → regressor {kernel[0]}×{kernel[1]} conv, "
               f"{hint.nonlinearity}{f' ({hint.pieces} pieces)' if pieces > 1 else ''}, {reg_params:,} params "
               f"→ teacher {hint.name} {hint.shape}")
  return "\n".join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    print(report(app.flags.FLAGS.config))
  except FitnetsError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  jax.config.update("jax_platforms", "cpu")
  app.run(main)

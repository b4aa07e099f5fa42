"""Lists every capturable layer of a config's teachers and student (DML: every cohort network; BYOT:
the exit heads too), with output shapes, parameters and MACs, their sections, and the hint pairs
(with the regressor each regression pair gets).

  python -m fitnets_jax.tools.layers --config configs/cifar10.py
"""

import jax
import numpy as np
from absl import app, logging

from fitnets_jax import command_line, experiment, features, hints, methods
from fitnets_jax import config as config_lib
from fitnets_jax import teachers as teachers_lib
from fitnets_jax.data import image_shape_and_classes
from fitnets_jax.data import load as load_data
from fitnets_jax.errors import or_exit


def define_flags():
  """The command line's flags (defined only when run as a program, so the module imports anywhere)."""
  config_lib.define_config_flag()


def report(config):
  """The layer tables, sections and hint pairs of `config` as text (no data is read except for npz)."""
  known = image_shape_and_classes(config.dataset)
  if known:
    shape, classes = known
  else:
    data = load_data(config.dataset)
    shape, classes = data.image_shape, data.num_classes
  method = methods.get(config.method)
  build = lambda key, cfg: experiment.build_network(key, cfg, classes, shape)
  teachers = {role: build(key, cfg) for role, key, cfg, _ in teachers_lib.specs(config, method)}
  trained = {role: build(key, cfg) for role, key, cfg in experiment.trained_networks(config, method)}
  student = next(iter(trained.values()))
  lines = []
  heads = method.extra_networks(config, student, classes) if method.extra_networks else {}
  for role, net in [*teachers.items(), *trained.items(), *heads.items()]:
    lines += [
      f"{role}: {net.name} — {net.params:,} params ({net.paper_params:,} as the FitNets paper counts), "
      f"{net.macs:,} MACs per example, input {shape}",
      features.layer_table(net.layers),
    ]
    if net.sections:
      lines.append("sections (input → output): " + ", ".join(f"{a} → {b}" for a, b in net.sections))
    lines.append("")
  if method.levels is not None:
    pairs = method.levels(config, student, next(iter(teachers.values())))
    lines.append(f"{config.method} levels (student → teacher): " + ", ".join(f"{s.name} → {t.name}" for s, t in pairs))
  if method.uses_hint_pairs(config):
    for pair in hints.pairs(config, student, teachers):
      where = f"student {pair.guided.name} {pair.guided.shape}"
      target = f"{pair.teacher} {pair.hint.name} {pair.hint.shape}"
      if pair.regressor is None:
        lines.append(f"{pair.key}: attention, {where} → {target}")
        continue
      kernel, hint = pair.regressor.kernel, pair.hint
      pieces = hint.pieces if hint.nonlinearity == "maxout" else 1
      reg_params = int(np.prod(kernel)) * pair.guided.shape[-1] * hint.shape[-1] * pieces + hint.shape[-1] * pieces
      lines.append(
        f"{pair.key}: {where} → regressor {kernel[0]}×{kernel[1]} conv, {hint.nonlinearity}"
        f"{f' ({hint.pieces} pieces)' if pieces > 1 else ''}, {reg_params:,} params → {target}"
      )
  return "\n".join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  print(or_exit(lambda path: report(config_lib.from_command_line(path)), app.flags.FLAGS.config))


if __name__ == "__main__":
  define_flags()
  jax.config.update("jax_platforms", "cpu")
  command_line.start(main, __doc__, required=("config",))

"""Command line: flags → config → `train.run(config, workdir)`.

  python -m fitnets_jax.main --config configs/digits.py --workdir runs/digits [--config.key=value ...]
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fitnets_jax.errors import FitnetsError, NonFiniteLoss, Preempted

config_flags.DEFINE_config_file("config", "configs/digits.py", "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics.jsonl, summary.json and TensorBoard.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # orbax and jax log every save at INFO.
  from fitnets_jax import train
  try:
    summary = train.run(flags.FLAGS.config, flags.FLAGS.workdir)
  except FitnetsError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (Preempted, NonFiniteLoss) as e:
    print(f"{'preempted' if isinstance(e, Preempted) else 'error'}: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  workdir = flags.FLAGS.workdir
  student = summary["student"]
  for teacher in summary["teachers"]:
    weight = f", weight {teacher['weight']:.3f}" if teacher.get("weight") is not None else ""
    print(f"{teacher['role']} {teacher['model']}: test accuracy {teacher['test_accuracy']:.4f}{weight}")
  print(f"student {student['model']} ({summary['method']}): test accuracy {student['test_accuracy']:.4f}")
  for net in summary.get("cohort", []):
    print(f"{net['role']} {net['model']}: test accuracy {net['test_accuracy']:.4f}")
  for e in summary.get("exits", []):
    print(f"{e['exit']} after {e['after']} ({e['macs']:,} MACs): test accuracy {e['test_accuracy']:.4f}")
  if "ensemble_accuracy" in summary:
    agreement = f", agreement {summary['agreement']:.4f}" if "agreement" in summary else ""
    print(f"ensemble: test accuracy {summary['ensemble_accuracy']:.4f}{agreement}")
  print(f"Results in {workdir}: summary.json, metrics.jsonl, tensorboard/, checkpoints/")


if __name__ == "__main__":
  app.run(main)

"""Command line: flags → config → `train.run(config, workdir)`.

  python -m fitnets_jax.main --config configs/digits.py --workdir runs/digits [--config.key=value ...]
  python -m fitnets_jax.main --config configs/digits.py --workdir runs/digits --seeds=3   # seeds 0, 1, 2

With `--seeds=N` the run is repeated for seeds config.seed … config.seed+N−1, one after the other,
into `<workdir>/seed_<s>` (each resumable on its own). `{seed}` in a teacher checkpoint path is
replaced by the run's seed, so each seed can load its own teacher. Every seed's config is checked
before the first one starts.
"""

import copy
import sys

from absl import app, flags, logging

from fitnets_jax import config as config_lib
from fitnets_jax import files
from fitnets_jax.errors import FitnetsError, NonFiniteLoss, Preempted

def define_flags():
  """The command line's flags (defined only when run as a program, so the module imports anywhere)."""
  config_lib.define_config_flag()
  flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics.jsonl, summary.json and TensorBoard.")
  flags.DEFINE_integer("seeds", 0, "Run N seeds (config.seed, config.seed+1, …) into <workdir>/seed_<s>; 0: one run.")


def seed_runs(config, workdir, n):
  """[(config, workdir)] of `n` seeds from config.seed, with `{seed}` filled in teacher checkpoints."""
  runs = []
  for seed in range(config.seed, config.seed + n):
    c = copy.deepcopy(config)
    with c.unlocked():
      c.seed = seed
      c.teacher.checkpoint = c.teacher.checkpoint.replace("{seed}", str(seed))
      c.teachers = [dict(t, checkpoint=t["checkpoint"].replace("{seed}", str(seed))) if "checkpoint" in t else t
                    for t in c.teachers]
    runs.append((c, files.join(workdir, f"seed_{seed}")))
  return runs


def print_summary(summary, workdir):
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
  print(f"Results in {workdir}: summary.json, metrics.jsonl, tensorboard/, checkpoints/", flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # orbax and jax log every save at INFO.
  import jax
  from fitnets_jax import cluster, experiment, train
  config, workdir, seeds = flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.seeds
  try:
    if seeds < 0:
      raise FitnetsError(f"--seeds={seeds} must be ≥ 0 (0: one run with config.seed).")
    config_lib.check_types(config)
    cluster.initialize(config)   # before any device is touched: --seeds prepares every seed first
    if jax.process_index() == 0:
      print(cluster.describe(), flush=True)
    runs = seed_runs(config, workdir or "", seeds) if seeds else [(config, workdir)]
    if seeds:
      if not workdir:
        raise FitnetsError("--workdir is required: the seeds' runs go to <workdir>/seed_<s>.")
      for c, w in runs:   # every seed's bad input fails before the first seed trains
        experiment.prepare(c, w)
    for c, w in runs:
      print_summary(train.run(c, w), w)
  except FitnetsError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (Preempted, NonFiniteLoss) as e:
    print(f"{'preempted' if isinstance(e, Preempted) else 'error'}: {e}", file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  define_flags()
  app.run(main)

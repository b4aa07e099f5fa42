"""Command line: flags → config → `train.run(config, workdir)`.

  python -m fitnets_jax.main --config configs/digits.py --workdir runs/digits [--config.key=value ...]
  python -m fitnets_jax.main --config configs/digits.py --workdir runs/digits --seeds=3   # seeds 0, 1, 2

With `--seeds=N` the run is repeated for seeds config.seed … config.seed+N−1, one after the other,
into `<workdir>/seed_<s>` (each resumable on its own). `{seed}` in a teacher checkpoint path is
replaced by the run's seed, so each seed can load its own teacher. Every seed's config is checked
before the first one starts.
"""

import os
import signal
import sys

# TensorFlow serves tf.data and TensorBoard here, never Keras: without this, `import tensorflow`
# imports Keras (and with it scikit-learn and matplotlib), 3 of its 7–10 s on a 2-core CPU. A
# program that sets the variable itself, or imports TensorFlow first, keeps its choice.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def stop_during_start_up(signum, frame):
  """SIGTERM or Ctrl-C (SIGINT) outside the training loop (which saves a checkpoint first): while
  starting, or between the runs of --seeds. Nothing is lost: every finished stage is saved."""
  sys.stdout.flush()
  print(
    "preempted: stopped on SIGTERM or Ctrl-C outside the training loop (while starting, or between runs); every "
    "finished stage is saved, nothing was lost. Run the same command again to resume.",
    file=sys.stderr,
    flush=True,
  )
  # At once: an exception raised here could land in a callback that swallows it. What is on disk is
  # complete (checkpoints and config.json are written atomically), and the OS releases the workdir's lock.
  os._exit(75)  # errors.Preempted.exit_code


if __name__ == "__main__":
  signal.signal(signal.SIGTERM, stop_during_start_up)  # first: a preemption may come at any moment
  signal.signal(signal.SIGINT, stop_during_start_up)  # Ctrl-C is a stop like SIGTERM: exit 75, nothing lost

from absl import flags, logging

from fitnets_jax import command_line, files
from fitnets_jax import config as config_lib
from fitnets_jax.errors import FitnetsError, or_exit


def define_flags():
  """The command line's flags (defined only when run as a program, so the module imports anywhere)."""
  config_lib.define_config_flag()
  flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics.jsonl, summary.json and TensorBoard.")
  flags.DEFINE_integer("seeds", 0, "Run N seeds (config.seed, config.seed+1, …) into <workdir>/seed_<s>; 0: one run.")


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
  nets = [n["role"] for n in summary.get("cohort", [])] or ["student"]
  nets += [t["role"] for t in summary["teachers"] if t["checkpoint"] == files.join(files.absolute(workdir), t["role"])]
  print(
    f"Results in {workdir}: summary.json, metrics.jsonl, tensorboard/, checkpoints/; the networks in "
    f"{', '.join(f'{n}/' for n in nets)} (fitnets_jax.load_model)",
    flush=True,
  )


def run_all(config_path, workdir, seeds):
  """Checks the command line, then trains each run; FitnetsError/RunStopped go to `or_exit`."""
  if seeds < 0:
    raise FitnetsError(f"--seeds={seeds} must be ≥ 0 (0: one run with config.seed).")
  if not workdir:  # before any loading: the other checks need the config, and the config needs nothing heavy
    raise FitnetsError(
      "--workdir is required: the folder for checkpoints, metrics.jsonl and summary.json "
      f"{'(the seeds go to <workdir>/seed_<s>) ' if seeds else ''}, e.g. --workdir runs/digits."
    )
  config = config_lib.from_command_line(config_path)  # checked (config_lib.check) before JAX loads
  import jax

  from fitnets_jax import cluster, experiment, methods, teachers, train

  cluster.initialize(config)  # before any device is touched: --seeds prepares every seed first
  if jax.process_index() == 0:
    print(cluster.describe(config), flush=True)
    for key, path in teachers.shared_across_seeds(config, methods.get(config.method), seeds):
      print(
        f"note: {key}={path!r} has no {{seed}}, so all {seeds} seeds distil from this one teacher (write "
        f"{{seed}} in the path to give each seed the teacher trained with its own seed).",
        flush=True,
      )
  seed_list = range(config.seed, config.seed + seeds)
  runs = (
    [(teachers.for_seed(config, s), files.join(workdir, f"seed_{s}")) for s in seed_list]
    if seeds
    else [(config, workdir)]
  )
  prepared = [None] * len(runs)
  if seeds:  # every seed's bad input fails before the first seed trains; each is prepared once
    failure = None
    try:
      for i, (c, w) in enumerate(runs):
        same_data = i and c.dataset.to_dict() == runs[0][0].dataset.to_dict()
        prepared[i] = experiment.prepare(c, w, dataset=prepared[0].data if same_data else None)
    except FitnetsError as e:
      failure = e
    cluster.agree(failure)  # on several hosts, all go on or all stop
  for (c, w), exp in zip(runs, prepared):
    print_summary(train.run(c, w, prepared=exp), w)


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax and jax log every save at INFO.
  or_exit(run_all, flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.seeds)


if __name__ == "__main__":
  define_flags()
  command_line.start(main, __doc__, required=("config",))

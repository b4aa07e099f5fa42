"""The FitNets depth experiment (Romero et al. 2015, §4.4, Figure 3): students of growing depth at
about constant size, each trained from scratch, with KD and with FitNets, over several seeds.

  python -m fitnets_jax.tools.depth_sweep --config configs/depth_digits.py --workdir runs/depth_digits

The config is an ordinary run config (the student's own settings, the teacher, the stages) plus a
`sweep` section: `family` (`digits_thin`: students at ≈18K parameters; `digits_macs`: at ≈363K
multiplications, as the paper's §4.4 fixes them), `depths` (D of `<family>_D`), `methods`, `seeds`, and `equal_budget`
(methods without a hint stage train for the hint stage's epochs plus the student stage's, so every
student gets as many epochs). One teacher is trained, by the first run that needs it, with
`config.seed`; every other run loads it (`teacher.checkpoint`). A run goes to
`<workdir>/<method>_depth<D>/seed_<s>`, FitNets' hint is the teacher's `hint.teacher_layer` onto
the student's middle (the last conv of its first half). Finished runs are skipped, so a stopped sweep
continues where it was. At the end `fitnets_jax.tools.report` writes `<workdir>/report/` (the table and
test accuracy against depth), and `<workdir>/sweep.json` records each run's wall time, their total
and the wall time of the last invocation that trained.
"""

import copy
import json
import time

import ml_collections
from absl import flags, logging

from fitnets_jax import command_line, files
from fitnets_jax import config as config_lib
from fitnets_jax.errors import check, or_exit

SWEEP_KEYS = ("family", "depths", "methods", "seeds", "equal_budget")
METHODS = ("scratch", "kd", "fitnets")
FAMILIES = ("digits_thin", "digits_macs")


def check_sweep(config):
  """The `sweep` section, checked before anything trains."""
  from fitnets_jax import models

  check(
    "sweep" in config and set(config.sweep.keys()) == set(SWEEP_KEYS),
    f"a depth sweep's config needs a `sweep` section with the keys {', '.join(SWEEP_KEYS)}; "
    "configs/depth_digits.py shows the form.",
  )
  s = config.sweep
  check(s.family in FAMILIES, f"sweep.family={s.family!r}: choose {' or '.join(map(repr, FAMILIES))}.")
  depths = list(s.depths)
  check(
    depths and all(isinstance(d, int) and d in models.THIN_DEPTHS for d in depths) and len(set(depths)) == len(depths),
    f"sweep.depths={depths!r}: distinct weight-layer counts of {s.family}_D, each in "
    f"{models.THIN_DEPTHS.start} … {models.THIN_DEPTHS.stop - 1}.",
  )
  methods = list(s.methods)
  check(
    methods and all(m in METHODS for m in methods),
    f"sweep.methods={methods!r}: choose among {', '.join(map(repr, METHODS))}.",
  )
  check(isinstance(s.seeds, int) and s.seeds >= 1, f"sweep.seeds={s.seeds!r} must be an integer ≥ 1.")


def jobs(config, workdir):
  """[(config, workdir)] of every run, seed by seed, then depth, then method; the first run that
  needs a teacher trains it and the others load it from there."""
  check_sweep(config)
  from fitnets_jax import models

  s = config.sweep
  base = ml_collections.ConfigDict({k: v for k, v in config.to_dict().items() if k != "sweep"})
  teacher_run, runs = None, []
  for seed in range(config.seed, config.seed + s.seeds):
    for depth in s.depths:
      for method in s.methods:
        c = copy.deepcopy(base)
        c.seed, c.method, c.student.model = seed, method, f"{s.family}_{depth}"
        c.hint.student_layer = f"conv{models.thin_halves(depth)[0]}"
        if s.equal_budget and method != "fitnets":
          c.stages.student.epochs = c.stages.hint.epochs + c.stages.student.epochs
          check(
            not c.stages.hint.steps and not c.stages.student.steps,
            "sweep.equal_budget adds the hint stage's epochs to the student stage's: give both stages in "
            "epochs (stages.hint.steps = stages.student.steps = 0).",
          )
        where = files.join(workdir, f"{method}_depth{depth}", f"seed_{seed}")
        if method == "scratch":
          c.teacher.cache = False  # no teacher
        else:
          c.teacher.checkpoint = teacher_run or c.teacher.checkpoint
          teacher_run = teacher_run or c.teacher.checkpoint or where
        c.lock()
        runs.append((c, where))
  return runs


def own_teacher(config):
  """`config` training its own teacher: how a run whose teacher is not trained yet is checked."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.teacher.checkpoint = ""
  return c


def finished(workdir):
  return files.isfile(files.join(workdir, "summary.json"))


def run(config, workdir):
  """Runs every unfinished run of the sweep `config` into `workdir`, then writes the report; returns
  the report's rows. For notebooks and scripts: `run(config.load("configs/depth_digits.py"), workdir)`."""
  todo = jobs(config, workdir)
  from fitnets_jax import experiment, train
  from fitnets_jax.tools import report

  for c, w in todo:  # every run's bad input fails before the first one trains
    if not finished(w):
      experiment.prepare(c if not c.teacher.checkpoint or finished(c.teacher.checkpoint) else own_teacher(c), w)
  log_file = files.join(workdir, "sweep.json")
  log = json.loads(files.read_text(log_file)) if files.isfile(log_file) else {"runs": {}}
  start, already = time.perf_counter(), [finished(w) for _, w in todo]
  for i, (c, w) in enumerate(todo, start=1):
    if finished(w):
      continue
    print(f"[{i}/{len(todo)}] {c.method}, {c.student.model}, seed {c.seed} → {w}", flush=True)
    began = time.perf_counter()
    summary = train.run(c, w)
    log["runs"][w] = {
      "seconds": round(time.perf_counter() - began, 1),
      "test_accuracy": summary["student"]["test_accuracy"],
    }
    files.write_atomically(log_file, json.dumps(log, indent=2))
  trained = [w for _, w in todo if w in log["runs"]]
  if any(not was_finished for was_finished in already):  # a re-run that trained nothing keeps the last timing
    log["last_invocation_seconds"] = round(time.perf_counter() - start, 1)
  log["total_run_seconds"] = round(sum(log["runs"][w]["seconds"] for w in trained), 1)
  files.write_atomically(log_file, json.dumps(log, indent=2))
  rows = report.write([w for _, w in todo], files.join(workdir, "report"), curves=False)
  print(report.depth_table(rows))
  print(
    f"Report in {files.join(workdir, 'report', 'report.md')}; the runs took {log['total_run_seconds']} s "
    f"({log.get('last_invocation_seconds', 0)} s for the last invocation that trained).",
    flush=True,
  )
  return rows


def main(argv):
  logging.set_verbosity(logging.WARNING)
  or_exit(from_command_line, flags.FLAGS.config, flags.FLAGS.workdir)


def from_command_line(config_path, workdir):
  check(workdir, "--workdir is required: the folder the sweep's runs go to, e.g. --workdir runs/depth_digits.")
  return run(config_lib.from_command_line(config_path), workdir)


if __name__ == "__main__":
  config_lib.define_config_flag()
  flags.DEFINE_string("workdir", None, "Folder for the sweep's runs and its report.")
  command_line.start(main, __doc__, required=("config",))

"""The standard CIFAR-100 comparison: one teacher → student pair across methods and seeds, with the
published top-1 beside each result.

  python -m fitnets_jax.tools.compare --config configs/cifar100_pairs.py:resnet32x4-resnet8x4 \
      --workdir runs/compare_r32x4_r8x4 --config.teacher.checkpoint=teachers/resnet32x4 \
      --config.compare.methods="['scratch', 'kd', 'crd', 'dkd']" --config.compare.seeds=3

The config is a pair's run config (configs/cifar100_pairs.py) with a `compare` section: `methods` (any
registered method; `scratch` is the student alone) and `seeds` (config.seed … config.seed + seeds − 1).
Each run goes to `<workdir>/<method>/seed_<s>`; a finished run (its summary.json) is skipped and an
unfinished one resumes from its checkpoint, so a stopped comparison continues where it was. Without a
`teacher.checkpoint` the first run that needs a teacher trains it and the others load it. At the end
`<workdir>/comparison.md` and `comparison.json` give each method's final test top-1 (mean ± std over
seeds, and each seed's) beside the published figure (`PUBLISHED`: RepDistiller's README, the CRD
tables; mdistiller's README, the DKD tables). Those papers report the best test accuracy over the
240 epochs; this table reports the last.

`--synthetic=N` trains on N random images of CIFAR-100's shape instead of the dataset (a smoke test
of the whole comparison: the accuracies then mean nothing).
"""

import copy
import json
import statistics

import ml_collections
from absl import flags, logging

from fitnets_jax import command_line, files
from fitnets_jax import config as config_lib
from fitnets_jax.errors import check, or_exit
from fitnets_jax.tools.depth_sweep import finished, own_teacher

COMPARE_KEYS = ("methods", "seeds")
# Published CIFAR-100 top-1 (%), per pair: the teacher, the student alone (`scratch`) and each method.
# RepDistiller's README (CRD, Tian et al. 2020, Tables 1-2; its FitNet is one stage, hint + CE) and
# mdistiller's README (DKD, Zhao et al. 2022, Tables 1-2).
_RD_METHODS = ("kd", "fitnets", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd")


def _rd(teacher, student, *results, dkd=None):
  row = {"teacher": teacher, "scratch": student, **dict(zip([m for m in _RD_METHODS], results))}
  row = {k: v for k, v in row.items() if v is not None}
  return {**row, "dkd": dkd} if dkd else row


PUBLISHED = {
  "wrn_40_2-wrn_16_2": _rd(
    75.61, 73.26, 74.92, 73.58, 74.08, 73.83, 73.56, 74.11, 73.35, 74.54, 72.50, 73.25, 72.91, 73.68, 75.48, dkd=76.23
  ),  # noqa: E501
  "wrn_40_2-wrn_40_1": _rd(
    75.61, 71.98, 73.54, 72.24, 72.77, 72.43, 72.21, 73.30, 72.22, 73.45, 72.38, 71.59, None, 72.24, 74.14, dkd=74.81
  ),  # noqa: E501
  "resnet56-resnet20": _rd(
    72.34, 69.06, 70.66, 69.21, 70.55, 69.67, 69.63, 70.38, 69.61, 70.34, 69.47, 69.84, 69.95, 69.60, 71.16, dkd=71.97
  ),  # noqa: E501
  "resnet110-resnet32": _rd(
    74.31, 71.14, 73.08, 71.06, 72.31, 72.69, 71.48, 72.61, 71.82, 72.61, 70.98, 72.37, 71.89, 71.96, 73.48, dkd=74.11
  ),  # noqa: E501
  "resnet32x4-resnet8x4": _rd(
    79.42, 72.50, 73.33, 73.50, 73.44, 72.94, 72.97, 73.09, 71.90, 73.64, 73.17, 72.86, 72.62, 73.30, 75.51, dkd=76.32
  ),  # noqa: E501
  "vgg13-vgg8": _rd(
    74.64, 70.36, 72.98, 71.02, 71.43, 72.68, 70.71, 71.23, 71.48, 72.88, 70.94, 70.58, 70.23, 71.53, 73.94, dkd=74.68
  ),  # noqa: E501
  "vgg13-MobileNetV2": _rd(
    74.64, 64.60, 67.37, 64.14, 59.40, 66.30, 64.86, 65.56, 64.52, 67.13, 66.06, 61.78, None, 58.16, 69.73, dkd=69.71
  ),  # noqa: E501
  "ResNet50-MobileNetV2": _rd(
    79.34, 64.60, 67.35, 63.16, 58.58, 68.08, 65.43, 67.57, 64.43, 66.52, 67.20, 60.99, None, 64.96, 69.11, dkd=70.35
  ),  # noqa: E501
  "resnet32x4-ShuffleV1": _rd(
    79.42, 70.50, 74.07, 73.59, 71.73, 73.48, 71.14, 73.38, 72.28, 74.10, 73.55, 71.75, None, 74.12, 75.11, dkd=76.45
  ),  # noqa: E501
  "resnet32x4-ShuffleV2": _rd(
    79.42, 71.82, 74.45, 73.54, 72.73, 74.56, 71.29, 73.40, 73.21, 74.69, 74.31, 72.50, None, 74.68, 75.65
  ),  # noqa: E501
}


def check_compare(config):
  from fitnets_jax import methods

  check(
    "compare" in config and set(config.compare.keys()) == set(COMPARE_KEYS),
    f"a comparison's config needs a `compare` section with the keys {', '.join(COMPARE_KEYS)}; "
    "configs/cifar100_pairs.py shows the form.",
  )
  wanted = list(config.compare.methods)
  check(
    wanted and len(set(wanted)) == len(wanted) and all(m in methods.names() for m in wanted),
    f"compare.methods={wanted!r}: distinct method names among {', '.join(methods.names())}.",
  )
  seeds = config.compare.seeds
  check(isinstance(seeds, int) and seeds >= 1, f"compare.seeds={seeds!r} must be an integer ≥ 1.")


def pair_name(config):
  return f"{config.teacher.model}-{config.student.model}"


def jobs(config, workdir):
  """[(config, workdir)] of every run, seed by seed, then method; without teacher.checkpoint the first
  run that needs a teacher trains it and the others load it from there."""
  check_compare(config)
  base = ml_collections.ConfigDict({k: v for k, v in config.to_dict().items() if k != "compare"})
  teacher_run, runs = None, []
  for seed in range(config.seed, config.seed + config.compare.seeds):
    for method in config.compare.methods:
      c = copy.deepcopy(base)
      c.seed, c.method = seed, method
      where = files.join(workdir, method, f"seed_{seed}")
      if method == "scratch":
        c.teacher.cache = False
      else:
        c.teacher.checkpoint = teacher_run or c.teacher.checkpoint
        teacher_run = teacher_run or c.teacher.checkpoint or where
      c.lock()
      runs.append((c, where))
  return runs


def table(config, results):
  """The comparison's rows: method, runs, mean ± std, each seed, published."""
  published = PUBLISHED.get(pair_name(config), {})
  rows = []
  for method in config.compare.methods:
    accs = [100 * a for a in results.get(method, [])]
    rows.append(
      {
        "method": method,
        "runs": len(accs),
        "mean": round(statistics.mean(accs), 2) if accs else None,
        "std": round(statistics.stdev(accs), 2) if len(accs) > 1 else None,
        "seeds": [round(a, 2) for a in accs],
        "published": published.get(method),
      }
    )
  return rows


def markdown(config, rows, synthetic):
  published = PUBLISHED.get(pair_name(config), {})
  lines = [
    f"# CIFAR-100: {config.teacher.model} → {config.student.model}"
    + (" (synthetic data: the accuracies mean nothing)" if synthetic else ""),
    "",
    f"Teacher: published {published.get('teacher', '—')} %. Final test top-1 (%) of each run; the published "
    "figures are the best over training (RepDistiller's README for CRD's tables, mdistiller's for DKD's).",
    "",
    "| method | runs | mean ± std | seeds | published |",
    "|---|---|---|---|---|",
  ]
  for r in rows:
    spread = (
      f"{r['mean']:.2f}" + (f" ± {r['std']:.2f}" if r["std"] is not None else "") if r["mean"] is not None else "—"
    )
    seeds = ", ".join(f"{a:.2f}" for a in r["seeds"]) or "—"
    lines.append(f"| {r['method']} | {r['runs']} | {spread} | {seeds} | {r['published'] or '—'} |")
  return "\n".join(lines) + "\n"


def run(config, workdir, synthetic_examples=0):
  """Runs every unfinished run of the comparison `config` into `workdir`, then writes comparison.md
  and comparison.json; returns the rows. From Python: `run(config.load("configs/cifar100_pairs.py:…"), workdir)`."""
  from fitnets_jax import data, experiment, train

  todo = jobs(config, workdir)
  source = None
  if synthetic_examples:
    images, labels, test_images, test_labels, classes = data.synthetic_arrays(config.dataset, synthetic_examples)
    source = data.Arrays(images, labels, test_images, test_labels, num_classes=classes)
    todo = [(_arrays(c), w) for c, w in todo]
  for c, w in todo:  # every run's bad input fails before the first one trains
    if not finished(w):
      experiment.prepare(c if _teacher_ready(c.teacher.checkpoint) else own_teacher(c), w, source=source)
  results = {}
  for i, (c, w) in enumerate(todo, start=1):
    if not finished(w):
      print(f"[{i}/{len(todo)}] {c.method}, {pair_name(c)}, seed {c.seed} → {w}", flush=True)
      train.run(c, w, source)
    summary = json.loads(files.read_text(files.join(w, "summary.json")))
    results.setdefault(c.method, []).append(summary["student"]["test_accuracy"])
  rows = table(config, results)
  text = markdown(config, rows, bool(synthetic_examples))
  files.write_atomically(files.join(workdir, "comparison.md"), text)
  record = {"pair": pair_name(config), "synthetic": bool(synthetic_examples), "rows": rows}
  files.write_atomically(files.join(workdir, "comparison.json"), json.dumps(record, indent=2))
  print(text, flush=True)
  return rows


def _teacher_ready(path):
  """No teacher to load, or one already there: a finished run's workdir or a saved (imported) network."""
  return (
    not path or finished(path) or any(files.isfile(files.join(path, *p, "network.json")) for p in ((), ("teacher",)))
  )


def _arrays(config):
  c = copy.deepcopy(config)
  with c.unlocked():
    c.dataset.name = "arrays"
  return c


def main(argv):
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  or_exit(from_command_line, f.config, f.workdir, f.synthetic)


def from_command_line(config_path, workdir, synthetic=0):
  check(workdir, "--workdir is required: the folder the comparison's runs go to, e.g. --workdir runs/compare.")
  return run(config_lib.from_command_line(config_path), workdir, synthetic)


if __name__ == "__main__":
  config_lib.define_config_flag()
  flags.DEFINE_string("workdir", None, "Folder for the comparison's runs and its table.")
  flags.DEFINE_integer("synthetic", 0, "Train on this many random images of the dataset's shape (a smoke test).")
  command_line.start(main, __doc__, required=("config",))

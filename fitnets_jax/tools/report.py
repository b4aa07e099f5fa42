"""Results report from finished runs: a Table-5-style table and plots.

  python -m fitnets_jax.tools.report runs/digits_fitnets/seed_* runs/digits_kd/seed_* --out report/

Reads each run's `summary.json`, `metrics.jsonl` and `config.json`, groups the runs that differ
only by seed, and writes to `--out`:
- `report.md`: per group the method, the student, its weight layers, parameters and MACs, the test
  accuracy as mean ± std over the group's seeds (sample std; a group of one has no ± part), the
  number of runs, and the speed-up (teacher MACs ÷ student MACs) and compression (teacher params ÷
  student params) against the teacher, in the manner of the FitNets paper's Table 5 (which derives
  speed-up from multiplications too). Teachers get rows of their own; runs without a teacher
  (scratch, dml, byot) are compared with the teacher of the other runs on the same dataset;
- `curves_<run>.png` per run: train loss and train/test accuracy against the run's global step,
  one colour per stage;
- `accuracy_vs_macs.png`: every group's mean test accuracy (± std) against its MACs, teachers too;
- with `--speed=1,256`, a measured speed-up column: the saved teacher's median inference latency ÷
  the saved student's (a group's first run) at each batch size, as FitNets' Table 5 measures it;
- when the students span several depths (`fitnets_jax.tools.depth_sweep`), a table and
  `accuracy_vs_depth.png` of each method's test accuracy (mean ± std) against the weight layers, as
  the FitNets paper's Figure 3.
"""

import argparse
import json
import os
import re

import numpy as np

from fitnets_jax import files, inference, metrics, saved
from fitnets_jax.config import SAFE_TO_CHANGE, flatten
from fitnets_jax.errors import FitnetsError, check, or_exit
from fitnets_jax.tools import plots

# Keys that name a run rather than its experiment: the seed, what may change on resume, and the
# teacher checkpoint paths (each seed's run may load its own teacher).
RUN_KEYS = ("seed",) + SAFE_TO_CHANGE + ("teacher.checkpoint",)


def read_run(path):
  """{dir, name, summary, config, metrics} of one finished run; a FitnetsError names what is missing."""
  found = {}
  for name in ("summary.json", "config.json"):
    file = files.join(path, name)
    check(
      files.isfile(file),
      f"{file} does not exist: {path!r} is not a finished run (a run writes config.json "
      "when it starts and summary.json when it ends).",
    )
    try:
      found[name] = json.loads(files.read_text(file))
    except ValueError as e:
      raise FitnetsError(f"{file} is not valid JSON ({e}); pass only finished runs.") from None
  metrics_file = files.join(path, "metrics.jsonl")
  records = metrics.read_records(metrics_file) if files.isfile(metrics_file) else []
  return {
    "dir": path,
    "name": run_name(path),
    "summary": found["summary.json"],
    "config": found["config.json"],
    "metrics": records,
  }


def run_name(path):
  parts = [p for p in os.path.normpath(path).split(os.sep) if p not in ("", ".")]
  return "_".join(parts[-2:]) if parts and re.fullmatch(r"seed_?\d+", parts[-1]) else (parts[-1] if parts else "run")


def experiment_key(config):
  """The config minus RUN_KEYS (and every teacher's checkpoint path), as a hashable string."""
  flat = {k: v for k, v in flatten(config).items() if k not in RUN_KEYS}
  if isinstance(flat.get("teachers"), list):
    flat["teachers"] = [
      {k: v for k, v in t.items() if k != "checkpoint"} if isinstance(t, dict) else t for t in flat["teachers"]
    ]
  return json.dumps(flat, sort_keys=True)


def group_runs(runs):
  """[[run, …], …]: runs whose configs differ only by RUN_KEYS, in first-seen order."""
  groups = {}
  for run in runs:
    groups.setdefault(experiment_key(run["config"]), []).append(run)
  return list(groups.values())


def mean_std(values):
  """(mean, sample std or None for one value) of the non-None values; (None, None) if there are none."""
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def accuracy_text(mean, std):
  if mean is None:
    return "—"
  return f"{100 * mean:.2f} %" + (f" ± {100 * std:.2f}" if std is not None else "")


def group_row(group, reference_teacher):
  """One table row for a group of runs of one experiment."""
  first = group[0]["summary"]
  student, teacher = first["student"], first.get("teacher") or reference_teacher
  mean, std = mean_std([r["summary"]["student"].get("test_accuracy") for r in group])
  return {
    "kind": "student",
    "method": first["method"],
    "dataset": first["dataset"],
    "model": student["model"],
    "layers": student.get("layers"),
    "params": student["params"],
    "macs": student["macs"],
    "mean": mean,
    "std": std,
    "runs": len(group),
    "seeds": sorted(r["summary"]["seed"] for r in group),
    "teacher": teacher,
    "dirs": [r["dir"] for r in group],
  }


def teacher_rows(runs):
  """One row per teacher model and dataset: its accuracy over the distinct teachers (checkpoints) the runs used."""
  seen, rows = set(), {}
  for run in runs:
    summary = run["summary"]
    for t in summary.get("teachers", []):
      key = (t.get("checkpoint"), t["model"])
      if key in seen:
        continue
      seen.add(key)
      row = rows.setdefault(
        (summary["dataset"], t["model"]),
        {
          "kind": "teacher",
          "method": "teacher",
          "dataset": summary["dataset"],
          "model": t["model"],
          "layers": t.get("layers"),
          "params": t["params"],
          "macs": t["macs"],
          "accuracies": [],
          "teacher": t,
        },
      )
      row["accuracies"].append(t.get("test_accuracy"))
  for row in rows.values():
    row["mean"], row["std"] = mean_std(row.pop("accuracies"))
    row["runs"] = sum(1 for key in seen if key[1] == row["model"])
  return list(rows.values())


def rows_of(runs):
  """Teacher rows, then one row per group, each with its speed-up and compression."""
  teachers = teacher_rows(runs)
  by_dataset = {}
  for t in teachers:
    by_dataset.setdefault(t["dataset"], t["teacher"])
  rows = list(teachers)
  for group in group_runs(runs):
    rows.append(group_row(group, by_dataset.get(group[0]["summary"]["dataset"])))
  for row in rows:
    t = row["teacher"]
    row["speedup"] = t["macs"] / row["macs"] if t and row["macs"] else None
    row["compression"] = t["params"] / row["params"] if t and row["params"] else None
  return rows


def add_measured_speedups(rows, batch_sizes):
  """Times the saved networks of each row (a group's first run's student, each teacher) with
  `inference.measure` and sets `row["measured"]`: [{"batch", "speedup"}] of the teacher's median
  latency ÷ the row's, FitNets Table 5's measured speed-up. Rows whose networks were not saved get none."""
  timed = {}

  def timing(folder):
    """The saved network of `folder` (a run's student, or a network's own folder) timed once."""
    if folder not in timed:
      try:
        model = saved.load_model(folder)
      except FitnetsError:
        timed[folder] = None
      else:
        timed[folder] = inference.measure(model.network, model.variables, batch_sizes)
    return timed[folder]

  for row in rows:
    teacher = row["teacher"] and row["teacher"].get("checkpoint") and timing(row["teacher"]["checkpoint"])
    own = teacher if row["kind"] == "teacher" else timing(row["dirs"][0])
    row["measured"] = inference.speedups(teacher, own) if teacher and own else None


def _count(n):
  return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def markdown_table(rows):
  times = lambda x: f"{x:.2f}×" if x else "—"
  measured = [r["batch"] for row in rows for r in row.get("measured") or []]
  batches = list(dict.fromkeys(measured))
  extra = f" measured speed-up (batch {' / '.join(map(str, batches))}) |" if batches else ""
  lines = [
    "| method | dataset | model | layers | params | MACs | test accuracy | runs | speed-up (MACs) |"
    + extra
    + " compression |",
    "|---|---|---|---|---|---|---|---|---|" + ("---|" if batches else "") + "---|",
  ]
  for r in rows:
    layers = r["layers"] if r["layers"] is not None else "—"
    speed = " / ".join(times(m["speedup"]) for m in r.get("measured") or []) or "—"
    lines.append(
      f"| {r['method']} | {r['dataset']} | {r['model']} | {layers} | {_count(r['params'])} | "
      f"{_count(r['macs'])} | {accuracy_text(r['mean'], r['std'])} | {r['runs']} | "
      f"{times(r['speedup'])} |" + (f" {speed} |" if batches else "") + f" {times(r['compression'])} |"
    )
  return "\n".join(lines)


def by_depth(rows):
  """{layers: {method: row}} of the student rows, when they span several depths; else {}."""
  students = [r for r in rows if r["kind"] == "student" and r["layers"] is not None]
  if len({r["layers"] for r in students}) < 2:
    return {}
  table = {}
  for r in sorted(students, key=lambda r: r["layers"]):
    table.setdefault(r["layers"], {})[r["method"]] = r
  return table


def depth_table(rows):
  """Test accuracy against depth (FitNets Figure 3 as a table): a row per weight-layer count, a
  column per method (mean ± std over seeds), with the student's parameters; "" without depths."""
  table = by_depth(rows)
  if not table:
    return ""
  methods = list(dict.fromkeys(m for row in table.values() for m in row))
  lines = [
    "| layers | " + " | ".join(["model", "params", "MACs", *methods, "seeds"]) + " |",
    "|---" * (len(methods) + 5) + "|",
  ]
  for layers, row in table.items():
    first = next(iter(row.values()))
    seeds = sorted({r["runs"] for r in row.values()})
    lines.append(
      f"| {layers} | {first['model']} | {_count(first['params'])} | {_count(first['macs'])} | "
      + " | ".join(accuracy_text(row[m]["mean"], row[m]["std"]) if m in row else "—" for m in methods)
      + f" | {'/'.join(map(str, seeds))} |"
    )
  return "\n".join(lines)


# --------------------------------------------------------------------------- the report


def write(run_dirs, out, curves=True, speed_batches=()):
  """Writes report.md and the plots for `run_dirs` into `out` (with `curves`, each run's training
  curves too; with `speed_batches`, the measured speed-ups at those batch sizes); returns the rows."""
  check(run_dirs, "pass at least one run directory (a workdir holding summary.json).")
  runs = [read_run(d) for d in run_dirs]
  names = [r["name"] for r in runs]
  for i, run in enumerate(runs):  # distinct file names even for runs named alike
    if names.count(run["name"]) > 1:
      run["name"] = f"{run['name']}_{i + 1}"
  files.makedirs(out)
  rows = rows_of(runs)
  if speed_batches:
    add_measured_speedups(rows, speed_batches)
  plots.save(plots.accuracy_vs_macs(rows), files.join(out, "accuracy_vs_macs.png"))
  depth, table = [], by_depth(rows)
  if table:
    plots.save(plots.accuracy_vs_depth(table), files.join(out, "accuracy_vs_depth.png"))
    depth = [
      "## Accuracy against depth",
      "",
      "Test accuracy (mean ± sample std over seeds) of each method against the student's weight layers.",
      "",
      depth_table(rows),
      "",
      "![accuracy vs depth](accuracy_vs_depth.png)",
      "",
    ]
  curve_lines = []
  for run in runs if curves else []:
    file = f"curves_{re.sub(r'[^A-Za-z0-9_.-]', '_', run['name'])}.png"
    s = run["summary"]
    title = f"{run['name']}: {s['method']}, {s['student']['model']}, seed {s['seed']}"
    plots.save(plots.curves(run["metrics"], title), files.join(out, file))
    curve_lines.append(f"- `{run['dir']}`: ![{run['name']}]({file})")
  groups = [
    f"- {r['method']} / {r['model']}: seeds {', '.join(map(str, r['seeds']))} — "
    + ", ".join(f"`{d}`" for d in r["dirs"])
    for r in rows
    if r["kind"] == "student"
  ]
  text = "\n".join(
    [
      "# Results",
      "",
      f"{len(runs)} runs in {len(groups)} groups (runs that differ only by seed). Test accuracy is the mean ± "
      "sample std over a group's seeds. Speed-up is the teacher's MACs ÷ the student's, compression the "
      "teacher's parameters ÷ the student's. Teacher rows cover the distinct teachers the runs used."
      + (
        f" Measured speed-up: the teacher's median inference latency ÷ the network's, at batch "
        f"{' and '.join(map(str, speed_batches))} on one {inference.describe_device()} device (compilation "
        "excluded; a group's first run)."
        if speed_batches
        else ""
      ),
      "",
      markdown_table(rows),
      "",
      *depth,
      "## Groups",
      "",
      *groups,
      "",
      "## Accuracy against MACs",
      "",
      "![accuracy vs MACs](accuracy_vs_macs.png)",
      "",
      *(["## Training curves", "", *curve_lines, ""] if curves else []),
    ]
  )
  files.write_atomically(files.join(out, "report.md"), text)
  return rows


def speed_batches(text):
  try:
    batches = tuple(int(b) for b in text.split(",") if b.strip())
  except ValueError:
    batches = (0,)
  check(all(b > 0 for b in batches), f"--speed={text!r} takes positive batch sizes separated by commas, e.g. 1,256.")
  return batches


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m fitnets_jax.tools.report", description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", help="finished runs' workdirs")
  parser.add_argument("--out", default="report", help="folder for report.md and the PNGs")
  parser.add_argument("--no-curves", action="store_true", help="leave out each run's training-curve plot")
  parser.add_argument(
    "--speed",
    default="",
    help="measure inference speed-ups of the saved networks at these batch sizes, e.g. --speed=1,256",
  )
  args = parser.parse_args(argv)
  batches = or_exit(speed_batches, args.speed)
  rows = or_exit(write, args.runs, args.out, not args.no_curves, batches)
  print(markdown_table(rows))
  if by_depth(rows):
    print(depth_table(rows))
  print(f"Written to {files.join(args.out, 'report.md')}.")


if __name__ == "__main__":
  main()

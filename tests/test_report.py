"""The results report on hand-made runs, and the seeds launcher's configs."""

import json

import matplotlib.image
import pytest

from fitnets_jax import FitnetsError, teachers
from fitnets_jax.tools import plots, report

from conftest import tiny_digits

TEACHER = {"role": "teacher", "model": "big", "layers": 5, "params": 1_000_000, "macs": 40_000_000}
STUDENT = {"model": "thin", "layers": 11, "params": 100_000, "macs": 10_000_000}


def make_run(path, method, seed, accuracy, teacher_accuracy=0.99, temperature=3.0, checkpoint="", student=STUDENT):
  """A finished run's workdir: summary.json, config.json and a short metrics.jsonl."""
  path.mkdir(parents=True)
  teacher = {**TEACHER, "test_accuracy": teacher_accuracy, "checkpoint": checkpoint or f"{path}/teacher"}
  summary = {
    "method": method,
    "dataset": "digits",
    "seed": seed,
    "student": {**student, "test_accuracy": accuracy},
    "teacher": teacher if method != "scratch" else None,
    "teachers": [teacher] if method != "scratch" else [],
  }
  config = {
    "method": method,
    "seed": seed,
    "log_every_steps": 10 + seed,
    "kd": {"temperature": temperature},
    "teacher": {"model": "big", "checkpoint": checkpoint},
    "student": {"model": student["model"]},
  }
  records = [
    {"stage": "hint", "step": 4, "split": "train", "loss": 9.0, "hint": 9.0},
    {"stage": "hint", "step": 8, "split": "train", "loss": 5.0, "hint": 5.0},
    {"stage": "kd", "step": 4, "split": "train", "loss": 2.0, "accuracy": 0.5},
    {"stage": "kd", "step": 8, "split": "train", "loss": 1.0, "accuracy": 0.8},
    {"stage": "kd", "step": 8, "split": "test", "accuracy": accuracy},
  ]
  (path / "summary.json").write_text(json.dumps(summary))
  (path / "config.json").write_text(json.dumps(config))
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"stage": "kd", "st')
  return str(path)


def test_report_groups_by_config_minus_seed_with_mean_and_sample_std(tmp_path):
  runs = [
    make_run(tmp_path / "kd" / f"seed_{s}", "kd", s, acc, checkpoint=f"/teachers/seed_{s}")
    for s, acc in enumerate((0.90, 0.92, 0.94))
  ]
  runs.append(make_run(tmp_path / "kd_t5", "kd", 0, 0.80, temperature=5.0))  # another experiment
  runs.append(make_run(tmp_path / "scratch", "scratch", 0, 0.85))
  rows = report.write(runs, str(tmp_path / "out"))
  by = {(r["method"], r["runs"], r["mean"]): r for r in rows}
  teacher = next(r for r in rows if r["kind"] == "teacher")
  assert teacher["runs"] == 4 and teacher["mean"] == pytest.approx(0.99) and teacher["std"] == pytest.approx(0.0)
  kd = [r for r in rows if r["method"] == "kd"]
  assert [(r["runs"], r["seeds"]) for r in kd] == [(3, [0, 1, 2]), (1, [0])]
  assert kd[0]["mean"] == pytest.approx(0.92) and kd[0]["std"] == pytest.approx(0.02)  # ddof=1
  assert kd[1]["std"] is None
  scratch = by["scratch", 1, 0.85]
  assert scratch["speedup"] == pytest.approx(4.0) and scratch["compression"] == pytest.approx(
    10.0
  )  # the digits teacher
  text = (tmp_path / "out" / "report.md").read_text()
  assert "| kd | digits | thin | 11 | 100.0K | 10.00M | 92.00 % ± 2.00 | 3 | 4.00× | 10.00× |" in text
  assert "| kd | digits | thin | 11 | 100.0K | 10.00M | 80.00 % | 1 | 4.00× | 10.00× |" in text
  assert "| teacher | digits | big | 5 | 1.00M | 40.00M | 99.00 % ± 0.00 | 4 | 1.00× | 1.00× |" in text
  pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
  assert pngs == [
    "accuracy_vs_macs.png",
    "curves_kd_seed_0.png",
    "curves_kd_seed_1.png",
    "curves_kd_seed_2.png",
    "curves_kd_t5.png",
    "curves_scratch.png",
  ]
  for name in pngs:
    data = (tmp_path / "out" / name).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = matplotlib.image.imread(tmp_path / "out" / name)
    assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0  # something is drawn


def test_accuracy_against_depth_per_method_with_mean_and_sample_std(tmp_path):
  shallow = {"model": "thin_5", "layers": 5, "params": 18_000, "macs": 360_000}
  deep = {"model": "thin_9", "layers": 9, "params": 19_000, "macs": 420_000}
  runs = [
    make_run(tmp_path / f"{method}_{net['model']}" / f"seed_{s}", method, s, acc, student=net)
    for method, net, accuracies in [
      ("scratch", shallow, (0.95, 0.97)),
      ("fitnets", shallow, (0.96, 0.96)),
      ("scratch", deep, (0.80, 0.90)),
      ("fitnets", deep, (0.97, 0.99)),
    ]
    for s, acc in enumerate(accuracies)
  ]
  rows = report.write(runs, str(tmp_path / "out"), curves=False)
  # mean ± sample std (ddof 1) of two seeds: (0.95, 0.97) → 96.00 ± 1.41; (0.80, 0.90) → 85.00 ± 7.07
  assert report.depth_table(rows).splitlines() == [
    "| layers | model | params | MACs | scratch | fitnets | seeds |",
    "|---|---|---|---|---|---|---|",
    "| 5 | thin_5 | 18.0K | 360.0K | 96.00 % ± 1.41 | 96.00 % ± 0.00 | 2 |",
    "| 9 | thin_9 | 19.0K | 420.0K | 85.00 % ± 7.07 | 98.00 % ± 1.41 | 2 |",
  ]
  assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["accuracy_vs_depth.png", "accuracy_vs_macs.png"]
  image = matplotlib.image.imread(tmp_path / "out" / "accuracy_vs_depth.png")
  assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0
  assert report.depth_table(rows[:1]) == ""  # one depth: no depth table


def test_stage_curves_put_stages_end_to_end():
  records = [
    {"stage": "hint", "step": 4, "split": "train", "loss": 9.0},
    {"stage": "hint", "step": 8, "split": "train", "loss": 5.0},
    {"stage": "kd", "step": 4, "split": "train", "loss": 2.0, "accuracy": 0.5},
    {"stage": "kd", "step": 4, "split": "test", "accuracy": 0.6},
  ]
  curves = plots.stage_curves(records)
  assert curves["hint"]["train"] == [(4, 9.0, None), (8, 5.0, None)]
  assert curves["kd"]["train"] == [(12, 2.0, 0.5)] and curves["kd"]["test"] == [(12, 0.6)]


def test_report_names_a_run_that_is_not_finished(tmp_path):
  (tmp_path / "half").mkdir()
  (tmp_path / "half" / "config.json").write_text("{}")
  with pytest.raises(FitnetsError, match=r"summary.json does not exist: .* is not a finished run"):
    report.write([str(tmp_path / "half")], str(tmp_path / "out"))


def test_seeds_fill_in_each_seed_and_its_teacher():
  config = tiny_digits("kd", seed=5, **{"teacher.checkpoint": "runs/fitnets/seed_{seed}"})
  runs = [teachers.for_seed(config, seed) for seed in (5, 6, 7)]
  assert [(c.seed, c.teacher.checkpoint) for c in runs] == [
    (5, "runs/fitnets/seed_5"),
    (6, "runs/fitnets/seed_6"),
    (7, "runs/fitnets/seed_7"),
  ]
  assert config.seed == 5 and config.teacher.checkpoint == "runs/fitnets/seed_{seed}"  # the original is untouched

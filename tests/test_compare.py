"""The standard CIFAR-100 comparison (configs/cifar100_pairs.py, fitnets_jax.tools.compare): every
pair's config checks and builds for the methods that run on it as configured, and the comparison
command runs a pair end to end on synthetic data, resumably, with the published figures beside its
results."""

import json
import os
import re
import subprocess
import sys

import pytest

from fitnets_jax import data, experiment
from fitnets_jax.configs import cifar100_pairs
from fitnets_jax.tools import compare

from conftest import ROOT, load_config

# Methods that run on every pair as configured (docs/comparison.md, "Methods per pair"), one of each
# kind of check: fitnets (both networks, the hint's regressor, its KD stage), crd (embeddings of the
# penultimate features, the memory), reviewkd (the levels and their pre-activations).
EVERY_PAIR = ("fitnets", "crd", "reviewkd")


def synthetic(config, examples=8):
  images, labels, test_images, test_labels, classes = data.synthetic_arrays(config.dataset, examples)
  config.dataset.name = "arrays"
  return data.Arrays(images, labels, test_images, test_labels, classes)


@pytest.mark.parametrize("pair", cifar100_pairs.PAIRS)
def test_every_pair_builds_and_checks_for_the_methods_it_runs(pair, tmp_path):
  """What a run checks before it trains (its networks, hint regressor, levels, stages), per method:
  the smoke test of every pair that fits the suite's time (a training step of each pair compiles for
  30–60 s on two cores; the end-to-end test below trains one pair)."""
  for method in EVERY_PAIR:
    config = load_config("cifar100_pairs", pair)
    config.method, config.num_devices, config.batch_size = method, 1, 4
    exp = experiment.prepare(config, str(tmp_path / method), source=synthetic(config))
    assert (exp.student.name, exp.teachers["teacher"].name) == tuple(reversed(pair.split("-")))


def test_the_recipe_is_the_papers():
  for pair in cifar100_pairs.PAIRS:
    c = load_config("cifar100_pairs", pair)
    s = c.stages.student
    low = pair.split("-")[1] in ("MobileNetV2", "ShuffleV1", "ShuffleV2")
    assert (s.epochs, s.optimizer.name, s.optimizer.learning_rate) == (240, "sgd", 0.01 if low else 0.05)
    assert (s.optimizer.momentum, s.optimizer.weight_decay, list(s.optimizer.boundaries_epochs)) == (
      0.9,
      5e-4,
      [150, 180, 210],
    )
    assert (c.batch_size, c.dataset.flip, c.dataset.shift, c.dataset.preprocess) == (64, True, 4, "standardize")
    assert (list(c.dataset.mean), list(c.dataset.std)) == ([0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761])
    assert (c.kd.loss, c.kd.alpha, c.kd.temperature) == ("hinton", 0.9, 4.0)
  with pytest.raises(ValueError, match="choose one of resnet56-resnet20"):
    load_config("cifar100_pairs", "resnet8-resnet8")


def test_the_docs_publish_the_same_numbers_the_table_writer_uses():
  with open(os.path.join(ROOT, "docs", "comparison.md")) as f:
    rows = [l for l in f.read().splitlines() if l.startswith("| ") and "-" in l.split("|")[1]]
  header = ["teacher", "scratch", "kd", "fitnets", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst"]
  header += ["crd", "dkd"]
  documented = {}
  for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")]
    if cells[0] in compare.PUBLISHED:
      documented[cells[0]] = {k: float(v) for k, v in zip(header, cells[1:]) if v != "—"}
  assert documented == compare.PUBLISHED


def test_the_comparison_runs_a_pair_resumably_on_synthetic_data(tmp_path):
  workdir = tmp_path / "compare"
  command = [sys.executable, "-m", "fitnets_jax.tools.compare", "--config", "configs/cifar100_pairs.py:vgg13-vgg8"]
  command += ["--workdir", str(workdir), "--synthetic=16", "--config.num_devices=1", "--config.batch_size=8"]
  command += ["--config.eval_batch_size=8", "--config.stages.teacher.steps=1", "--config.stages.student.steps=2"]
  command += ["--config.compare.methods=['kd']", "--config.compare.seeds=1", "--config.log_every_steps=1"]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((workdir / "comparison.json").read_text())
  assert record["pair"] == "vgg13-vgg8" and record["synthetic"]
  assert [(r["method"], r["runs"], r["published"]) for r in record["rows"]] == [("kd", 1, 72.98)]
  table = (workdir / "comparison.md").read_text()
  assert "synthetic data: the accuracies mean nothing" in table and re.search(
    r"\| kd \| 1 \| [\d.]+ \| .* \| 72.98 \|", table
  )
  # kd is the first run that needs a teacher: it trained one (1 step) and saved it.
  assert (workdir / "kd" / "seed_0" / "teacher" / "network.json").is_file()
  # Run again: every run is finished, nothing trains, the same table comes back.
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and "[1/1]" in done.stdout and "[1/1]" not in again.stdout
  assert json.loads((workdir / "comparison.json").read_text()) == record


def test_the_first_run_that_needs_a_teacher_trains_it_and_the_others_load_it():
  config = load_config("cifar100_pairs", "vgg13-vgg8")
  config.compare.methods, config.compare.seeds = ["scratch", "kd", "dkd"], 2
  runs = [(c.method, c.seed, c.teacher.checkpoint, w) for c, w in compare.jobs(config, "w")]
  assert [r[:2] for r in runs] == [("scratch", 0), ("kd", 0), ("dkd", 0), ("scratch", 1), ("kd", 1), ("dkd", 1)]
  first = os.path.join("w", "kd", "seed_0")
  assert [r[2] for r in runs if r[0] != "scratch"] == ["", first, first, first]
  config.teacher.checkpoint = "teachers/vgg13"  # an imported teacher: every run loads it
  assert {c.teacher.checkpoint for c, _ in compare.jobs(config, "w") if c.method != "scratch"} == {"teachers/vgg13"}


def test_a_bad_comparison_section_is_one_paragraph():
  config = load_config("cifar100_pairs", "vgg13-vgg8")
  config.compare.methods = ["kd", "nope"]
  with pytest.raises(Exception, match=r"compare.methods=\['kd', 'nope'\]: distinct method names among"):
    compare.jobs(config, "/tmp/unused")

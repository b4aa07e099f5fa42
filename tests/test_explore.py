"""What the notebooks show, computed by the package: config files with overrides, each stage's saved
variables, hint maps, the frozen-layer check, λ, attention maps, metric series, plots (FSP matrices:
tests/test_notebooks.py, on the third notebook's FSP run)."""

import glob
import io
import os
import shutil

import jax
import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from fitnets_jax import FitnetsError, config, train
from fitnets_jax.tools import explore, plots

from conftest import ROOT, tiny_digits


@pytest.fixture(scope="module")
def fitnets_run(tmp_path_factory):
  """A tiny FitNets run that keeps only its newest checkpoint (plus every stage's last one)."""
  workdir = str(tmp_path_factory.mktemp("fitnets"))
  train.run(tiny_digits(teacher=8, hint=4, student=8, keep_checkpoints=1), workdir)
  return explore.open_run(workdir)


def png_ok(fig, tmp_path, name):
  assert isinstance(fig, Figure)
  path = plots.save(fig, str(tmp_path / f"{name}.png"))
  image = matplotlib.image.imread(path)
  assert image.shape[0] > 50 and image.shape[1] > 50 and image.std() > 0  # not a blank canvas


def test_config_files_load_with_overrides_and_refuse_unknown_keys():
  c = config.load(os.path.join(ROOT, "configs", "digits.py"), {"method": "kd", "stages.student.epochs": 3})
  assert c.method == "kd" and c.stages.student.epochs == 3 and c.dataset.name == "digits"
  assert config.load(os.path.join(ROOT, "configs", "cifar100.py:fitnet1")).student.model == "fitnet1"
  with pytest.raises(
    FitnetsError,
    match=r"'stages.studnt' is not a key .*did you mean 'student'.*valid there: hint, "
    r"student, teacher",
  ):
    config.load(os.path.join(ROOT, "configs", "digits.py"), {"stages.studnt.epochs": 3})
  with pytest.raises(FitnetsError, match=r"override batch_size='big' has the wrong type"):
    config.load(os.path.join(ROOT, "configs", "digits.py"), {"batch_size": "big"})
  with pytest.raises(FitnetsError, match=r"config file 'configs/nope.py' does not exist"):
    config.load("configs/nope.py")


def test_every_stage_keeps_its_last_checkpoint_and_its_variables_read_back(fitnets_run):
  # Stages of 8, 4 and 8 steps, a checkpoint every 4 steps, keep_checkpoints=1: the stage ends stay.
  kept = sorted(int(d) for d in os.listdir(os.path.join(fitnets_run.workdir, "checkpoints")) if d.isdigit())
  assert kept == [8, 12, 20]
  hint_end = explore.stage_variables(fitnets_run, "hint", "end")
  kd_start = explore.stage_variables(fitnets_run, "kd", "start")  # the KD stage starts from the hint stage's end
  for a, b in zip(jax.tree.leaves(hint_end["params"]["student"]), jax.tree.leaves(kd_start["params"]["student"])):
    np.testing.assert_array_equal(a, b)
  assert set(hint_end["params"]) == {"student", "regressor0"} and set(kd_start["params"]) == {"student"}
  with pytest.raises(FitnetsError, match=r"stage 'hnt' is not a stage .*teacher, hint, kd"):
    explore.stage_variables(fitnets_run, "hnt")


def test_hint_maps_are_the_regressed_guided_maps_and_their_loss(fitnets_run):
  images = explore.test_batch(fitnets_run, 8)["image"]
  maps, loss = explore.hint_maps(fitnets_run, images)
  hint, before, after = maps.values()
  assert hint.shape == before.shape == after.shape == (8, 4, 4, 64)
  # The run's hint loss (hint.reduction: the authors' HintCost): ½(u_h − r(v_g))² summed over the rows,
  # averaged over the examples, columns and channels, in NumPy.
  for label, regressed in (("before", before), ("after", after)):
    want = np.mean(0.5 * np.sum((np.float64(hint) - regressed) ** 2, axis=1))
    assert loss[label] == pytest.approx(want, rel=1e-4)
  assert loss["after"] < loss["before"]  # 4 hint steps already pull the regressed map towards the hint


def test_frozen_check_finds_the_hint_stage_trained_only_up_to_the_guided_layer(fitnets_run):
  rows = explore.frozen_check(fitnets_run, "hint")
  trained = {r["variable"].split("/")[2] for r in rows if r["trained"] and "student" in r["variable"]}
  assert trained == {"conv1", "conv2", "conv3", "conv4", "conv5"}  # the guided layer is conv5
  assert all(r["max_change"] == 0.0 for r in rows if not r["trained"])
  assert all(r["max_change"] > 0.0 for r in rows if r["trained"])
  assert [r["variable"] for r in rows][-2:] == ["params/regressor0/conv/bias", "params/regressor0/conv/kernel"]


def test_lambda_schedule_and_series(fitnets_run, tmp_path):
  steps, lam = explore.lambda_schedule(fitnets_run)
  np.testing.assert_allclose(lam, 4.0 - 3.0 * np.arange(8) / 8, rtol=1e-6)  # 4 → 1 over the 8 KD steps
  logged = explore.series(fitnets_run, "lambda", split="train", stage="kd")
  assert [s for s, _ in logged] == [4, 8]
  assert logged[0][1] == pytest.approx(np.mean(lam[:4]), rel=1e-6)  # the mean over each interval
  loss = explore.series(fitnets_run, "loss", split="train")
  assert [s for s, _ in loss] == [4, 8, 12, 16, 20]  # global steps across the stages
  png_ok(plots.lines({"λ": list(zip(steps, lam)), "logged": logged}), tmp_path, "lines")
  png_ok(plots.curves(fitnets_run.metrics, "run"), tmp_path, "curves")


def test_attention_maps(fitnets_run, tmp_path):
  """Attention transfer from the FitNets run's teacher: conv2 (4×4) → the student's conv2 (8×8)."""
  at_dir = str(tmp_path / "at")
  train.run(
    tiny_digits(
      "at",
      student=4,
      **{"hint.kind": "attention", "hint.student_layer": "conv2", "teacher.checkpoint": fitnets_run.workdir},
    ),
    at_dir,
  )
  at_run = explore.open_run(at_dir)
  images = explore.test_batch(at_run, 4)["image"]
  maps, names = explore.attention_maps(at_run, images, example=3)
  assert names == ["teacher.conv2→conv2"]
  assert [m.shape for m in maps["teacher"]] == [(4, 4)] and [m.shape for m in maps["student"]] == [(8, 8)]
  feats = explore.features(at_run.experiment.student, explore.student_variables(at_run), images[3:4], ["conv2"])
  q = np.mean(np.float64(feats["conv2"][0]) ** 2, axis=-1)  # Q = mean_c A² / ‖·‖₂ (eq. 2), in NumPy
  np.testing.assert_allclose(maps["student"][0], q / np.linalg.norm(q), rtol=1e-5, atol=1e-7)
  for m in maps["teacher"] + maps["student"]:
    assert np.all(m >= 0) and np.sqrt(np.sum(m**2)) == pytest.approx(1.0, rel=1e-5)
  png_ok(plots.image_rows(maps, labels=["conv2"]), tmp_path, "attention")


def test_the_other_plots_draw_valid_pngs(tmp_path):
  png_ok(plots.accuracy_bars({"teacher": 0.99, "scratch": 0.95, "KD": 0.96, "FitNets": 0.97}), tmp_path, "bars")
  maps = {"teacher": np.random.default_rng(0).normal(size=(4, 4, 8)), "student": np.zeros((4, 4, 8))}
  png_ok(plots.feature_grid(maps, channels=4), tmp_path, "grid")
  png_ok(
    plots.heatmaps({"teacher": [np.eye(4), np.ones((4, 8))], "student": [np.zeros((4, 4)), np.ones((4, 8))]}),
    tmp_path,
    "heatmaps",
  )
  exits = [
    {"exit": f"exit{i}", "after": f"section{i}", "macs": 1000 * i, "test_accuracy": 0.8 + 0.05 * i} for i in (1, 2, 3)
  ]
  png_ok(plots.exits(exits, ensemble=0.97), tmp_path, "exits")
  buffer = io.BytesIO()
  plots.accuracy_bars({"a": 0.5}).savefig(buffer, format="png")
  assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_checkpoint_changed_on_disk_is_refused_not_read(fitnets_run, tmp_path):
  # explore reads a stage's checkpoint through its digest, as a resume does: 533 changed values and a few
  # NaNs must not be shown as the stage's weights.
  from fitnets_jax import checkpoint, train_step

  run = fitnets_run
  exp, index = run.experiment, run.stage_index("hint")
  st, rng, _, tx = train_step.stage_setup(exp, index)
  step = train_step.stage_offsets(exp.stages)[index + 1]
  copy = str(tmp_path / "copy")
  shutil.copytree(run.workdir, copy)
  data_file = max(glob.glob(f"{copy}/checkpoints/{step}/state/**/d/*", recursive=True), key=os.path.getsize)
  with open(data_file, "r+b") as f:
    f.seek(os.path.getsize(data_file) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))
  abstract = train_step.abstract_state(st, tx, rng, exp.mesh)
  checkpoint.read_state(run.workdir, step, abstract)  # the original reads
  with pytest.raises(FitnetsError, match=r"differs from the one that was saved .*SHA-256|cannot be read"):
    checkpoint.read_state(copy, step, abstract)

"""Bad input: a FitnetsError naming the key or file and what is valid, before any training step,
with nothing written to the workdir; and the command line prints it without a traceback."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_digits
from fitnets_jax import FitnetsError, experiment, train


def bad_npz(tmp_path):
  path = tmp_path / "bad.npz"
  np.savez(path, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.zeros(4, int),
           test_images=np.zeros((2, 8, 8), np.uint8), test_labels=np.zeros(2, int))
  return str(path)


CASES = [
    ({"hint.student_layer": "conv99"}, r"hint.student_layer='conv99' is not a layer of model 'digits_student'.*Valid names"),
    ({"hint.teacher_layer": "fc/dens"}, r"hint.teacher_layer='fc/dens' is not a layer of model 'digits_teacher'"),
    ({"hint.student_layer": "conv10"}, r"hint.student_layer='conv10' gives a 2×2 map, smaller than the 4×4 map"),
    ({"hint.student_layer": "fc"}, r"needs two feature maps"),
    ({"teacher.checkpoint": "/nonexistent/run"}, r"teacher.checkpoint='/nonexistent/run' holds no saved teacher"),
    ({"dataset.name": "imagenet"}, r"dataset.name='imagenet' is not valid; choose one of"),
    ({"dataset.name": "npz", "dataset.path": "BAD_NPZ"}, r"train_images in .* must be NHWC"),
    ({"dataset.name": "npz", "dataset.path": ""}, r"dataset.name='npz' needs dataset.path"),
    ({"method": "distill"}, r"method='distill' is not valid; choose one of: 'fitnets', 'kd', 'scratch'"),
    ({"student.model": "resnet9000"}, r"student.model='resnet9000' is not a known model"),
    ({"teacher.dropout": 1.5}, r"teacher.dropout=1.5 must be in \[0, 1\)"),
    ({"batch_size": 30, "num_devices": 4}, r"batch_size=30 is not divisible by the 4 devices"),
    ({"num_devices": 64}, r"num_devices=64 but JAX sees only 4 device"),
    ({"batch_size": 0}, r"batch_size=0 must be a positive integer"),
    ({"batch_size": 5000}, r"batch_size=5000 is larger than the 1437 training examples"),
    ({"stages.hint.steps": 0, "stages.hint.epochs": 0.0}, r"stages.hint would run 0 steps"),
    ({"stages.student.steps": -3}, r"stages.student: steps=-3"),
    ({"stages.student.optimizer.learning_rate": 0.0}, r"stages.student.optimizer.learning_rate=0.0 must be > 0"),
    ({"stages.teacher.optimizer.name": "lion"}, r"stages.teacher.optimizer.name='lion' is not valid"),
    ({"kd.lambda_start": 1.0, "kd.lambda_end": 4.0}, r"kd.lambda_start=1.0 → kd.lambda_end=4.0.*anneals λ downwards"),
    ({"kd.temperature": 0.0}, r"kd.temperature=0.0 must be > 0"),
    ({"kd.loss": "mse"}, r"kd.loss='mse' is not valid; choose one of: 'fitnets', 'hinton'"),
    ({"dataset.preprocess": "pca"}, r"dataset.preprocess='pca' is not valid"),
    ({"on_nan": "ignore"}, r"on_nan='ignore' is not valid; choose one of: 'stop', 'skip_step'"),
]


@pytest.mark.parametrize("overrides,message", CASES, ids=[next(iter(c[0])) + "=" + str(next(iter(c[0].values())))
                                                         for c in CASES])
def test_bad_config_is_a_clear_error_before_anything_is_written(overrides, message, tmp_path):
  overrides = {k: bad_npz(tmp_path) if v == "BAD_NPZ" else v for k, v in overrides.items()}
  workdir = tmp_path / "run"
  with pytest.raises(FitnetsError, match=message) as info:
    experiment.prepare(tiny_digits(**overrides), str(workdir))
  assert "\n" not in str(info.value).strip()        # one paragraph
  assert not workdir.exists()                        # nothing written


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(FitnetsError, match="--workdir=.* cannot be created"):
    experiment.prepare(tiny_digits(), str(blocker / "run"))


def test_teacher_checkpoint_of_another_architecture(tmp_path):
  teacher_run = str(tmp_path / "teacher")
  train.run(tiny_digits("kd", teacher=2, student=2), teacher_run)
  with pytest.raises(FitnetsError, match=r"holds a 'digits_teacher' teacher but teacher.model='digits_student'"):
    experiment.prepare(tiny_digits("kd", **{"teacher.checkpoint": teacher_run, "teacher.model": "digits_student"}),
                       str(tmp_path / "x"))
  # Same architecture name, other class count: the first mismatched parameter is named with both shapes.
  npz = tmp_path / "three.npz"
  rng = np.random.default_rng(0)
  np.savez(npz, train_images=rng.integers(0, 255, (64, 8, 8, 1), dtype=np.uint8), train_labels=np.arange(64) % 3,
           test_images=rng.integers(0, 255, (8, 8, 8, 1), dtype=np.uint8), test_labels=np.arange(8) % 3)
  with pytest.raises(FitnetsError, match=r"parameter \['params'\]\['logits'\]\['bias'\] has shape \(10,\) in the "
                                         r"checkpoint but \(3,\) in the model"):
    experiment.prepare(tiny_digits(**{"teacher.checkpoint": teacher_run, "dataset.name": "npz",
                                      "dataset.path": str(npz), "eval_batch_size": 8}), str(tmp_path / "y"))


def test_a_workdir_of_another_method_refuses_to_resume(tmp_path):
  workdir = str(tmp_path / "run")
  train.run(tiny_digits("scratch", student=4), workdir)
  before = sorted(os.listdir(workdir))
  with pytest.raises(FitnetsError, match=r"holds a run with stages \['scratch'\], but this config runs"):
    train.run(tiny_digits("kd", teacher=2, student=2), workdir)
  assert sorted(os.listdir(workdir)) == before


def run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "fitnets_jax.main", "--config", "configs/digits.py", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cli_prints_one_error_paragraph_and_exits_2(tmp_path):
  result = run_cli("--workdir", str(tmp_path / "w"), "--config.hint.student_layer=conv99")
  assert result.returncode == 2
  assert "error: hint.student_layer='conv99' is not a layer" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()


def test_cli_config_typo_suggests_the_key(tmp_path):
  result = run_cli("--workdir", str(tmp_path / "w"), "--config.hint.studnet_layer=conv3")
  assert result.returncode != 0
  assert "student_layer" in result.stderr   # ml_collections: "Did you mean ..."

"""End to end: 1 vs 2 vs 4 devices, resume, determinism, NaN handling, and every paper config (the quick
start itself runs in tests/test_notebooks.py, through the first notebook)."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from fitnets_jax import saved, train

from conftest import ROOT, load_config, tiny_digits
from helpers import assert_same_numbers, final_state, lower_every_stage, read_metrics, without_timing


def test_one_two_and_four_devices_give_the_same_numbers(tmp_path):
  """Teacher, hint and KD stages on 1, 2 and 4 devices (batch and BatchNorm statistics sharded)."""
  runs = {}
  for n in (1, 2, 4):
    train.run(
      tiny_digits(teacher=12, hint=4, student=8, num_devices=n, log_every_steps=1, **{"dataset.flip": True}),
      str(tmp_path / f"d{n}"),
    )
    runs[n] = read_metrics(str(tmp_path / f"d{n}"))
  for n in (2, 4):
    assert_same_numbers(runs[1], runs[n])


def test_resume_reaches_the_same_parameters_as_an_uninterrupted_run(tmp_path):
  """Runs once without a stop; then, for stops inside each stage, rolls a copy back to the checkpoint
  taken there (as a killed run would leave it) and restarts it on the same workdir."""
  config = lambda: tiny_digits(**{"dataset.shift": 1})
  full = str(tmp_path / "full")
  expected = train.run(config(), full)
  step, want = final_state(full)
  for stop in (12, 28, 40):  # global steps inside teacher (24), hint (8) and KD (16)
    work = str(tmp_path / f"stop{stop}")
    shutil.copytree(full, work)
    for d in os.listdir(os.path.join(work, "checkpoints")):
      if d.isdigit() and int(d) > stop:
        shutil.rmtree(os.path.join(work, "checkpoints", d))
    if stop < 24:
      shutil.rmtree(os.path.join(work, "teacher"))  # not written until the teacher stage ends
    os.remove(os.path.join(work, "summary.json"))
    resumed = train.run(config(), work)
    got_step, got = final_state(work)
    assert got_step == step
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      np.testing.assert_array_equal(a, b)
    assert resumed["student"]["test_accuracy"] == expected["student"]["test_accuracy"]
    assert without_timing(read_metrics(work)) == without_timing(read_metrics(full))


def test_same_seed_gives_identical_metrics(tmp_path, capsys):
  config = tiny_digits(teacher=8, hint=4, student=8)
  a = train.run(config, str(tmp_path / "a"))
  out = capsys.readouterr().out
  b = train.run(tiny_digits(teacher=8, hint=4, student=8), str(tmp_path / "b"))
  assert without_timing(read_metrics(str(tmp_path / "a"))) == without_timing(read_metrics(str(tmp_path / "b")))
  assert a["student"]["test_accuracy"] == b["student"]["test_accuracy"]
  # What the run says while it works: compiling, evaluating, the time left in the stage and the run.
  for stage in ("teacher", "hint", "kd"):
    assert f"[{stage}] compiling the step" in out and f"[{stage}] compiled in " in out, out
  assert "[teacher] step 8/8 evaluating on the 360 test images" in out
  assert "ETA 0:00:00 (run ≈ " in out.split("[hint]")[0] and "(run ≈" not in out.split("[kd]")[-1]
  # The learning rate of every step, logged and in TensorBoard (the hint stage's is constant).
  hint = [r for r in read_metrics(str(tmp_path / "a")) if r["stage"] == "hint" and r["split"] == "train"]
  assert [r["learning_rate"] for r in hint] == pytest.approx([config.stages.hint.optimizer.learning_rate] * len(hint))
  tf = __import__("tensorflow")
  tags = {
    v.tag
    for path in tf.io.gfile.glob(os.path.join(tmp_path, "a", "tensorboard", "events*"))
    for event in tf.compat.v1.train.summary_iterator(path)
    for v in event.summary.value
  }
  assert {"teacher/train/learning_rate", "hint/train/learning_rate", "kd/train/learning_rate"} <= tags, tags


def shrink(config, batch=8):
  config.num_devices = 1
  config.batch_size = batch
  config.eval_batch_size = batch
  config.log_every_steps = 1
  config.dataset.stats_examples = 16
  for stage in ("teacher", "hint", "student"):
    config.stages[stage].steps = 2
  return config


def test_the_mnist_paper_config_runs_a_few_steps_under_mock_data(tmp_path):
  """One paper config end to end for real: the maxout MNIST teacher, the FitNet student, its hint."""
  config = shrink(load_config("mnist"))
  with tfds.testing.mock_data(num_examples=16):
    summary = train.run(config, str(tmp_path))
  assert summary["dataset"] == "mnist" and list(summary["stages"]) == ["teacher", "hint", "kd"]
  assert all(s["steps"] == 2 for s in summary["stages"].values())
  assert np.isfinite(summary["stages"]["kd"]["final_train_loss"])


def test_a_tfds_dataset_of_no_shipped_config_trains_and_its_student_predicts(tmp_path):
  """fashion_mnist by name (shape and classes from TFDS's info) under mock data: KD end to end, then the saved
  student predicts from the raw images of the test split."""
  config = tiny_digits("kd", teacher=4, student=4, batch_size=8, eval_batch_size=8, **{"dataset.name": "fashion_mnist"})
  config.dataset.stats_examples = 16
  with tfds.testing.mock_data(num_examples=16):
    summary = train.run(config, str(tmp_path))
    images, labels = next(
      iter(tfds.as_numpy(tfds.load("fashion_mnist", split="test", batch_size=16, as_supervised=True)))
    )
  assert summary["dataset"] == "fashion_mnist" and list(summary["stages"]) == ["teacher", "kd"]
  logits = saved.load_model(str(tmp_path)).predict(images)
  assert logits.shape == (16, 10) and np.mean(logits.argmax(-1) == labels) == summary["student"]["test_accuracy"]


@pytest.mark.parametrize(
  "name,arg,overrides",
  [
    ("svhn", None, {}),
    ("cifar10", None, {}),  # the real FitNet 4 / maxout teacher, GCN + ZCA, flips and shifts
    ("cifar100", "fitnet1", {"method": "scratch"}),  # 100 classes; the CIFAR teacher is built by cifar10
  ],
)
def test_paper_configs_build_and_lower_every_stage(name, arg, overrides, tmp_path):
  """The paper-sized networks through their own data pipelines (under mock data), every stage's step
  and evaluation traced and lowered (helpers.lower_every_stage says why not compiled)."""
  config = shrink(load_config(name, arg))
  for key, value in overrides.items():
    config[key] = value
  with tfds.testing.mock_data(num_examples=16):
    outputs = lower_every_stage(config, str(tmp_path))
  stages = {"fitnets": ["teacher", "hint", "kd"], "scratch": ["scratch"]}[config.method]
  assert list(outputs) == stages
  for loss, metrics in outputs.values():
    assert loss.shape == () and loss.dtype == np.float32 and "accuracy" in metrics


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
  from fitnets_jax.errors import NonFiniteLoss

  work = str(tmp_path / "nan")
  config = tiny_digits(
    "scratch",
    student=12,
    checkpoint_every_steps=1,
    **{"stages.student.optimizer.name": "sgd", "stages.student.optimizer.learning_rate": 1e38},
  )
  with pytest.raises(
    NonFiniteLoss, match=r"Stage 'scratch', step \d+: non-finite .*holds the last good parameters, from before step"
  ):
    train.run(config, work)
  assert not os.path.exists(os.path.join(work, "summary.json"))
  _, state = final_state(work)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state["params"]))


def test_skip_step_skips_non_finite_updates_and_counts_them(tmp_path):
  config = tiny_digits(
    "scratch",
    student=12,
    on_nan="skip_step",
    **{"stages.student.optimizer.name": "sgd", "stages.student.optimizer.learning_rate": 1e38},
  )
  summary = train.run(config, str(tmp_path))
  assert 0 < summary["stages"]["scratch"]["skipped_steps"] <= 12
  _, state = final_state(str(tmp_path))
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state["params"]))


ANY_DEVICE_COUNT = """
import dataclasses, json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=16"
import jax, numpy as np
from fitnets_jax import config, data, evaluation, experiment, train
from fitnets_jax.errors import FitnetsError
c = config.load("configs/digits.py", {"batch_size": 48, "eval_batch_size": 100})
exp = experiment.prepare(c, sys.argv[1])
variables = dict(zip(("params", "batch_stats"), exp.student.init(jax.random.PRNGKey(0))))
out = {"test_label_mean": float(np.mean(data.digits_arrays()[3]))}
for n in (1, 3, 8, 16):
  c.num_devices = n
  on_n = dataclasses.replace(exp, mesh=experiment.make_mesh(c))
  evaluator = evaluation.Evaluator(on_n)
  labels = evaluator.metrics("labels", lambda v, x, y: {"label": y, "one": y * 0 + 1}, variables)
  accuracy = evaluator.accuracy(exp.student, variables["params"], variables["batch_stats"])
  out[n] = dict(labels, accuracy=accuracy, local_eval_batch=on_n.local_eval_batch)
c.num_devices, c.batch_size = 16, 100
try:
  experiment.make_mesh(c)
except FitnetsError as e:
  out["refusal"] = str(e)
print("RESULT", json.dumps(out))
"""


def test_any_device_count_evaluates_every_test_example_once(tmp_path):
  """16 forced CPU devices in a fresh process; evaluation on 1, 3, 8 and 16 of them with
  eval_batch_size=100, which none of 3, 8, 16 divides: batches are padded and the padding masked."""
  result = subprocess.run(
    [sys.executable, "-c", ANY_DEVICE_COUNT, str(tmp_path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, XLA_FLAGS=""),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.split("RESULT ", 1)[1])
  for n in ("1", "3", "8", "16"):
    # Bit for bit: sums of small integers are exact in float32, so every test example counted once.
    assert out[n]["one"] == 1.0 and out[n]["label"] == out["test_label_mean"], (n, out[n])
    assert out[n]["local_eval_batch"] % int(n) == 0 and out[n]["local_eval_batch"] >= 100
    # Argmax over logits computed in other batch groupings may flip for a nearly tied example.
    assert out[n]["accuracy"] == pytest.approx(out["1"]["accuracy"], abs=2 / 360)
  assert "batch_size=100 cannot be split evenly over the 16 devices" in out["refusal"]
  assert "such as 96 or 112" in out["refusal"]

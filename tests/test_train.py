"""End to end: 1 vs 2 vs 4 devices, resume, determinism, NaN handling, and every paper config (the quick
start itself runs in tests/test_notebooks.py, through the first notebook)."""

import os
import shutil

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import load_config, tiny_digits
from fitnets_jax import train
from helpers import final_state, read_metrics, without_timing


# How closely 1, 2 and 4 devices agree, and why. On N devices the batch's sums (the loss mean, the
# batch-norm statistics, the gradient all-reduce) are added in another order, and how float32 sums
# reassociate also depends on the CPU's vector width. So:
#  - bit for bit: the logged records (stage, step, split, keys) and the skipped steps;
#  - each stage's first step: to 1e-5 relative. Its inputs differ only by reassociated float32 sums
#    (≈ log2(32) · 6e-8 ≈ 3e-7 for one mean over 32 examples; measured ≤ 6e-7 with AVX2 and SSE4.2);
#  - later steps: to 1e-2 relative. Maxout's max and max-norm clipping are not smooth: a last-bit
#    difference can pick another piece for one example and route its gradient elsewhere, a jump
#    that later steps carry (measured: KD losses 2.4e-4 apart after 8 steps with AVX2, 1e-7 with
#    SSE4.2). A wrong batch order or per-device statistics moves a step's loss by far more than 1 %;
#  - accuracies: argmax over nearly tied logits (a student 8 steps into training) may flip for a few
#    examples: 2 of one 32-example batch, 2 % of the 360 test images (measured: 2 test images).
FIRST_STEP_RTOL, STEP_RTOL, BATCH_ACCURACY_ATOL, TEST_ACCURACY_ATOL = 1e-5, 1e-2, 2 / 32, 0.02


def test_one_two_and_four_devices_give_the_same_numbers(tmp_path):
  """Teacher, hint and KD stages on 1, 2 and 4 devices (batch and BatchNorm statistics sharded)."""
  runs = {}
  for n in (1, 2, 4):
    train.run(tiny_digits(teacher=12, hint=4, student=8, num_devices=n, log_every_steps=1,
                          **{"dataset.flip": True}), str(tmp_path / f"d{n}"))
    runs[n] = read_metrics(str(tmp_path / f"d{n}"))
  for n in (2, 4):
    assert [(r["stage"], r["step"], r["split"], sorted(r)) for r in runs[n]] == \
        [(r["stage"], r["step"], r["split"], sorted(r)) for r in runs[1]]
    for one, other in zip(runs[1], runs[n]):
      assert other.get("skipped_steps") == one.get("skipped_steps")
      for key in ("loss", "hint", "kd"):
        if key in one:
          rtol = FIRST_STEP_RTOL if one["step"] == 1 else STEP_RTOL
          assert other[key] == pytest.approx(one[key], rel=rtol), (n, key, one, other)
      if "accuracy" in one:
        atol = BATCH_ACCURACY_ATOL if one["split"] == "train" else TEST_ACCURACY_ATOL
        assert other["accuracy"] == pytest.approx(one["accuracy"], abs=atol), (n, one, other)


def test_resume_reaches_the_same_parameters_as_an_uninterrupted_run(tmp_path):
  """Runs once without a stop; then, for stops inside each stage, rolls a copy back to the checkpoint
  taken there (as a killed run would leave it) and restarts it on the same workdir."""
  config = lambda: tiny_digits(**{"dataset.shift": 1})
  full = str(tmp_path / "full")
  expected = train.run(config(), full)
  step, want = final_state(full)
  for stop in (12, 28, 40):          # global steps inside teacher (24), hint (8) and KD (16)
    work = str(tmp_path / f"stop{stop}")
    shutil.copytree(full, work)
    for d in os.listdir(os.path.join(work, "checkpoints")):
      if d.isdigit() and int(d) > stop:
        shutil.rmtree(os.path.join(work, "checkpoints", d))
    if stop < 24:
      shutil.rmtree(os.path.join(work, "teacher"))               # not written until the teacher stage ends
    os.remove(os.path.join(work, "summary.json"))
    resumed = train.run(config(), work)
    got_step, got = final_state(work)
    assert got_step == step
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      np.testing.assert_array_equal(a, b)
    assert resumed["student"]["test_accuracy"] == expected["student"]["test_accuracy"]
    assert without_timing(read_metrics(work)) == without_timing(read_metrics(full))


def test_same_seed_gives_identical_metrics(tmp_path):
  a = train.run(tiny_digits(teacher=8, hint=4, student=8), str(tmp_path / "a"))
  b = train.run(tiny_digits(teacher=8, hint=4, student=8), str(tmp_path / "b"))
  assert without_timing(read_metrics(str(tmp_path / "a"))) == without_timing(read_metrics(str(tmp_path / "b")))
  assert a["student"]["test_accuracy"] == b["student"]["test_accuracy"]


def shrink(config, batch=8):
  config.num_devices = 1
  config.batch_size = batch
  config.eval_batch_size = batch
  config.log_every_steps = 1
  config.dataset.stats_examples = 16
  for stage in ("teacher", "hint", "student"):
    config.stages[stage].steps = 2
  return config


@pytest.mark.parametrize("name,arg,overrides", [
    ("mnist", None, {}),
    ("svhn", None, {}),
    ("cifar10", None, {}),   # the real FitNet 4 / maxout teacher, GCN + ZCA, flips and shifts
    ("cifar100", "fitnet1", {"method": "scratch"}),   # 100 classes; the CIFAR teacher is built by cifar10
])
def test_paper_configs_build_and_run_a_few_steps(name, arg, overrides, tmp_path):
  config = shrink(load_config(name, arg))
  for key, value in overrides.items():
    config[key] = value
  with tfds.testing.mock_data(num_examples=16):
    summary = train.run(config, str(tmp_path))
  assert summary["dataset"] == config.dataset.name
  assert all(s["steps"] == 2 for s in summary["stages"].values())
  assert np.isfinite(summary["stages"][list(summary["stages"])[-1]]["final_train_loss"])


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
  from fitnets_jax.errors import NonFiniteLoss
  work = str(tmp_path / "nan")
  config = tiny_digits("scratch", student=12, checkpoint_every_steps=1,
                       **{"stages.student.optimizer.name": "sgd", "stages.student.optimizer.learning_rate": 1e38})
  with pytest.raises(NonFiniteLoss, match=r"Stage 'scratch', step \d+: non-finite .*holds the last good parameters, from before step"):
    train.run(config, work)
  assert not os.path.exists(os.path.join(work, "summary.json"))
  _, state = final_state(work)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state["params"]))


def test_skip_step_skips_non_finite_updates_and_counts_them(tmp_path):
  config = tiny_digits("scratch", student=12, on_nan="skip_step", **{"stages.student.optimizer.name": "sgd",
                                                                   "stages.student.optimizer.learning_rate": 1e38})
  summary = train.run(config, str(tmp_path))
  assert 0 < summary["stages"]["scratch"]["skipped_steps"] <= 12
  _, state = final_state(str(tmp_path))
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state["params"]))

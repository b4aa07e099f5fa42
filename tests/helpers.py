"""Shared helpers for the training tests."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def final_state(workdir):
  """The newest checkpoint's state as host numpy arrays (whatever devices or hosts saved it)."""
  directory = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  path = os.path.join(directory, str(step), "state")
  with ocp.StandardCheckpointer() as checkpointer:
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
      checkpointer.metadata(path).item_metadata.tree,
    )
    restored = checkpointer.restore(path, target)
  return step, jax.tree.map(np.asarray, restored)


def without_timing(records):
  return [{k: v for k, v in r.items() if k != "images_per_s"} for r in records]


def write_npz(path, **overrides):
  """A valid 6×6 RGB, 4-class .npz (40 train, 10 test) with `overrides` replacing arrays (None drops one)."""
  rng = np.random.default_rng(0)
  arrays = dict(
    train_images=rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8),
    train_labels=rng.integers(0, 4, 40),
    test_images=rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8),
    test_labels=rng.integers(0, 4, 10),
  )
  arrays.update(overrides)
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
  return str(path)


TIMING = ("compile_s", "wall_time_s", "images_per_s")


def comparable_summary(workdir):
  """summary.json without timings (its `time` block and each stage's) and the workdir-specific teacher path."""
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  summary.pop("time")
  for teacher in [summary["teacher"] or {}] + summary["teachers"]:
    teacher.pop("checkpoint", None)
  for stage in summary["stages"].values():
    for key in TIMING:
      stage.pop(key)
  return summary


def assert_same_run(workdir, reference):
  (step, want), (got_step, got) = final_state(reference), final_state(workdir)
  assert got_step == step
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  assert comparable_summary(workdir) == comparable_summary(reference)
  assert without_timing(read_metrics(workdir)) == without_timing(read_metrics(reference))


# How closely runs on 1, 2 and 4 devices, or on 1 and 2 hosts, agree, and why. Spread otherwise, the
# batch's sums (the loss mean, the batch-norm statistics, the gradient all-reduce) are added in
# another order, and how float32 sums reassociate also depends on the CPU's vector width. So:
#  - bit for bit: the logged records (stage, step, split, keys) and the skipped steps;
#  - each stage's first step: to 1e-5 relative. Its inputs differ only by reassociated float32 sums
#    (≈ log2(32) · 6e-8 ≈ 3e-7 for one mean over 32 examples; measured ≤ 6e-7 with AVX2 and SSE4.2);
#  - later steps: to 1e-2 relative. Maxout's max and max-norm clipping are not smooth: a last-bit
#    difference can pick another piece for one example and route its gradient elsewhere, a jump
#    that later steps carry (measured: KD losses 2.4e-4 apart after 8 steps with AVX2, 1e-7 with
#    SSE4.2). A wrong batch order or per-device statistics moves a step's loss by far more than 1 %;
#  - accuracies: argmax over nearly tied logits (a student 8 steps into training, near chance) may flip
#    for some examples: 2 of one 32-example batch, 5 % of the 360 test images (measured: 12 test images,
#    16.4 % against 19.7 %, with the authors' hint reduction; 2 with eq. 3's, whose 256× larger hint
#    gradients start the KD stage elsewhere). The losses above are the tight check.
FIRST_STEP_RTOL, STEP_RTOL, BATCH_ACCURACY_ATOL, TEST_ACCURACY_ATOL = 1e-5, 1e-2, 2 / 32, 0.05


def assert_same_numbers(reference, other, first_step_rtol=FIRST_STEP_RTOL):
  """metrics.jsonl records of two runs that differ only in how the batch is spread over devices/hosts
  (`first_step_rtol`: a loss that amplifies its inputs' last bits says so where it passes a wider one)."""
  assert [(r["stage"], r["step"], r["split"], sorted(r)) for r in other] == [
    (r["stage"], r["step"], r["split"], sorted(r)) for r in reference
  ]
  for one, two in zip(reference, other):
    assert two.get("skipped_steps") == one.get("skipped_steps")
    for key in ("loss", "hint", "kd"):
      if key in one:
        rtol = first_step_rtol if one["step"] == 1 else STEP_RTOL
        assert two[key] == pytest.approx(one[key], rel=rtol), (key, one, two)
    if "accuracy" in one:
      atol = BATCH_ACCURACY_ATOL if one["split"] == "train" else TEST_ACCURACY_ATOL
      assert two["accuracy"] == pytest.approx(one["accuracy"], abs=atol), (one, two)


def lower_every_stage(config, workdir):
  """Builds `config`'s experiment and lowers (traces to XLA's input, without compiling it) every stage's
  train step on the first batch its input pipeline yields, and every stage's evaluation on the first
  test batch: what a paper-sized config is checked with, since XLA's CPU compile of its networks takes
  minutes here while the code they run is the same the digits configs run for real. Returns
  {stage: (loss, {metric: sum}) as ShapeDtypeStructs}."""
  from fitnets_jax import data, evaluation, experiment, parallel, train_step

  exp = experiment.prepare(config, workdir)
  rep = parallel.replicated(exp.mesh)
  abstract = lambda tree: jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), tree)
  teachers = {
    role: abstract({"params": v["params"], "batch_stats": v.get("batch_stats", {})})
    for role, v in ((r, n.abstract_variables()) for r, n in exp.teachers.items())
  }
  teachers["mu"] = jax.ShapeDtypeStruct((len(exp.teachers),), jnp.float32, sharding=rep)
  evaluator = evaluation.Evaluator(exp)
  test_batch = next(parallel.prefetch_to_device(data.eval_batches(exp.data, exp.local_eval_batch), exp.mesh))
  outputs = {}
  for index, stage in enumerate(exp.stages):
    _, rng, labels, tx = train_step.stage_setup(exp, index)
    state = train_step.abstract_state(stage, tx, rng, exp.mesh)
    batch = next(
      parallel.prefetch_to_device(
        data.train_batches(exp.data, exp.local_batch, exp.steps_per_epoch, config.seed, index), exp.mesh
      )
    )
    lowered, _ = train_step.lower_step(
      stage, tx, labels, exp.mesh, state, batch, teachers if stage.uses_teacher else {}
    )
    key, evaluate, variables = evaluation.stage_evaluation(exp, stage, state.params, state.batch_stats)
    evaluated = evaluator.step(key, evaluate).lower(variables, test_batch)
    outputs[stage.name] = (lowered.out_info[1]["loss"], evaluated.out_info[0])
  return outputs


def run_steps(exp, stage, teacher, n):
  """Initial and final host states after `n` steps of `stage` on real digits batches."""
  from fitnets_jax import data, parallel, train_step

  rng = jax.random.PRNGKey(0)
  labels = stage.param_labels(jax.eval_shape(lambda: stage.init(rng, None))[0])
  tx = train_step.transformation(stage, labels)
  state = train_step.init_state(stage, tx, rng, None, exp.mesh)
  before = jax.device_get(state)
  batches = parallel.prefetch_to_device(
    data.train_batches(exp.data, exp.local_batch, exp.steps_per_epoch, 0, 1), exp.mesh
  )
  batch = next(batches)
  step, _, flops = train_step.compile_step(stage, tx, labels, exp.mesh, state, batch, teacher)
  for _ in range(n):
    state, _ = step(state, batch, teacher)
    batch = next(batches)
  return before, jax.device_get(state), flops

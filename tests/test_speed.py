"""Speed options and the benchmark: the teacher cache, bfloat16 activations, benchmark.json."""

import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fitnets_jax import compiler, data, experiment, parallel, teachers, train, train_step
from fitnets_jax.network import forward, predict, variables
from fitnets_jax.tools import benchmark

from conftest import tiny_digits


def fresh_teacher(exp):
  """Replicated variables of a freshly initialised teacher, as the step receives them."""
  return benchmark.stage_teacher(exp, jax.random.PRNGKey(0))


def stage_named(exp, name):
  index = [s.name for s in exp.stages].index(name)
  return index, exp.stages[index]


@pytest.fixture(scope="module")
def fitnets_exp(tmp_path_factory):
  return experiment.prepare(tiny_digits("fitnets", **{"teacher.cache": True}), str(tmp_path_factory.mktemp("cache")))


def test_cached_logits_and_features_equal_the_live_teacher_on_shuffled_batches(fitnets_exp):
  exp = fitnets_exp
  teacher = fresh_teacher(exp)
  layers = teachers.cached_layers(exp.stages)
  assert layers == {"teacher": ["conv2"]}
  tables, info = teachers.build_cache(exp.teachers, teacher, layers, exp.data, 100, 1024.0)
  assert info["layers"] == {"teacher": ["conv2"]} and info["left_out"] == [] and info["examples"] == 1437
  net, t = exp.teacher, jax.device_get(teacher["teacher"])
  for batch in itertools.islice(data.train_batches(exp.data, 32, exp.steps_per_epoch, seed=3, stage_index=2), 3):
    live_logits, live_feats, _ = forward(net, t["params"], t["batch_stats"], batch["image"], False, capture=("conv2",))
    np.testing.assert_allclose(tables["teacher"]["logits"][batch["index"]], live_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
      tables["teacher"]["features"]["conv2"][batch["index"]], live_feats["conv2"], rtol=1e-5, atol=1e-5
    )
  # Under a zero budget only the logits are kept; the hint layer is computed live.
  _, info = teachers.build_cache(exp.teachers, teacher, layers, exp.data, 100, 0.0)
  assert info["layers"] == {"teacher": []} and info["left_out"] == ["teacher/conv2"]


def test_the_cached_kd_step_gives_the_live_loss_without_running_the_teacher(fitnets_exp):
  exp = fitnets_exp
  teacher = fresh_teacher(exp)
  tables, _ = teachers.build_cache(exp.teachers, teacher, teachers.cached_layers(exp.stages), exp.data, 100, 1024.0)
  cached = dict(teacher, cache=jax.device_put(tables, parallel.replicated(exp.mesh)))
  index, stage = stage_named(exp, "kd")
  rng = jax.random.PRNGKey(0)
  params, stats = stage.init(rng, None)
  batch = next(parallel.prefetch_to_device(data.train_batches(exp.data, 32, exp.steps_per_epoch, 0, index), exp.mesh))
  live_loss = jax.jit(stage.loss)(params, stats, teacher, batch, rng, 0)[0]
  cached_loss = jax.jit(stage.loss)(params, stats, cached, batch, rng, 0)[0]
  np.testing.assert_allclose(cached_loss, live_loss, rtol=1e-5)
  labels = stage.param_labels(params)
  tx = train_step.transformation(stage, labels)
  state = train_step.init_state(stage, tx, rng, None, exp.mesh)
  live_flops = train_step.compile_step(stage, tx, labels, exp.mesh, state, batch, teacher)[2]
  cached_flops = train_step.compile_step(stage, tx, labels, exp.mesh, state, batch, cached)[2]
  # The digits teacher's forward pass is about 3/4 of the live KD step's FLOPs.
  assert cached_flops < 0.5 * live_flops, (cached_flops, live_flops)


def test_bfloat16_activations_keep_float32_parameters_and_close_losses(tmp_path):
  results = {}
  for dtype in ("float32", "bfloat16"):
    exp = experiment.prepare(tiny_digits("fitnets", dtype=dtype), str(tmp_path / dtype))
    teacher = fresh_teacher(exp)
    batch = next(data.train_batches(exp.data, 32, exp.steps_per_epoch, 0, 1))
    rng = jax.random.PRNGKey(0)
    for name in ("hint", "kd"):
      _, stage = stage_named(exp, name)
      params, stats = stage.init(rng, None)
      (loss, (scalars, _)), grads = jax.jit(jax.value_and_grad(stage.loss, has_aux=True))(
        params, stats, teacher, batch, rng, 0
      )
      assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
      results[dtype, name] = float(loss)
    t = jax.device_get(teacher["teacher"])
    logits, feats, new_stats = forward(
      exp.teacher, t["params"], t["batch_stats"], batch["image"], True, capture=("conv2",)
    )
    assert feats["conv2"].dtype == jnp.dtype(dtype)  # activations in the compute dtype
    assert logits.dtype == jnp.float32  # logits back in float32 for the losses
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(new_stats))
    assert predict(exp.teacher, variables(t["params"], t["batch_stats"]), batch["image"]).dtype == jnp.float32
  for name in ("hint", "kd"):
    assert np.isfinite(results["bfloat16", name])
    # bf16 keeps 8 bits of mantissa: the losses agree to within 1 %.
    assert abs(results["bfloat16", name] - results["float32", name]) <= 0.01 * abs(results["float32", name]), results


def test_benchmark_writes_a_record_per_stage(tmp_path):
  config = tiny_digits("kd", eval_batch_size=100)
  result = benchmark.run(config, str(tmp_path), warmup=1, timed=2)
  saved = json.loads((tmp_path / "benchmark.json").read_text())
  assert saved == json.loads(json.dumps(result))
  assert [r["stage"] for r in saved["stages"]] == ["teacher", "kd"]
  assert saved["peak_flops_per_device"] > 0 and "measured float32 dense matmul" in saved["peak_source"]
  assert saved["compiler_options"] == compiler.CPU_OPTIONS
  for r in saved["stages"]:
    assert r["compile_s"] > 0 and r["step_ms_p10"] <= r["step_ms"] <= r["step_ms_p90"]
    assert r["images_per_s"] == pytest.approx(32 / (r["step_ms"] / 1e3), rel=1e-3)
    assert r["flops_per_step"] > 0 and 0 < r["utilization"]
    assert r["reference_flops_per_step"] > 0 and r["overhead"] > 0
    assert set(r["memory_bytes"]) == {"arguments", "outputs", "temporaries", "aliased"}
  teacher_stage, kd_stage = saved["stages"]
  assert teacher_stage["cached_step_ms"] is None and kd_stage["cached_step_ms"] > 0
  # The reference computes what our KD step computes: the same FLOPs within 2 %.
  assert kd_stage["flops_per_step"] == pytest.approx(kd_stage["reference_flops_per_step"], rel=0.02)
  text = benchmark.table(saved)
  assert "teacher" in text and "kd" in text and "overhead" in text
  # Inference at batch 1 and eval_batch_size, the speed-up as the ratio of the median latencies.
  speed = saved["inference"]
  assert speed["batch_sizes"] == [1, 100] and set(speed["networks"]) == {"student", "teacher"}
  for timed in speed["networks"].values():
    assert [t["batch"] for t in timed] == [1, 100]
    for t in timed:
      assert 0 < t["p50_ms"] <= t["p90_ms"] and t["images_per_s"] == pytest.approx(
        t["batch"] / t["p50_ms"] * 1e3, rel=1e-3
      )
  teacher, student = speed["networks"]["teacher"], speed["networks"]["student"]
  assert [s["speedup"] for s in speed["speedup"]["teacher"]] == [
    pytest.approx(t["p50_ms"] / s["p50_ms"], abs=0.006) for t, s in zip(teacher, student)
  ]
  assert "speed-up of the student over teacher: measured" in text and "MAC ratio 10.04×" in text


def test_step_flops_count_every_device_and_come_from_the_cpu_where_the_backend_gives_none(monkeypatch, tmp_path):
  flops = {}
  for devices in (1, 4):  # once compiled, XLA's analysis would cover one device's quarter
    exp = experiment.prepare(tiny_digits("kd", num_devices=devices), str(tmp_path / str(devices)))
    index, stage = stage_named(exp, "kd")
    rng = train_step.stage_rng(0, index)
    labels = stage.param_labels(jax.eval_shape(lambda: stage.init(rng, None))[0])
    tx = train_step.transformation(stage, labels)
    state = train_step.init_state(stage, tx, rng, None, exp.mesh)
    batch = next(parallel.prefetch_to_device(data.train_batches(exp.data, 32, exp.steps_per_epoch, 0, index), exp.mesh))
    compiled, _, flops[devices] = train_step.compile_step(stage, tx, labels, exp.mesh, state, batch, fresh_teacher(exp))
  assert flops[1] > 0 and flops[4] == pytest.approx(flops[1], rel=0.01)
  assert compiled.cost_analysis()["flops"] == pytest.approx(flops[4] / 4, rel=0.05)

  # A plugin backend (GPU, TPU) analyses nothing: the same program is lowered for the CPU instead.
  class NoAnalysis:
    def cost_analysis(self):
      return None

  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  step = train_step.make_step(stage, tx, labels)
  assert train_step.step_flops(NoAnalysis(), step, (state, batch, fresh_teacher(exp))) == pytest.approx(
    flops[1], rel=0.01
  )


def conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_cpu_steps_are_compiled_without_library_fusions_unless_the_user_says_otherwise(monkeypatch):
  x, w = jnp.ones((2, 8, 8, 16)), jnp.ones((3, 3, 16, 32))
  hlo = {name: jit(conv).lower(x, w).compile().as_text() for name, jit in (("xla", jax.jit), ("ours", compiler.jit))}
  assert "__ynn_fusion" in hlo["xla"] and "__ynn_fusion" not in hlo["ours"]
  np.testing.assert_allclose(compiler.jit(conv)(x, w), jax.jit(conv)(x, w), rtol=1e-6)
  assert compiler.options() == compiler.CPU_OPTIONS

  with monkeypatch.context() as m:  # XLA's defaults asked for
    m.setenv(compiler.DEFAULTS_VARIABLE, "1")
    assert compiler.options() is None and "__ynn_fusion" in compiler.jit(conv).lower(x, w).compile().as_text()
  with monkeypatch.context() as m:  # the user's own setting of the option
    m.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_experimental_ynn_fusion_type=individual_dot")
    assert compiler.options() is None
  assert compiler.options() == compiler.CPU_OPTIONS
  monkeypatch.setattr(compiler, "CPU_OPTIONS", {"xla_cpu_no_such_option": "1"})  # an XLA without the option
  assert compiler.options() is None and float(compiler.jit(lambda a: a * 2)(1.0)) == 2.0
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(compiler, "CPU_OPTIONS", {"xla_cpu_experimental_ynn_fusion_type": ""})
  assert compiler.options() is None


def test_the_persistent_compilation_cache_goes_where_configured_and_a_second_run_only_reads_it(tmp_path):
  """compilation_cache=FOLDER keeps the compiled programs there; a second run of the same config finds
  every one of them (nothing new is written); workdir means <workdir>/compilation_cache; off, none.
  Programs compiled faster than `jax_persistent_cache_min_compile_time_secs` are not kept: 0 here."""
  min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  try:
    folder = tmp_path / "cache"
    config = lambda setting: tiny_digits("scratch", student=2, compilation_cache=setting)
    train.run(config(str(folder)), str(tmp_path / "first"))
    kept = sorted(p.name for p in folder.iterdir())
    assert any(name.startswith("jit_step") for name in kept), kept
    train.run(config(str(folder)), str(tmp_path / "second"))
    assert sorted(p.name for p in folder.iterdir()) == kept  # every program found, none compiled again
    workdir = str(tmp_path / "run")
    assert compiler.cache_folder("workdir", workdir) == os.path.join(workdir, "compilation_cache")
    assert compiler.cache_folder("off", workdir) is None
    assert compiler.use_cache("off", workdir) is None and not jax.config.jax_enable_compilation_cache
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)
    compiler.use_cache("local", str(tmp_path))  # back to the suite's shared cache

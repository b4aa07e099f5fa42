"""Measures every stage of a config's method on the devices JAX sees; writes benchmark.json.

  python -m fitnets_jax.tools.benchmark --config configs/digits.py --workdir runs/bench
  python -m fitnets_jax.tools.benchmark --config configs/svhn.py --workdir runs/bench_svhn --synthetic

Per stage: compile time; the step time (median, 10th–90th percentile) over timed steps after
warm-up, each ended by `block_until_ready`; images/s overall and per device; images/s of the
training loop itself (steps dispatched back to back, batches prefetched, no per-step sync), which
equals the step rate when the host never makes the device wait; XLA's FLOPs per step on all
devices together (`train_step.step_flops`), the achieved FLOP/s and the utilisation against the devices'
peak (a measured dense matmul on CPU, the vendor's figure for known GPUs/TPUs); XLA's compiled
memory (arguments, outputs, temporaries) and the peak bytes in use where the backend reports them.
Then every network's inference (`fitnets_jax.inference`) at batch 1 and `eval_batch_size`
(`--inference_batches`): latency p50/p90 and images/s on one device, compilation excluded, and the
student's measured speed-up over each teacher next to the MAC ratio, as FitNets' Table 5.

Next to each stage, a bare reference step for the same networks, written with flax and optax
alone: the teacher's forward pass (stages that use one) and the trained network's
forward/backward with a plain cross-entropy (+ soft cross-entropy to the teacher) and the stage's
optimizer, with no masks, NaN guard, metrics or capture, compiled with the same XLA options
(`fitnets_jax.compiler`, recorded as `compiler_options`). `overhead` is our step time ÷ the
reference's, timed interleaved on the same batches. A stage that computes less than the whole
networks (the hint stage: two prefixes) is cheaper than the reference. Stages that read a teacher
are timed again with the teacher cache when the pipeline has no augmentation.

Networks start from fresh initialisations (or the configured teacher checkpoints): speed does not
depend on the weights. `--synthetic` feeds random images of the dataset's shape through the same
input pipeline, for datasets not on this machine.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags, logging

from fitnets_jax import command_line, compiler, data, experiment, files, inference, parallel, teachers, train_step
from fitnets_jax import config as config_lib
from fitnets_jax.errors import FitnetsError, or_exit
from fitnets_jax.network import cast_floats


def define_flags():
  """The command line's flags (defined only when run as a program, so the module imports anywhere)."""
  config_lib.define_config_flag()
  flags.DEFINE_string("workdir", "runs/benchmark", "Where benchmark.json is written.")
  flags.DEFINE_integer("warmup_steps", 3, "Steps run before timing (after compilation).")
  flags.DEFINE_integer("timed_steps", 20, "Steps timed one by one, and again as a loop.")
  flags.DEFINE_bool("synthetic", False, "Random images of the dataset's shape instead of reading it.")
  flags.DEFINE_integer("synthetic_examples", 4096, "Training examples of the synthetic stand-in.")
  flags.DEFINE_list("stages", [], "Only these stages (default: every stage of the method).")
  flags.DEFINE_list("inference_batches", [], "Batch sizes of the inference timing (default: 1 and eval_batch_size).")
  flags.DEFINE_integer("inference_repeats", 50, "Timed inference calls per network and batch size.")
  flags.DEFINE_bool("inference_only", False, "Time the networks' inference only, no training stage.")


# Dense peak FLOP/s per device from the vendors' data sheets: (bfloat16, float32 as XLA runs it by
# default: TF32 tensor cores on NVIDIA, bf16 passes on TPU).
VENDOR_PEAKS = {
  "H100": (989e12, 495e12),
  "H200": (989e12, 495e12),
  "A100": (312e12, 156e12),
  "L4": (121e12, 60e12),
  "V100": (125e12, 15.7e12),
  "TPU v3": (123e12 / 2, 123e12 / 2),
  "TPU v4": (275e12, 275e12),
  "TPU v5 lite": (197e12, 197e12),
  "TPU v5p": (459e12, 459e12),
  "TPU v6 lite": (918e12, 918e12),
}


def device_peak(dtype):
  """(peak FLOP/s of one device, where the figure comes from)."""
  device = jax.devices()[0]
  for name, (bf16, f32) in VENDOR_PEAKS.items():
    if name in device.device_kind:
      return (bf16 if dtype == "bfloat16" else f32), f"vendor figure for {device.device_kind} ({dtype})"
  return measured_matmul_peak(dtype), f"measured {dtype} dense matmul on {device.device_kind}"


def measured_matmul_peak(dtype, n=1024, repeats=10):
  """FLOP/s of the best of `repeats` n×n×n matmuls on the first device."""
  a = jnp.ones((n, n), dtype)
  matmul = compiler.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = min(_timed(lambda: matmul(a, a).block_until_ready()) for _ in range(repeats))
  return 2 * n**3 / best


def _timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def reference_step(exp, stage, tx):
  """A bare step for `stage`'s networks, (jitted, plain function): (params, batch_stats, opt_state,
  teachers, image, label, rng) → (params, batch_stats, opt_state, loss). (None, None) for stages that
  train several networks with their own update (mutual learning)."""
  if stage.update is not None:
    return None, None
  net = exp.teachers.get(stage.trains, exp.student)
  teacher_nets = list(exp.teachers.values()) if stage.uses_teacher else []
  dtype, temperature = exp.config.dtype, exp.config.kd.temperature

  def loss_fn(params, batch_stats, teacher_vars, x, y, rng):
    if dtype != "float32":
      params, x = cast_floats(params, dtype), x.astype(dtype)
    logits, updated = net.module.apply(
      {"params": params, "batch_stats": batch_stats}, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
    )
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    for teacher, t_vars in zip(teacher_nets, teacher_vars):
      t_params = cast_floats(t_vars["params"], dtype)
      t_logits = teacher.module.apply({"params": t_params, "batch_stats": t_vars["batch_stats"]}, x, train=False)
      soft = jax.nn.softmax(t_logits.astype(jnp.float32) / temperature)
      loss += -(soft * jax.nn.log_softmax(logits / temperature)).sum(-1).mean()
    return loss, updated.get("batch_stats", {})

  def step(params, batch_stats, opt_state, teacher_vars, x, y, rng):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, teacher_vars, x, y, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  rep, shard = parallel.replicated(exp.mesh), parallel.batch_sharding(exp.mesh)
  return compiler.jit(
    step, in_shardings=(rep, rep, rep, rep, shard, shard, rep), out_shardings=rep, donate_argnums=(0, 1, 2)
  ), step


def stage_teacher(exp, rng):
  """Replicated variables of every teacher (checkpoint or fresh) as the step receives them."""
  variables = {}
  for i, (role, net) in enumerate(exp.teachers.items()):
    v = exp.teacher_variables.get(role)
    if v is None:
      params, stats = net.init(jax.random.fold_in(rng, 100 + i))
      v = {"params": params, "batch_stats": stats}
    variables[role] = {"params": v["params"], "batch_stats": v.get("batch_stats", {})}
  variables["mu"] = np.full(len(exp.teachers), 1.0 / max(1, len(exp.teachers)), np.float32)
  return parallel.replicate(variables, exp.mesh)


def _percentiles(seconds):
  p10, p50, p90 = np.percentile(np.asarray(seconds) * 1e3, [10, 50, 90])
  return round(float(p50), 3), round(float(p10), 3), round(float(p90), 3)


def measure_stage(exp, index, teacher, warmup, timed, peak):
  """One stage's record (see the module docstring)."""
  cfg = exp.config
  stage, rng, labels, tx = train_step.stage_setup(exp, index)
  state = train_step.init_state(stage, tx, rng, None, exp.mesh)
  teacher = teacher if stage.uses_teacher else {}
  batches = parallel.prefetch_to_device(
    data.train_batches(exp.data, exp.local_batch, exp.steps_per_epoch, cfg.seed, index, 0, cfg.dataset.shuffle_buffer),
    exp.mesh,
  )
  batch = next(batches)
  step, compile_s, flops = train_step.compile_step(stage, tx, labels, exp.mesh, state, batch, teacher)
  memory = step.memory_analysis()

  reference, reference_fn = reference_step(exp, stage, stage.tx)
  if reference is not None:
    net = exp.teachers.get(stage.trains, exp.student)
    params, stats = net.init(rng)
    ref_state = parallel.replicate((params, stats, stage.tx.init(params)), exp.mesh)
    ref_teachers = [teacher[r] for r in exp.teachers] if stage.uses_teacher else []
    ref_args = lambda b: (ref_teachers, b["image"], b["label"], rng)
    ref_lowered = reference.lower(*ref_state, *ref_args(batch))
    ref_compiled = ref_lowered.compile()
    ref_flops = train_step.step_flops(ref_lowered, reference_fn, (*ref_state, *ref_args(batch)))

  times = {"ours": [], "ref": []}

  def run_ours():
    nonlocal state
    state = step(state, batch, teacher)[0]
    return state

  def run_ref():
    nonlocal ref_state
    ref_state = ref_compiled(*ref_state, *ref_args(batch))[:3]
    return ref_state

  runners = {"ours": run_ours, **({"ref": run_ref} if reference is not None else {})}
  for i in range(warmup + timed):  # interleaved, alternating which goes first: machine noise falls on both
    for name in list(runners) if i % 2 == 0 else list(runners)[::-1]:
      started = time.perf_counter()
      jax.block_until_ready(runners[name]())
      if i >= warmup:
        times[name].append(time.perf_counter() - started)
    batch = next(batches)

  started = time.perf_counter()  # the training loop's own rhythm: dispatch, next batch, no sync
  for _ in range(timed):
    state, scalars = step(state, batch, teacher)
    batch = next(batches)
  jax.block_until_ready((state, scalars))
  loop_s = time.perf_counter() - started

  median, p10, p90 = _percentiles(times["ours"])
  devices = exp.mesh.size
  record = {
    "stage": stage.name,
    "steps_timed": timed,
    "batch_size": cfg.batch_size,
    "devices": devices,
    "compile_s": round(compile_s, 3),
    "step_ms": median,
    "step_ms_p10": p10,
    "step_ms_p90": p90,
    "images_per_s": round(cfg.batch_size / (median / 1e3), 1),
    "images_per_s_per_device": round(cfg.batch_size / (median / 1e3) / devices, 1),
    "loop_images_per_s": round(timed * cfg.batch_size / loop_s, 1),
    "flops_per_step": flops,
    "flops_per_s": flops / (median / 1e3) if flops else None,
    "utilization": flops / (median / 1e3) / (peak * devices) if flops else None,
    "memory_bytes": {
      "arguments": memory.argument_size_in_bytes,
      "outputs": memory.output_size_in_bytes,
      "temporaries": memory.temp_size_in_bytes,
      "aliased": memory.alias_size_in_bytes,
    },
    "peak_bytes_in_use": (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use"),
    "reference_step_ms": None,
    "reference_flops_per_step": None,
    "overhead": None,
  }
  if reference is not None:
    ref_median = _percentiles(times["ref"])[0]
    record.update(
      reference_step_ms=ref_median, reference_flops_per_step=ref_flops, overhead=round(median / ref_median, 3)
    )
  return record


def cached_step_ms(exp, index, teacher, warmup, timed):
  """The stage's step time with the teacher cache (None when the stage reads no teacher)."""
  stage = exp.stages[index]
  if not stage.uses_teacher or exp.data.augmented:
    return None
  tables, _ = teachers.build_cache(
    exp.teachers,
    teacher,
    teachers.cached_layers(exp.stages),
    exp.data,
    exp.config.eval_batch_size,
    exp.config.teacher.cache_budget_mb,
  )
  with_cache = dict(teacher, cache=parallel.replicate(tables, exp.mesh))
  return measure_stage(exp, index, with_cache, warmup, timed, 1.0)["step_ms"]


def inference_speed(exp, batch_sizes, repeats):
  """{"batch_sizes", "networks": {role: inference.measure(…)}, "speedup": {teacher role: speedups}}:
  every network's inference on one device (fresh initialisations: speed does not depend on the
  weights), and each teacher's median latency ÷ the student's."""
  nets = {"student": exp.student, **exp.teachers}
  timed = {}
  for i, (role, net) in enumerate(nets.items()):
    params, stats = net.init(jax.random.PRNGKey(i))
    timed[role] = inference.measure(net, {"params": params, "batch_stats": stats}, batch_sizes, repeats)
  return {
    "batch_sizes": list(batch_sizes),
    "device": inference.describe_device(),
    "networks": timed,
    "speedup": {role: inference.speedups(timed[role], timed["student"]) for role in exp.teachers},
  }


def run(
  config,
  workdir,
  warmup=3,
  timed=20,
  synthetic_examples=0,
  stages=(),
  inference_batches=(),
  repeats=50,
  inference_only=False,
):
  """Benchmarks every stage of `config` (or those named in `stages`), and the networks' inference at
  `inference_batches` (none: `(1, eval_batch_size)`; `inference_only`: no stage); writes and returns
  {"device_kind", "peak_flops_per_device", "stages": [records], "inference": {…}, …}."""
  exp = experiment.prepare(config, workdir, synthetic_examples)
  names = [s.name for s in exp.stages]
  unknown = [s for s in stages if s not in names]
  if unknown:
    raise FitnetsError(
      f"--stages={','.join(stages)}: {', '.join(unknown)} is not a stage of method="
      f"{config.method!r}; its stages are {', '.join(names)}."
    )
  peak, peak_source = device_peak(config.dtype)
  teacher = stage_teacher(exp, jax.random.PRNGKey(config.seed))
  records = []
  for index, stage in enumerate(exp.stages):
    if (stages and stage.name not in stages) or inference_only:
      continue
    record = measure_stage(exp, index, teacher, warmup, timed, peak)
    record["cached_step_ms"] = cached_step_ms(exp, index, teacher, warmup, timed)
    records.append(record)
  result = {
    "config": config.method,
    "dataset": exp.data.name,
    "synthetic": bool(synthetic_examples),
    "dtype": config.dtype,
    "device_kind": jax.devices()[0].device_kind,
    "platform": jax.devices()[0].platform,
    "devices": int(exp.mesh.size),
    "peak_flops_per_device": peak,
    "peak_source": peak_source,
    "compiler_options": compiler.options(),
    "models": {"student": exp.student.describe(), **{role: net.describe() for role, net in exp.teachers.items()}},
    "stages": records,
    "inference": inference_speed(exp, tuple(inference_batches) or (1, config.eval_batch_size), repeats),
  }
  files.makedirs(workdir)
  files.write_atomically(files.join(workdir, "benchmark.json"), json.dumps(result, indent=2))
  return result


def _mib(n):
  return f"{n / 2**20:.1f}" if n is not None else "n/a"


def table(result):
  """benchmark.json as a readable table."""
  header = (
    "stage",
    "compile s",
    "step ms (p10–p90)",
    "img/s",
    "img/s/dev",
    "loop img/s",
    "GFLOP/step",
    "GFLOP/s",
    "util",
    "XLA MiB",
    "peak MiB",
    "ref ms",
    "overhead",
    "cached ms",
  )
  rows = [header]
  for r in result["stages"]:
    mem = r["memory_bytes"]
    rows.append(
      (
        r["stage"],
        f"{r['compile_s']:.2f}",
        f"{r['step_ms']:.2f} ({r['step_ms_p10']:.2f}–{r['step_ms_p90']:.2f})",
        f"{r['images_per_s']:,.0f}",
        f"{r['images_per_s_per_device']:,.0f}",
        f"{r['loop_images_per_s']:,.0f}",
        f"{r['flops_per_step'] / 1e9:.3f}" if r["flops_per_step"] else "n/a",
        f"{r['flops_per_s'] / 1e9:.1f}" if r["flops_per_s"] else "n/a",
        f"{100 * r['utilization']:.1f}%" if r["utilization"] else "n/a",
        _mib(mem["arguments"] + mem["outputs"] + mem["temporaries"] - mem["aliased"]),
        _mib(r["peak_bytes_in_use"]),
        f"{r['reference_step_ms']:.2f}" if r["reference_step_ms"] else "n/a",
        f"{r['overhead']:.3f}×" if r["overhead"] else "n/a",
        f"{r['cached_step_ms']:.2f}" if r["cached_step_ms"] else "n/a",
      )
    )
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
  models = ", ".join(f"{role} {m['model']}" for role, m in result["models"].items())
  options = result.get("compiler_options")
  xla = "; XLA options " + ", ".join(f"{k}={v!r}" for k, v in options.items()) if options else ""
  return "\n".join(
    [
      f"{result['dataset']}{' (synthetic)' if result['synthetic'] else ''}, {models}, "
      f"{result['devices']} × {result['device_kind']}, {result['dtype']}; peak "
      f"{result['peak_flops_per_device'] / 1e9:,.1f} GFLOP/s per device ({result['peak_source']}){xla}"
    ]
    + (lines if result["stages"] else [])
    + inference_table(result["inference"], result["models"])
  )


def inference_table(speed, models):
  """Lines: each network's inference latency and rate per batch size, and the measured speed-ups
  next to the MAC ratios (FitNets Table 5's columns)."""
  lines = [f"inference on one device ({speed['device']}), compilation excluded:"]
  rows = [("network", "MACs", *(f"batch {b}: p50 / p90 ms, img/s" for b in speed["batch_sizes"]))]
  for role, timed in speed["networks"].items():
    rows.append(
      (
        f"{role} {models[role]['model']}",
        f"{models[role]['macs']:,}",
        *(f"{t['p50_ms']:.3f} / {t['p90_ms']:.3f}, {t['images_per_s']:,.0f}" for t in timed),
      )
    )
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
  for role, by_batch in speed["speedup"].items():
    ratio = models[role]["macs"] / models["student"]["macs"]
    measured = ", ".join(f"{r['speedup']:.2f}× at batch {r['batch']}" for r in by_batch)
    lines.append(f"speed-up of the student over {role}: measured {measured}; MAC ratio {ratio:.2f}×")
  return lines


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  result = or_exit(
    lambda: run(
      config_lib.from_command_line(f.config),
      f.workdir,
      f.warmup_steps,
      f.timed_steps,
      f.synthetic_examples if f.synthetic else 0,
      f.stages,
      [int(b) for b in f.inference_batches],
      f.inference_repeats,
      f.inference_only,
    )
  )
  print(table(result))
  print(f"Written to {files.join(f.workdir, 'benchmark.json')}")


if __name__ == "__main__":
  define_flags()
  command_line.start(main, __doc__, required=("config",))

"""Where the KD step's time goes, op by op: XLA's compiled step and PyTorch eager, profiled alike.

  python benchmarks/step_profile.py [--config configs/mnist.py] [--batch 128] [--steps 10]

The step is the one `benchmarks/pytorch_kd_step.py` times (the config's teacher forward, the
student's forward/backward on the KD loss, RMSProp and max-norm). Both sides are profiled over
`--steps` steps after warm-up, and every op's time goes to a network, a layer and a pass:
- **fitnets_jax**: the library's compiled `kd` step under `jax.profiler.trace`. XLA:CPU records each
  thunk it runs (a fusion, a convolution, a copy); a convolution run asynchronously on the thread pool
  lasts until its completion event. The thunk's HLO instruction, and the ops fused into it, carry the
  JAX name stack: `jvp(teacher)/…` for the teacher's forward pass (`teachers.logits` runs it under its
  role's name), `jvp(MaxoutNet)/conv2/…` for the student's forward and `transpose(jvp(MaxoutNet))/…`
  for its backward. XLA runs independent thunks at once, so each moment of wall time is split evenly
  among the thunks running then: the table sums to the time the step kept XLA busy.
- **PyTorch**: `torch.profiler` over the same step, each layer's forward wrapped in
  `record_function`. A backward op goes to the layer whose forward op has its autograd sequence number;
  each op counts its own time, without its children's.
Writes `<workdir>/step_profile.json` and `step_profile.md`. Needs torch for the PyTorch side
(`--no_torch` profiles ours alone).
"""

import argparse
import collections
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pytorch_kd_step import load_config, torch_maxout_net  # noqa: E402  (this folder's sibling script)

LAYER = re.compile(r"(conv\d+|fc|logits)\b")


def jax_attribution(op_names):
  """(network, layer, pass) of a thunk from its ops' JAX name stacks: the teacher's ops run under its
  role's name (`teachers.logits`), the student's forward under `jvp(...)`, its backward under
  `transpose(jvp(...))`. A fusion goes to the first layer among its ops."""
  for name in op_names:
    path = name.split("/")
    layer = next((p for p in path if LAYER.fullmatch(p)), None)
    if layer is None:
      continue
    if any(p.strip("()").removeprefix("jvp(").removeprefix("transpose(").startswith("teacher") for p in path):
      return "teacher", layer, "forward"
    if any(p.startswith("transpose(jvp(") for p in path):
      return "student", layer, "backward"
    return "student", layer, "forward"
  if any(p.startswith("transpose(") for name in op_names for p in name.split("/")):
    return "loss", "", "backward"
  if any(p.startswith("jvp(") for name in op_names for p in name.split("/")):
    return "loss", "", "forward"
  return "update", "", "optimizer, max-norm"


def hlo_op_names(hlo_text):
  """{entry instruction name: [JAX op names of it and of the ops fused into it]}.

  XLA keeps no name for the convolutions that give the student's weight gradients (output [in, k, k,
  out], a window as large as the layer's output map): each gets the name of the student's forward
  convolution whose output has that map size and channel count."""
  computations, current, entry = {}, None, None
  for line in hlo_text.splitlines():
    header = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header:
      current = header.group(2)
      computations[current] = []
      entry = current if header.group(1) else entry
      continue
    if current is None or not line.startswith("  "):
      continue
    instruction = re.match(r"\s+(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\]", line)
    if instruction:
      window = re.search(r"window=\{size=(\d+)x", line)
      computations[current].append(
        (
          instruction.group(1),
          re.findall(r'op_name="([^"]*)"', line),
          re.findall(r"calls=%?([\w.\-]+)", line),
          (tuple(int(d) for d in instruction.group(2).split(",") if d), int(window.group(1)) if window else None),
        )
      )
  names, forward_maps = {}, {}
  for name, ops, calls, (shape, window) in computations.get(entry, []):
    found = list(ops)
    for called in calls:
      found += [n for _, inner, _, _ in computations.get(called, []) for n in inner]
    names[name] = found
    if window and found and len(shape) == 4 and jax_attribution(found)[::2] == ("student", "forward"):
      forward_maps[(shape[1], shape[3])] = found
  for name, ops, calls, (shape, window) in computations.get(entry, []):
    if window and not names[name] and len(shape) == 4 and (window, shape[3]) in forward_maps:
      names[name] = [n.replace("jvp(", "transpose(jvp(", 1) for n in forward_maps[(window, shape[3])]]
  return names


def kind_of(thunk):
  """An op kind from the thunk's name: convolution, or the fusion's first op."""
  base = thunk.split(".")[0]
  if "convolution" in base or "conv_general" in base:
    return "convolution"
  if base.startswith("wrapped_"):
    return base[len("wrapped_") :]
  return base


def timed_then_profiled(run_step, steps, profiler):
  """The step's unprofiled time in ms (after 5 warm-up steps), then `steps` more under `profiler`."""
  for _ in range(5):
    run_step()
  started = time.perf_counter()
  for _ in range(steps):
    run_step()
  step_ms = (time.perf_counter() - started) / steps * 1e3
  with profiler:
    for _ in range(steps):
      run_step()
  return step_ms


def profile_jax(config, steps, workdir):
  import jax

  from fitnets_jax import data, experiment, parallel, train_step
  from fitnets_jax.tools import benchmark

  config.compilation_cache = "off"  # a cached executable keeps the names of the program it was compiled from
  exp = experiment.prepare(config, os.path.join(workdir, "jax"), 4096)
  index = [s.name for s in exp.stages].index("kd")
  teacher = benchmark.stage_teacher(exp, jax.random.PRNGKey(config.seed))
  stage, rng, labels, tx = train_step.stage_setup(exp, index)
  state = [train_step.init_state(stage, tx, rng, None, exp.mesh)]
  batches = data.train_batches(exp.data, exp.local_batch, exp.steps_per_epoch, config.seed, index, 0, 1024)
  batch = next(parallel.prefetch_to_device(batches, exp.mesh))
  step, *_ = train_step.compile_step(stage, tx, labels, exp.mesh, state[0], batch, teacher)

  def run_step():
    state[0] = jax.block_until_ready(step(state[0], batch, teacher)[0])

  trace = os.path.join(workdir, "jax_trace")
  shutil.rmtree(trace, ignore_errors=True)
  step_ms = timed_then_profiled(run_step, steps, jax.profiler.trace(trace))
  from tensorflow.tsl.profiler.protobuf import xplane_pb2

  space = xplane_pb2.XSpace()
  with open(glob.glob(os.path.join(trace, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
    space.ParseFromString(f.read())
  return step_ms, shared_wall_time(thunk_intervals(space, hlo_op_names(step.as_text())), steps)


def thunk_intervals(space, op_names):
  """[(start ps, end ps, (network, layer, pass, kind))] of every thunk of the step in an XSpace: from its
  start to its end, or to its completion event when it ran asynchronously (a convolution on the pool)."""
  starts, ends = collections.defaultdict(list), collections.defaultdict(list)
  for plane in space.planes:
    for line in (line for line in plane.lines if "XLA" in line.name):
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        begin = line.timestamp_ns * 1000 + event.offset_ps
        if name.startswith("end: "):
          ends[name[5:]].append(begin + event.duration_ps)
        elif name in op_names:
          starts[name].append((begin, begin + event.duration_ps))
  intervals = []
  for thunk, spans in starts.items():
    finished = sorted(ends.get(thunk, []))
    for begin, end in spans:
      end = next((e for e in finished if e >= begin), end)
      intervals.append((begin, end, (*jax_attribution(op_names[thunk]), kind_of(thunk))))
  return intervals


def shared_wall_time(intervals, steps):
  """{key: ms per step}: each moment of wall time split evenly among the ops running at that moment
  (XLA runs independent thunks at once), so that the keys sum to the time some op was running."""
  points = sorted({t for begin, end, _ in intervals for t in (begin, end)})
  index = {t: i for i, t in enumerate(points)}
  active = [[] for _ in points]
  for begin, end, key in intervals:
    for i in range(index[begin], index[end]):
      active[i].append(key)
  rows = collections.defaultdict(float)
  for i, keys in enumerate(active[:-1]):
    for key in keys:
      rows[key] += (points[i + 1] - points[i]) / len(keys) / 1e9 / steps
  return rows


def torch_net_with_layer_tags(spec, role, channels, size, classes, torch):
  """`torch_maxout_net` whose every module's forward runs under `record_function("<role>/<layer>")`:
  conv<i> from a conv up to its pooling, then fc and logits."""
  from torch.profiler import record_function

  net = torch_maxout_net(spec, channels, size, classes, torch)
  modules, conv = list(net), 0
  for module in modules:
    conv += isinstance(module, torch.nn.Conv2d)
    layer = "fc" if hasattr(module, "linear") else "logits" if module is modules[-1] else f"conv{conv}"
    module.register_forward_pre_hook(
      lambda m, i, tag=f"{role}/{layer}": m.__dict__.__setitem__("_range", record_function(tag).__enter__())
    )
    module.register_forward_hook(lambda m, i, o: m.__dict__.pop("_range").__exit__(None, None, None))
  return net


def profile_torch(config, batch, steps):
  import torch
  from torch.profiler import ProfilerActivity, profile, record_function

  from fitnets_jax.data import image_shape_and_classes
  from fitnets_jax.models import maxout_spec

  torch.set_num_threads(os.cpu_count())
  (size, _, channels), classes = image_shape_and_classes(config.dataset)
  build = lambda name, role: torch_net_with_layer_tags(maxout_spec(name), role, channels, size, classes, torch)
  teacher, student = build(config.teacher.model, "teacher").eval(), build(config.student.model, "student").train()
  opt = config.stages.student.optimizer
  optimizer = torch.optim.RMSprop(student.parameters(), lr=opt.learning_rate, alpha=opt.decay, eps=opt.eps)
  x = torch.randn(batch, channels, size, size)
  y = torch.randint(0, classes, (batch,))
  tau, lam = config.kd.temperature, config.kd.lambda_start
  weights = [m.weight for m in student.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]

  def step():
    with torch.no_grad():
      soft = torch.softmax(teacher(x) / tau, -1)
    logits = student(x)
    with record_function("loss/"):
      loss = torch.nn.functional.cross_entropy(logits, y)
      loss = loss - lam * (soft * torch.log_softmax(logits / tau, -1)).sum(-1).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    with record_function("update/"):
      optimizer.step()
      with torch.no_grad():
        for w in weights:
          w.copy_(torch.renorm(w, 2, 0, opt.max_norm_conv if w.dim() == 4 else opt.max_norm_dense))

  prof = profile(activities=[ProfilerActivity.CPU])
  step_ms = timed_then_profiled(step, steps, prof)
  return step_ms, torch_rows(prof.events(), steps)


def _is_tag(event):  # a record_function range
  return "/" in event.name and not event.name.startswith(("aten::", "autograd::"))


def _ancestor(event, test):
  while event is not None and not test(event):
    event = event.cpu_parent
  return event


def torch_rows(events, steps):
  """{(network, layer, pass, op): ms per step} from torch.profiler's events, each op counting its own
  time without its children's. A backward op goes to the layer of the forward op whose autograd
  sequence number its node carries."""
  is_node = lambda e: e.name.startswith("autograd::engine::evaluate_function")
  scope = {}
  for event in events:
    tag = _ancestor(event.cpu_parent, _is_tag)
    if tag is not None and event.sequence_nr >= 0 and not _is_tag(event):
      scope.setdefault(event.sequence_nr, tag.name)
  rows = collections.defaultdict(float)
  for event in events:
    own_ms = event.self_cpu_time_total / 1e3 / steps
    if own_ms <= 0 or _is_tag(event):
      continue
    node = _ancestor(event, is_node)
    if node is not None:
      network, layer = scope.get(node.sequence_nr, "loss/").split("/")
      rows[(network, layer, "backward", node.name.split(": ")[-1])] += own_ms
      continue
    tag = _ancestor(event, _is_tag)
    network, layer = (tag.name if tag is not None else "update/").split("/")
    what = "optimizer, max-norm" if network == "update" else "forward"
    rows[(network, layer, what, event.name.replace("aten::", ""))] += own_ms
  return rows


def by_layer(rows):
  totals = collections.defaultdict(float)
  for (network, layer, what, _), ms in rows.items():
    totals[(network, layer, what)] += ms
  return totals


ORDER = {"teacher": 0, "student": 1, "loss": 2, "update": 3}


def layer_key(key):
  network, layer, what = key
  number = int(layer[4:]) if layer.startswith("conv") else 100 if layer == "fc" else 101
  return ORDER.get(network, 9), number, what != "forward"


def markdown(config_path, batch, steps, jax_result, torch_result):
  lines = [
    f"{config_path}, batch {batch}, {steps} profiled steps; ms per step.",
    "",
    f"Step time (unprofiled): fitnets_jax {jax_result[0]:.1f} ms"
    + (f", PyTorch eager {torch_result[0]:.1f} ms." if torch_result else "."),
    "",
    "| network | layer | pass | fitnets_jax ms | PyTorch ms | ours − PyTorch |",
    "|---|---|---|---|---|---|",
  ]
  ours, theirs = by_layer(jax_result[1]), by_layer(torch_result[1]) if torch_result else {}
  for key in sorted(set(ours) | set(theirs), key=layer_key):
    a, b = ours.get(key, 0.0), theirs.get(key)
    diff = f"{a - b:+.2f}" if b is not None else ""
    lines.append(f"| {' | '.join(key)} | {a:.2f} | {'' if b is None else f'{b:.2f}'} | {diff} |")
  total_b = sum(theirs.values()) if theirs else None
  lines.append(
    f"| all | | | {sum(ours.values()):.2f} | {'' if total_b is None else f'{total_b:.2f}'} | "
    + (f"{sum(ours.values()) - total_b:+.2f} |" if total_b is not None else "|")
  )
  for title, result in (
    ("fitnets_jax: the 15 costliest ops", jax_result),
    ("PyTorch: the 15 costliest ops", torch_result),
  ):
    if not result:
      continue
    lines += ["", f"{title}", "", "| network | layer | pass | op | ms |", "|---|---|---|---|---|"]
    for key, ms in sorted(result[1].items(), key=lambda kv: -kv[1])[:15]:
      lines.append(f"| {' | '.join(key)} | {ms:.2f} |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mnist.py")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--workdir", default="runs/step_profile")
  parser.add_argument("--no_torch", action="store_true", help="profile fitnets_jax only")
  parser.add_argument("--torch_only", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  config = load_config(args.config)
  config.method, config.batch_size, config.num_devices = "kd", args.batch, 1
  if args.torch_only:  # PyTorch and TensorFlow in one process can crash: PyTorch gets its own
    step_ms, rows = profile_torch(config, args.batch, args.steps)
    print(json.dumps([step_ms, [[*key, ms] for key, ms in rows.items()]]))
    return
  os.makedirs(args.workdir, exist_ok=True)
  torch_result = None
  if not args.no_torch:
    run = subprocess.run(
      [
        sys.executable,
        __file__,
        "--torch_only",
        "--config",
        args.config,
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
      ],
      capture_output=True,
      text=True,
    )
    if run.returncode:
      sys.exit(f"the PyTorch profile failed (is torch installed?):\n{run.stderr[-2000:]}")
    step_ms, rows = json.loads(run.stdout.strip().splitlines()[-1])
    torch_result = (step_ms, {tuple(r[:4]): r[4] for r in rows})
  jax_result = profile_jax(config, args.steps, args.workdir)
  text = markdown(args.config, args.batch, args.steps, jax_result, torch_result)
  print(text)
  with open(os.path.join(args.workdir, "step_profile.md"), "w") as f:
    f.write(text)
  record = {
    name: {"step_ms": r[0], "ops": [[*key, round(ms, 4)] for key, ms in sorted(r[1].items())]}
    for name, r in (("fitnets_jax", jax_result), ("pytorch", torch_result))
    if r
  }
  with open(os.path.join(args.workdir, "step_profile.json"), "w") as f:
    json.dump({"config": args.config, "batch": args.batch, "steps": args.steps, **record}, f, indent=2)


if __name__ == "__main__":
  main()

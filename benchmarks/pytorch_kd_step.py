"""Our FitNets KD-stage step against the same step in PyTorch eager, alternating, repeated.

  python benchmarks/pytorch_kd_step.py [--config configs/mnist.py] [--batch 128] [--steps 20] [--repeats 5]
  python benchmarks/pytorch_kd_step.py --config configs/svhn.py --steps 5 --repeats 3

The step: the config's maxout teacher's forward pass (inference) plus its maxout student's
forward/backward on H(y, P_S) + λ·H(P_T^τ, P_S^τ), RMSProp (decay 0.9) and the paper's max-norm:
configs/mnist.py's MNIST teacher → MNIST FitNet on 28×28×1, or configs/svhn.py's SVHN teacher →
the 13-layer FitNet on 32×32×3. The PyTorch networks are rebuilt from the same layer specs
(`fitnets_jax.models.maxout_spec`): maxout over consecutive channel groups, ceil-mode pooling, the
maxout dense layer, U(±0.005) weights (biases tied in both: the MNIST yamls' untied biases are not
rebuilt, a few thousand additions). Ours is `fitnets_jax.tools.benchmark` on the config's `kd` stage
(synthetic images through the real input pipeline), live and with the teacher cache (no teacher
pass), next to its bare JAX/Flax reference step.

Each repeat times both frameworks, each in a fresh process, the order alternating (JAX first in
even repeats, PyTorch first in odd ones), so that a machine's drift hits both alike. The table
gives each figure's median and range over the repeats and the median of the per-repeat ratios.
`--xla_defaults` also times the bare step compiled with XLA's default CPU options instead of the
library's (`fitnets_jax.compiler`). The record (`<workdir>/pytorch_kd_step.json`) holds every
repeat, the CPU model and its vector extensions, and the threads each framework used. Both
frameworks run where JAX runs: on its GPU (PyTorch on CUDA, timed with `torch.cuda.synchronize`)
when JAX sees one, else on every CPU core. PyTorch is needed for this script only (`pip install
torch`); it is not a dependency of the package.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def torch_maxout_net(spec, in_channels, image_size, num_classes, torch):
  """A PyTorch nn.Module equal in layout to fitnets_jax's MaxoutNet(**spec) (no batch norm)."""
  nn = torch.nn
  assert not spec.get("batch_norm"), "maxout nets without batch norm only"

  class Maxout(nn.Module):
    def __init__(self, pieces):
      super().__init__()
      self.pieces = pieces

    def forward(self, x):  # consecutive channel groups, as fitnets_jax.models.maxout.maxout
      n, c, h, w = x.shape
      return x.view(n, c // self.pieces, self.pieces, h, w).amax(2) if self.pieces > 1 else x

  class DenseMaxout(nn.Module):
    def __init__(self, inputs, units, pieces):
      super().__init__()
      self.linear, self.units, self.pieces = nn.Linear(inputs, units * pieces), units, pieces

    def forward(self, x):
      return self.linear(x).view(x.shape[0], self.units, self.pieces).amax(2)

  layers, channels, size = [], in_channels, image_size
  for s in spec["convs"]:
    layers += [nn.Conv2d(channels, s.features * s.pieces, s.kernel, padding=s.padding), Maxout(s.pieces)]
    size = size + 2 * s.padding - s.kernel + 1
    if s.pool:
      layers.append(nn.MaxPool2d(s.pool, s.pool_stride or s.pool, ceil_mode=True))
      size = -(-(size - s.pool) // (s.pool_stride or s.pool)) + 1
    if s.global_pool:
      layers.append(nn.AdaptiveMaxPool2d(1))
      size = 1
    channels = s.features
  layers.append(nn.Flatten())
  features = channels * size * size
  if spec.get("dense_units"):
    layers.append(DenseMaxout(features, spec["dense_units"], spec["dense_pieces"]))
    features = spec["dense_units"]
  net = nn.Sequential(*layers, nn.Linear(features, num_classes))
  with torch.no_grad():
    for p in net.parameters():
      p.uniform_(-spec["init_range"], spec["init_range"])
  return net


def time_torch(config, batch, steps, device="cpu", warmup=5):
  import torch

  from fitnets_jax.data import image_shape_and_classes
  from fitnets_jax.models import maxout_spec

  torch.set_num_threads(os.cpu_count())
  (size, _, channels), classes = image_shape_and_classes(config.dataset)
  build = lambda name: torch_maxout_net(maxout_spec(name), channels, size, classes, torch).to(device)
  teacher, student = build(config.teacher.model).eval(), build(config.student.model).train()
  opt = config.stages.student.optimizer
  optimizer = torch.optim.RMSprop(student.parameters(), lr=opt.learning_rate, alpha=opt.decay, eps=opt.eps)
  convs = [m for m in student if isinstance(m, torch.nn.Conv2d)]
  dense = [m.linear for m in student if hasattr(m, "linear")]
  logits_layer = student[-1]
  x = torch.randn(batch, channels, size, size, device=device)
  y = torch.randint(0, classes, (batch,), device=device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  tau, lam = config.kd.temperature, config.kd.lambda_start

  def step():
    with torch.no_grad():
      soft = torch.softmax(teacher(x) / tau, -1)
    logits = student(x)
    loss = (
      torch.nn.functional.cross_entropy(logits, y) - lam * (soft * torch.log_softmax(logits / tau, -1)).sum(-1).mean()
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():  # max-norm on each unit's incoming weights
      for m in convs:
        m.weight.copy_(torch.renorm(m.weight, 2, 0, opt.max_norm_conv))
      for m in dense:
        m.weight.copy_(torch.renorm(m.weight, 2, 0, opt.max_norm_dense))
      logits_layer.weight.copy_(torch.renorm(logits_layer.weight, 2, 0, opt.max_norm_logits))

  times = []
  for i in range(warmup + steps):
    started = time.perf_counter()
    step()
    sync()
    if i >= warmup:
      times.append(time.perf_counter() - started)
  threads = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
  return statistics.median(times) * 1e3, f"{torch.__version__} ({device})", threads


def time_jax(config, workdir, steps):
  """fitnets_jax.tools.benchmark's record of the config's KD stage (ours, the bare step, the cached step)."""
  from fitnets_jax.tools import benchmark

  return benchmark.run(
    config, workdir, warmup=5, timed=steps, synthetic_examples=4096, stages=("kd",), inference_batches=(1,), repeats=5
  )


def run_json(args, what, env=None):
  """This script run again with `args` in a subprocess; the JSON of its last output line."""
  run = subprocess.run(
    [sys.executable, __file__] + args, capture_output=True, text=True, env={**os.environ, **(env or {})}
  )
  if run.returncode:
    sys.exit(f"{what} failed:\n{run.stderr[-2000:]}")
  return json.loads(run.stdout.strip().splitlines()[-1])


def load_config(path):
  """The config file's get_config()."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("experiment_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def cpu_info():
  """The CPU's model name and which of the vector extensions that matter here it has (Linux)."""
  info = {"model": "unknown", "extensions": []}
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return info
  for line in text.splitlines():
    key, _, value = line.partition(":")
    if key.strip() == "model name" and info["model"] == "unknown":
      info["model"] = value.strip()
    if key.strip() == "flags":
      flags = set(value.split())
      wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
      info["extensions"] = [f for f in wanted if f in flags]
      break
  return info


def spread(values):
  values = [v for v in values if v is not None]
  return (statistics.median(values), min(values), max(values)) if values else (None, None, None)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mnist.py")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--xla_defaults", action="store_true", help="also time the bare step with XLA's defaults")
  parser.add_argument("--workdir", default="runs/pytorch_kd_step")
  parser.add_argument("--torch_only", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--torch_device", default="cpu", help=argparse.SUPPRESS)
  parser.add_argument("--jax_only", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  config = load_config(args.config)
  config.method, config.batch_size, config.num_devices = "kd", args.batch, 1
  if args.torch_only:  # PyTorch and TensorFlow in one process can crash: PyTorch gets its own
    print(json.dumps(time_torch(config, args.batch, args.steps, args.torch_device)))
    return
  if args.jax_only:
    record = time_jax(config, args.workdir, args.steps)
    print(json.dumps({**record["stages"][0], "platform": record["platform"], "device_kind": record["device_kind"]}))
    return

  from fitnets_jax import compiler

  common = ["--config", args.config, "--batch", str(args.batch), "--steps", str(args.steps)]
  jax_run = lambda r: run_json(common + ["--jax_only", "--workdir", os.path.join(args.workdir, f"jax{r}")], "JAX")
  repeats, torch_device, version, threads = [], "cpu", None, None
  for r in range(args.repeats):
    first_jax = r % 2 == 0
    ours = jax_run(r) if first_jax else None
    torch_device = "cuda" if (ours or {}).get("platform", "cpu") == "gpu" else torch_device
    torch_ms, version, threads = run_json(
      common + ["--torch_only", "--torch_device", torch_device], "the PyTorch step (is torch installed?)"
    )
    ours = ours or jax_run(r)
    repeats.append(
      {
        "order": "jax, torch" if first_jax else "torch, jax",
        "fitnets_jax_step_ms": ours["step_ms"],
        "bare_jax_step_ms": ours["reference_step_ms"],
        "fitnets_jax_cached_teacher_step_ms": ours["cached_step_ms"],
        "pytorch_eager_step_ms": round(torch_ms, 3),
        "ratio": round(torch_ms / ours["step_ms"], 3),
      }
    )
    print(f"repeat {r + 1}/{args.repeats} ({repeats[-1]['order']}): {json.dumps(repeats[-1])}", flush=True)
  defaults_ms = None
  if args.xla_defaults and ours.get("platform") == "cpu":  # the bare step compiled with XLA's default options
    defaults = run_json(
      common + ["--jax_only", "--workdir", os.path.join(args.workdir, "xla_defaults")],
      "the JAX step with XLA's defaults",
      {compiler.DEFAULTS_VARIABLE: "1"},
    )
    defaults_ms = defaults["reference_step_ms"]
  column = lambda key: spread([r[key] for r in repeats])
  result = {
    "config": args.config,
    "batch": args.batch,
    "steps": args.steps,
    "repeats": repeats,
    "teacher": config.teacher.model,
    "student": config.student.model,
    "median": {key: column(key)[0] for key in repeats[0] if key != "order"},
    "bare_jax_xla_defaults_step_ms": defaults_ms,
    "pytorch": version,
    "threads": {
      "pytorch": threads,
      "xla_cpu": f"one intra-op pool of {os.cpu_count()} threads (XLA's default: every core)",
    },
    "device": ours.get("device_kind"),
    "cpu": cpu_info(),
    "cpu_cores": os.cpu_count(),
  }
  print(f"{result['cpu']['model']} ({', '.join(result['cpu']['extensions'])}), {os.cpu_count()} cores")
  print(f"{config.teacher.model} → {config.student.model}, batch {args.batch}, {args.repeats} alternating repeats")
  for name, key in (
    ("fitnets_jax (jit)", "fitnets_jax_step_ms"),
    ("bare JAX/Flax (jit)", "bare_jax_step_ms"),
    ("fitnets_jax, teacher cache", "fitnets_jax_cached_teacher_step_ms"),
    (f"PyTorch {version} eager", "pytorch_eager_step_ms"),
  ):
    median, low, high = column(key)
    if median is not None:
      print(f"{name:32s} {median:8.2f} ms/step ({low:.2f}–{high:.2f})  {args.batch / median * 1e3:8,.0f} img/s")
  if defaults_ms:
    print(f"{'bare JAX/Flax, XLA defaults':32s} {defaults_ms:8.2f} ms/step (once)")
  median, low, high = column("ratio")
  print(f"PyTorch eager ÷ fitnets_jax step time: {median:.2f} (median of {args.repeats}; {low:.2f}–{high:.2f})")
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "pytorch_kd_step.json"), "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()

"""Our FitNets KD-stage step against the same step in PyTorch eager, measured in one run.

  python benchmarks/pytorch_kd_step.py [--batch 128] [--steps 30] [--config configs/mnist.py]

The step: the maxout MNIST teacher's forward pass (inference) plus the thin maxout student's
forward/backward on H(y, P_S) + λ·H(P_T^τ, P_S^τ), RMSProp (decay 0.9) and the paper's max-norm,
batch 128 of 28×28×1 images. The PyTorch networks are rebuilt from the same layer specs
(`fitnets_jax.models.maxout_spec`): maxout over consecutive channel groups, ceil-mode pooling,
U(±0.005) weights. Ours is `fitnets_jax.tools.benchmark` on the config's `kd` stage (synthetic MNIST-sized
images through the real input pipeline), live and with the teacher cache (no teacher pass), next to
its bare JAX/Flax reference step. On CPU that bare step is also timed compiled with XLA's default
options instead of the library's (`fitnets_jax.compiler`), in a subprocess. Both frameworks run
where JAX runs: on its GPU (PyTorch on CUDA, timed with `torch.cuda.synchronize`) when JAX sees one,
else on every CPU core. PyTorch is needed for this script only (`pip install torch`); it is not a
dependency of the package.
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
  """A PyTorch nn.Module equal in layout to fitnets_jax's MaxoutNet(**spec) (no dense layer, no BN)."""
  nn = torch.nn
  assert not spec.get("dense_units") and not spec.get("batch_norm"), "MNIST maxout nets only"

  class Maxout(nn.Module):
    def __init__(self, pieces):
      super().__init__()
      self.pieces = pieces

    def forward(self, x):  # consecutive channel groups, as fitnets_jax.models.maxout.maxout
      n, c, h, w = x.shape
      return x.view(n, c // self.pieces, self.pieces, h, w).amax(2) if self.pieces > 1 else x

  layers, channels, size = [], in_channels, image_size
  for s in spec["convs"]:
    layers += [nn.Conv2d(channels, s.features * s.pieces, s.kernel, padding=s.padding), Maxout(s.pieces)]
    size = size + 2 * s.padding - s.kernel + 1
    if s.pool:
      layers.append(nn.MaxPool2d(s.pool, s.pool_stride or s.pool, ceil_mode=True))
      size = -(-(size - s.pool) // (s.pool_stride or s.pool)) + 1
    channels = s.features
  net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * size * size, num_classes))
  with torch.no_grad():
    for p in net.parameters():
      p.uniform_(-spec["init_range"], spec["init_range"])
  return net


def time_torch(config, batch, steps, device="cpu", warmup=5):
  import torch

  from fitnets_jax.models import maxout_spec

  torch.set_num_threads(os.cpu_count())
  teacher = torch_maxout_net(maxout_spec(config.teacher.model), 1, 28, 10, torch).eval().to(device)
  student = torch_maxout_net(maxout_spec(config.student.model), 1, 28, 10, torch).train().to(device)
  opt = config.stages.student.optimizer
  optimizer = torch.optim.RMSprop(student.parameters(), lr=opt.learning_rate, alpha=opt.decay, eps=opt.eps)
  convs = [m for m in student if isinstance(m, torch.nn.Conv2d)]
  logits_layer = student[-1]
  x, y = torch.randn(batch, 1, 28, 28, device=device), torch.randint(0, 10, (batch,), device=device)
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
      logits_layer.weight.copy_(torch.renorm(logits_layer.weight, 2, 0, opt.max_norm_logits))

  times = []
  for i in range(warmup + steps):
    started = time.perf_counter()
    step()
    sync()
    if i >= warmup:
      times.append(time.perf_counter() - started)
  return statistics.median(times) * 1e3, f"{torch.__version__} ({device})"


def time_jax(config, workdir, steps):
  """fitnets_jax.tools.benchmark's record of the config's KD stage (ours, the bare step, the cached step)."""
  from fitnets_jax.tools import benchmark

  return benchmark.run(config, workdir, warmup=5, timed=steps, synthetic_examples=4096, stages=("kd",))


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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mnist.py")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=30)
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
    print(json.dumps(time_jax(config, args.workdir, args.steps)["stages"][0]))
    return

  from fitnets_jax import compiler

  ours = time_jax(config, args.workdir, args.steps)
  ours_ms = ours["stages"][0]["step_ms"]
  common = ["--config", args.config, "--batch", str(args.batch), "--steps", str(args.steps)]
  defaults_ms = None
  if ours["compiler_options"]:  # the same bare step compiled with XLA's default options
    defaults = run_json(
      common + ["--jax_only", "--workdir", os.path.join(args.workdir, "xla_defaults")],
      "the JAX step with XLA's defaults",
      {compiler.DEFAULTS_VARIABLE: "1"},
    )
    defaults_ms = defaults["reference_step_ms"]
  torch_device = "cuda" if ours["platform"] == "gpu" else "cpu"
  torch_ms, version = run_json(
    common + ["--torch_only", "--torch_device", torch_device], "the PyTorch step (is torch installed?)"
  )
  result = {
    "batch": args.batch,
    "teacher": config.teacher.model,
    "student": config.student.model,
    "fitnets_jax_step_ms": ours_ms,
    "fitnets_jax_images_per_s": round(args.batch / ours_ms * 1e3, 1),
    "bare_jax_step_ms": ours["stages"][0]["reference_step_ms"],
    "bare_jax_xla_defaults_step_ms": defaults_ms,
    "compiler_options": ours["compiler_options"],
    "fitnets_jax_cached_teacher_step_ms": ours["stages"][0]["cached_step_ms"],
    "pytorch_eager_step_ms": round(torch_ms, 3),
    "pytorch_images_per_s": round(args.batch / torch_ms * 1e3, 1),
    "pytorch": version,
    "device": ours["device_kind"],
    "cpu_cores": os.cpu_count(),
  }
  rows = (
    ("fitnets_jax (jit)", ours_ms),
    ("bare JAX/Flax (jit)", result["bare_jax_step_ms"]),
    ("bare JAX/Flax, XLA's defaults", defaults_ms),
    ("fitnets_jax, teacher cache", result["fitnets_jax_cached_teacher_step_ms"]),
    (f"PyTorch {version} eager", torch_ms),
  )
  for name, ms in rows:
    if ms:
      print(f"{name:32s} {ms:8.2f} ms/step  {args.batch / ms * 1e3:8,.0f} img/s")
  print(f"PyTorch eager ÷ fitnets_jax step time: {torch_ms / ours_ms:.2f}")
  with open(os.path.join(args.workdir, "pytorch_kd_step.json"), "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()

"""Where the KD step's time goes, layer by layer, in fitnets_jax and in PyTorch eager.

  python benchmarks/layer_profile.py [--config configs/mnist.py] [--batch 128] [--repeats 20]

Each maxout conv layer of the config's teacher (forward, in inference) and student (forward and
backward: the gradients of the output's sum with respect to the input and the weights), alone, on an
input of the shape the step gives it. In JAX it is the library's own `MaxoutConv` module (with its
CPU forms of maxout, pooling and padding), jitted with the library's compiler options; in PyTorch the
same conv, maxout over consecutive channel groups and ceil-mode max-pool, eager, on every core.
Each figure is the median of `--repeats` calls after warm-up; the frameworks alternate layer by
layer. The per-layer sum is printed next to nothing else: the step adds the dense layers, the loss,
the optimizer and the max-norm, which `benchmarks/pytorch_kd_step.py` times whole. Needs torch.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pytorch_kd_step import load_config  # noqa: E402  (this folder's sibling script)


def median_ms(call, repeats, warmup=3):
  for _ in range(warmup):
    call()
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    call()
    times.append(time.perf_counter() - started)
  return statistics.median(times) * 1e3


def jax_layer(spec, shape, batch, train, repeats):
  import jax
  import jax.numpy as jnp

  from fitnets_jax import compiler
  from fitnets_jax.models.maxout import MaxoutConv

  module = MaxoutConv(spec, init_range=0.005)
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, *shape))
  params = module.init(jax.random.PRNGKey(1), x)
  if train:
    f = compiler.jit(jax.grad(lambda p, x: jnp.sum(module.apply(p, x)), argnums=(0, 1)))
  else:
    f = compiler.jit(module.apply)
  return median_ms(lambda: jax.block_until_ready(f(params, x)), repeats)


def torch_layer(spec, shape, batch, train, repeats, torch):
  nn = torch.nn
  h, w, c = shape

  class Maxout(nn.Module):
    def forward(self, x):
      n, ch, hh, ww = x.shape
      return x.view(n, ch // spec.pieces, spec.pieces, hh, ww).amax(2) if spec.pieces > 1 else x

  layers = [nn.Conv2d(c, spec.features * spec.pieces, spec.kernel, padding=spec.padding), Maxout()]
  if spec.pool:
    layers.append(nn.MaxPool2d(spec.pool, spec.pool_stride or spec.pool, ceil_mode=True))
  if spec.global_pool:
    layers.append(nn.AdaptiveMaxPool2d(1))
  net = nn.Sequential(*layers)
  x = torch.randn(batch, c, h, w, requires_grad=train)

  def call():
    if train:
      net.zero_grad(set_to_none=True)
      x.grad = None
      net(x).sum().backward()
    else:
      with torch.no_grad():
        net(x)

  return median_ms(call, repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mnist.py")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  import torch

  from fitnets_jax import models
  from fitnets_jax.data import image_shape_and_classes
  from fitnets_jax.network import network

  torch.set_num_threads(os.cpu_count())
  config = load_config(args.config)
  shape, classes = image_shape_and_classes(config.dataset)
  rows = []
  for role, name, train in (("teacher", config.teacher.model, False), ("student", config.student.model, True)):
    spec = models.maxout_spec(name)
    net = network(name, models.get_model(name, classes), shape)
    by_name = {layer.name: layer for layer in net.layers}
    layer_input = shape
    for i, conv in enumerate(spec["convs"], start=1):
      layer = by_name[f"conv{i}"]
      ours = jax_layer(conv, layer_input, args.batch, train, args.repeats)
      theirs = torch_layer(conv, layer_input, args.batch, train, args.repeats, torch)
      rows.append((role, f"conv{i}", conv, layer_input, layer.macs, ours, theirs))
      print(f"{role} conv{i}: ours {ours:.2f} ms, PyTorch {theirs:.2f} ms", flush=True)
      layer_input = layer.shape
  print()
  print("| network | layer | kernel, pieces, pad, pool | input | MACs/example | pass | ours ms | PyTorch ms | ratio |")
  print("|---|---|---|---|---|---|---|---|---|")
  for role, name, conv, shape_in, macs, ours, theirs in rows:
    pool = f"{conv.pool}/{conv.pool_stride or conv.pool}" if conv.pool else ("global" if conv.global_pool else "—")
    what = "fwd+bwd" if role == "student" else "fwd"
    print(
      f"| {role} | {name} | {conv.kernel}×{conv.kernel}, {conv.features}×{conv.pieces}, {conv.padding}, {pool} | "
      f"{'×'.join(map(str, shape_in))} | {macs:,} | {what} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f} |"
    )
  total = lambda i: sum(r[i] for r in rows)
  print(f"| all | | | | | | {total(5):.2f} | {total(6):.2f} | {total(5) / total(6):.2f} |")


if __name__ == "__main__":
  main()

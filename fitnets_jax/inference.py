"""Measured inference speed of a network: what FitNets' Table 5 reports as speed-up, measured
rather than derived from multiplications.

`measure(net, variables, batch_sizes)` times the network's inference (`train=False`) on one device,
on already-preprocessed inputs, compilation excluded: per batch size, after `warmup` calls, each of
`repeats` calls is ended by `block_until_ready`; it reports the latency's median (p50) and 90th
percentile (p90) in ms and images/s at the median. `speedups(teacher, student)` divides the
teacher's median latency by the student's at each batch size both were timed at.
"""

import time

import jax
import numpy as np

from fitnets_jax import compiler
from fitnets_jax.network import predict

DEFAULT_BATCHES = (1, 256)


def measure(net, variables, batch_sizes=DEFAULT_BATCHES, repeats=50, warmup=5, seed=0):
  """[{"batch", "p50_ms", "p90_ms", "images_per_s"}] of Network `net` with `variables`, per batch size."""
  device = jax.local_devices()[0]
  variables = jax.device_put(variables, device)
  fn = compiler.jit(lambda v, x: predict(net, v, x))
  rng = np.random.default_rng(seed)
  results = []
  for batch in batch_sizes:
    x = jax.device_put(rng.normal(size=(batch, *net.input_shape)).astype(np.float32), device)
    compiled = fn.lower(variables, x).compile()  # compilation is not timed
    for _ in range(warmup):
      compiled(variables, x).block_until_ready()
    seconds = []
    for _ in range(repeats):
      start = time.perf_counter()
      compiled(variables, x).block_until_ready()
      seconds.append(time.perf_counter() - start)
    p50, p90 = np.percentile(seconds, [50, 90])
    results.append(
      {
        "batch": int(batch),
        "p50_ms": round(1e3 * float(p50), 4),
        "p90_ms": round(1e3 * float(p90), 4),
        "images_per_s": round(batch / float(p50), 1),
      }
    )
  return results


def speedups(teacher, student):
  """[{"batch", "speedup": teacher p50 ÷ student p50}] over the batch sizes both `measure` results hold."""
  by_batch = {r["batch"]: r for r in student}
  return [
    {"batch": t["batch"], "speedup": round(t["p50_ms"] / by_batch[t["batch"]]["p50_ms"], 2)}
    for t in teacher
    if t["batch"] in by_batch
  ]


def describe_device():
  d = jax.local_devices()[0]
  return f"{d.platform}: {getattr(d, 'device_kind', d.platform)}"

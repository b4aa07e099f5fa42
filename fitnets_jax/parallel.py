"""The data-parallel layout: a 1-D device mesh with the batch sharded on its `data` axis and
everything else (state, teachers) replicated. The gradient all-reduce is XLA's, inserted by
`jax.jit` from these shardings (the modern form of `pmap`)."""

import collections

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def replicated(mesh):
  return NamedSharding(mesh, P())


def replicate(tree, mesh):
  """Host arrays (the same on every process) → arrays replicated over the mesh, as fresh copies
  (a donated state must not alias arrays anyone else holds). On several hosts each process builds
  its own devices' copies: `jax.device_put` would first gather every leaf from every process to
  check that they agree, one collective per leaf (minutes for a network's state)."""
  sharding = replicated(mesh)
  host = jax.tree.map(lambda x: np.array(x), jax.device_get(tree))
  if jax.process_count() == 1:
    return jax.device_put(host, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]), host)


def batch_sharding(mesh):
  return NamedSharding(mesh, P("data"))


def to_global(batch, mesh):
  """This host's numpy batch → global arrays sharded over the mesh's 'data' axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def prefetch_to_device(batches, mesh, size=2):
  """Keeps `size` batches in flight to the devices ahead of the step that consumes them."""
  queue = collections.deque()
  for batch in batches:
    queue.append(to_global(batch, mesh))
    if len(queue) > size:
      yield queue.popleft()
  yield from queue

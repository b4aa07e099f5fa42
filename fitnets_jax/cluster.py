"""Where a run runs: joining several hosts into one JAX cluster, and saying which backend trains.

`distributed=True` calls `jax.distributed.initialize()` before anything touches a device. Cloud TPU
VMs, SLURM, Open MPI and Kubernetes jobs are found automatically; any other cluster names its
coordinator (`cluster.coordinator_address`, host:port of process 0), `cluster.num_processes` and
each process's `cluster.process_id`. On CPUs the processes' collectives go through gloo.
"""

import glob
import os
import sys

import jax

from fitnets_jax.errors import FitnetsError

# Device files a GPU or TPU driver creates; JAX on CPU beside them is almost always an install mistake.
ACCELERATOR_FILES = {
  "an NVIDIA GPU": "/dev/nvidia[0-9]*",
  "a TPU": "/dev/accel[0-9]*",
  "a TPU (v5e+)": "/dev/vfio/[0-9]*",
}


def initialize(config):
  """Joins the cluster once when `config.distributed`; a cluster that cannot be joined is one paragraph."""
  if not config.distributed or jax.distributed.is_initialized():
    return
  c = config.cluster
  given = dict(
    coordinator_address=c.coordinator_address or None,
    num_processes=c.num_processes or None,
    process_id=c.process_id if c.process_id >= 0 else None,
  )
  try:
    jax.distributed.initialize(
      **given, initialization_timeout=c.timeout_s, heartbeat_timeout_seconds=c.heartbeat_timeout_s
    )
  except (ValueError, RuntimeError, TypeError) as e:
    set_keys = ", ".join(f"cluster.{k}={v!r}" for k, v in given.items() if v is not None) or "no cluster.* keys"
    raise FitnetsError(
      f"distributed=True could not join the cluster with {set_keys} ({type(e).__name__}: "
      f"{(str(e).strip().splitlines() or [''])[0][:300]}). Cloud TPU VMs, SLURM, Open MPI and Kubernetes are "
      "detected by themselves; elsewhere set --config.cluster.coordinator_address=HOST:PORT (process 0's "
      "address, the same on every process), --config.cluster.num_processes=N and, on each process, "
      "--config.cluster.process_id=0…N−1."
    ) from None


def describe(config=None):
  """One line: JAX's backend, its devices and processes; on several hosts, what a lost host does."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  line = (
    f"JAX {jax.__version__} on {jax.default_backend()}: {len(devices)} device(s) ({', '.join(kinds)}) in "
    f"{jax.process_count()} process(es), {jax.local_device_count()} here"
  )
  if jax.process_count() > 1 and config is not None:
    line += (
      f". A host that dies or hangs is waited for {config.cluster.heartbeat_timeout_s} s "
      "(cluster.heartbeat_timeout_s), then JAX aborts the others (SIGABRT, exit status 134): the checkpoints "
      "are intact, restart every host"
    )
  return line


def accelerator_left_idle():
  """The accelerator this machine's drivers show while JAX runs on CPU, or None (also when JAX_PLATFORMS
  asks for the CPU on purpose)."""
  if jax.default_backend() != "cpu" or os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
    return None
  return next((name for name, pattern in ACCELERATOR_FILES.items() if glob.glob(pattern)), None)


def warn_if_accelerator_idle():
  """Warns on stderr when the machine has a GPU or TPU but JAX trains on its CPU."""
  idle = accelerator_left_idle()
  if idle:
    print(
      f"warning: this machine has {idle}, but JAX runs on the CPU: the installed jaxlib has no plugin for "
      "it. Install the accelerator's build (see docs/install.md: pip install -e '.[cuda12]' or '.[tpu]'), or "
      "set JAX_PLATFORMS=cpu to train on the CPU on purpose.",
      file=sys.stderr,
      flush=True,
    )


def agree(failure):
  """On several hosts, every host learns whether any host refused the run (`failure`: this host's
  FitnetsError or None) before any of them goes on: a host that refused raises its own paragraph, the
  others one naming it, so none is left waiting in a collective for a host that has exited."""
  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils

    refused = np.asarray(multihost_utils.process_allgather(np.int32(failure is not None))).reshape(-1)
    first = int(np.argmax(refused)) if refused.any() else None
    if failure is None and first is not None:
      failure = FitnetsError(
        f"process {first} refused the run as bad input (its own message says why); this process stops too, "
        "having changed nothing."
      )
  if failure is not None:
    raise failure

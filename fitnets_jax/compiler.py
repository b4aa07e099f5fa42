"""How the library compiles its steps: `jit` is `jax.jit` plus the XLA options chosen for the backend.

On CPU, XLA (jaxlib 0.10) hands convolutions and matrix products to YNNPACK fusions by default. On
this library's networks XLA's own Eigen-based kernels are faster: on 2 cores the MNIST FitNets KD
step goes from 172–192 to 117–121 ms and the SVHN teacher's step from 3.0 to 2.0 s (README,
*Measured*). So on CPU the steps are compiled with no YNNPACK fusions (`CPU_OPTIONS`). GPUs and
TPUs get XLA's defaults.

To compile with XLA's defaults on CPU too, set `FITNETS_JAX_XLA_DEFAULTS=1`; an option already set
in `XLA_FLAGS` is left to it. If this XLA does not know an option, the defaults are used.
"""

import functools
import os

import jax

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}   # "": no YNNPACK fusions
DEFAULTS_VARIABLE = "FITNETS_JAX_XLA_DEFAULTS"


def options():
  """The compiler options for the default backend, or None for XLA's defaults."""
  if jax.default_backend() != "cpu" or os.environ.get(DEFAULTS_VARIABLE, "0") not in ("", "0"):
    return None
  flags = os.environ.get("XLA_FLAGS", "")
  chosen = {name: value for name, value in CPU_OPTIONS.items() if f"--{name}" not in flags}
  return chosen if chosen and _accepted(tuple(chosen.items())) else None


@functools.cache
def _accepted(items):
  """Whether this XLA compiles with these options (an option it does not know is an error)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(items)).lower(1.0).compile()
  except Exception:   # an option it does not know: keep XLA's defaults
    return False
  return True


def jit(fn, **kwargs):
  """`jax.jit(fn, **kwargs)` compiled with `options()`."""
  return jax.jit(fn, compiler_options=options(), **kwargs)

"""How the library compiles its steps: `jit` is `jax.jit` plus the XLA options chosen for the backend.

On CPU, XLA (jaxlib 0.10) hands convolutions and matrix products to YNNPACK fusions by default. On
this library's networks XLA's own Eigen-based kernels are faster: on 2 cores the MNIST FitNets KD
step goes from 172–192 to 117–121 ms and the SVHN teacher's step from 3.0 to 2.0 s
(docs/measured.md). So on CPU the steps are compiled with no YNNPACK fusions (`CPU_OPTIONS`). GPUs
and TPUs get XLA's defaults.

Programs that run once (a stage's initial state) are compiled on CPU with LLVM's optimisation level
1 instead of 2 (`RUN_ONCE_OPTIONS`): 3–6× less compile time (digits_student 10 → 2 s, ResNet-18
13 → 5 s on 2 cores), and the same values, bit for bit, as running the initialisers op by op
(tests/test_features.py checks every model), which compiles dozens of small programs instead.

To compile with XLA's defaults on CPU too, set `FITNETS_JAX_XLA_DEFAULTS=1`; an option already set
in `XLA_FLAGS` is left to it. If this XLA does not know an option, the defaults are used.

Compiled programs are kept in JAX's persistent compilation cache (`config.compilation_cache`,
`use_cache`), so a repeated or resumed run loads them instead of compiling: on local disk by
default, or in the workdir (a bucket too), or nowhere ("off").
"""

import functools
import os

import jax
import jax.numpy as jnp

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}  # "": no YNNPACK fusions
RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 1}
DEFAULTS_VARIABLE = "FITNETS_JAX_XLA_DEFAULTS"


CACHE_SETTINGS = ("local", "workdir", "off")  # or a folder of your own (config.compilation_cache)
CACHE_FOLDER = "compilation_cache"  # under the workdir, with compilation_cache="workdir"


def cache_folder(setting, workdir):
  """The folder of the persistent compilation cache `setting` names, or None ("off"). "local":
  $JAX_COMPILATION_CACHE_DIR when set, else $XDG_CACHE_HOME (~/.cache)/fitnets_jax/jax_compilation_cache."""
  from fitnets_jax import files

  if setting == "off":
    return None
  if setting == "workdir":
    return files.join(files.absolute(workdir), CACHE_FOLDER)
  if setting == "local":
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(home, "fitnets_jax", "jax_compilation_cache")
  return setting


def use_cache(setting, workdir):
  """Points JAX's persistent compilation cache at `cache_folder(setting, workdir)` (or turns it off), for
  the programs compiled from now on in this process; returns the folder or None."""
  from jax.experimental.compilation_cache import compilation_cache

  folder = cache_folder(setting, workdir)
  if (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir) != (folder is not None, folder):
    jax.config.update("jax_enable_compilation_cache", folder is not None)
    jax.config.update("jax_compilation_cache_dir", folder)
    compilation_cache.reset_cache()  # the cache reads these settings once; start again with the new ones
  return folder


def options(run_once=False):
  """The compiler options for the default backend (with `run_once`, for a program run once), or None
  for XLA's defaults."""
  if jax.default_backend() != "cpu" or os.environ.get(DEFAULTS_VARIABLE, "0") not in ("", "0"):
    return None
  flags = os.environ.get("XLA_FLAGS", "")
  wanted = {**CPU_OPTIONS, **(RUN_ONCE_OPTIONS if run_once else {})}
  chosen = {name: value for name, value in wanted.items() if f"--{name}" not in flags}
  return chosen if chosen and _accepted(tuple(chosen.items())) else None


@functools.cache
def _accepted(items):
  """Whether this XLA compiles with these options (an option it does not know is an error)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(items)).lower(1.0).compile()
  except Exception:  # an option it does not know: keep XLA's defaults
    return False
  return True


def jit(fn, run_once=False, **kwargs):
  """`jax.jit(fn, **kwargs)` compiled with `options(run_once)`."""
  return jax.jit(fn, compiler_options=options(run_once), **kwargs)


def run_once(fn, *args):
  """`fn(*args)` as one program compiled with `options(run_once=True)`; inside a function being traced
  (jit, eval_shape), `fn(*args)` becomes part of that function's program instead."""
  if isinstance(jnp.zeros(()), jax.core.Tracer):
    return fn(*args)
  return jit(fn, run_once=True)(*args)

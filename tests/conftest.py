"""Test set-up: 4 virtual CPU devices (for the 1-vs-4 device test), quiet TensorFlow, tiny configs."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # as the command line starts TensorFlow (fitnets_jax.main)
# One compilation cache for both workers and every subprocess (restarted runs, notebook kernels): the
# many tests that compile the same small steps compile them once. Every program is kept, however fast
# it compiled: the suite's ~200 runs repeat the same initialisations, evaluations and steps (8 % less
# time on the catalogue tests than with a 0.3 s floor).
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax_compilation_cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402
from absl import logging  # noqa: E402

logging.set_verbosity(logging.WARNING)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(items):
  """Tests marked `first` run first: with two workers, the longest one then overlaps all the others."""
  items.sort(key=lambda item: item.get_closest_marker("first") is None)


def load_config(name, arg=None):
  """configs/<name>.py's get_config(arg), as the command line would load it."""
  from fitnets_jax import config

  return config.load(os.path.join(ROOT, "configs", f"{name}.py" + (f":{arg}" if arg else "")))


def tiny_digits(method="fitnets", teacher=24, hint=8, student=16, **overrides):
  """The quick-start config shrunk to a few steps on one device."""
  c = load_config("digits")
  c.method = method
  c.num_devices = 1
  c.batch_size = 32
  c.log_every_steps = 4
  c.checkpoint_every_steps = 4
  c.keep_checkpoints = 100
  c.stages.teacher.steps = teacher
  c.stages.hint.steps = hint
  c.stages.student.steps = student
  return with_overrides(c, overrides)


def with_overrides(config, overrides):
  """Sets dotted keys ("stages.hint.steps") of `config`; returns it."""
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


@pytest.fixture
def digits_config():
  return tiny_digits

"""Test set-up: 4 virtual CPU devices (for the 1-vs-4 device test), quiet TensorFlow, tiny configs."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from absl import logging  # noqa: E402

logging.set_verbosity(logging.WARNING)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, arg=None):
  """configs/<name>.py's get_config(), as the command line would load it."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


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

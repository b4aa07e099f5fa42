"""fitnets_jax: knowledge distillation in JAX/Flax, built around FitNets (Romero et al., 2015)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tf.data only; keep TensorFlow's C++ start-up quiet.

from fitnets_jax.errors import FitnetsError  # noqa: E402

__all__ = ["FitnetsError", "run"]


def run(config, workdir):
  """Runs the configured method end to end; see `fitnets_jax.train.run`."""
  from fitnets_jax import train  # Imported lazily: keeps `import fitnets_jax` light.

  return train.run(config, workdir)

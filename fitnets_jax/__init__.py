"""fitnets_jax: knowledge distillation in JAX/Flax, built around FitNets (Romero et al., 2015)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tf.data only; keep TensorFlow's C++ start-up quiet.

from fitnets_jax.errors import FitnetsError  # noqa: E402

__all__ = ["FitnetsError", "load_model", "run"]


def run(config, workdir, data=None):
  """Runs the configured method end to end; see `fitnets_jax.train.run`. `data`: your own dataset as a
  `fitnets_jax.data.Arrays` (NumPy arrays, or `data.from_tf_data(…)`), with `dataset.name='arrays'`."""
  from fitnets_jax import train  # Imported lazily: keeps `import fitnets_jax` light.

  return train.run(config, workdir, data)


def load_model(path, network="student", trust_code=False):
  """A saved network ready to predict from raw images, its files verified first; see
  `fitnets_jax.saved.load_model` (and its security model for `trust_code`)."""
  from fitnets_jax import saved

  return saved.load_model(path, network, trust_code)

"""Distillation methods, one module each: `stages(ctx) -> list[Stage]` and `USES_TEACHER`."""

from fitnets_jax.errors import one_of
from fitnets_jax.methods import fitnets, kd, scratch

METHODS = {"fitnets": fitnets, "kd": kd, "scratch": scratch}


def get(name):
  """The method module called `name`; unknown names raise FitnetsError listing the known ones."""
  return METHODS[one_of("method", name, tuple(METHODS))]

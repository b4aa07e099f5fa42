"""Distillation methods, one module each: `stages(ctx) -> list[Stage]` and `USES_TEACHER`."""

from fitnets_jax.errors import one_of
from fitnets_jax.methods import attention, byot, dml, fitnets, fsp, kd, multi_teacher, scratch

METHODS = {"fitnets": fitnets, "kd": kd, "scratch": scratch, "fsp": fsp, "at": attention,
           "multi_teacher": multi_teacher, "dml": dml, "byot": byot}


def get(name):
  """The method module called `name`; unknown names raise FitnetsError listing the known ones."""
  return METHODS[one_of("method", name, tuple(METHODS))]

"""Distillation methods, one module each, found here by their `METHOD` record (`base.Method`).

Adding a method is one module in this folder that defines `METHOD = Method(name=..., stages=...)`
(plus its config defaults, a config file and tests): nothing else lists the methods.
"""

import importlib
import pkgutil

from fitnets_jax.errors import one_of


def _discover():
  found = {}
  for info in pkgutil.iter_modules(__path__):
    if info.name == "base":
      continue
    method = getattr(importlib.import_module(f"{__name__}.{info.name}"), "METHOD", None)
    if method is not None:
      assert method.name not in found, f"two modules define method {method.name!r}"
      found[method.name] = method
  return dict(sorted(found.items()))


METHODS = _discover()  # name → Method


def get(name):
  """The `Method` called `name`; unknown names raise FitnetsError listing the known ones."""
  return METHODS[one_of("method", name, tuple(METHODS))]


def config_defaults():
  """{config section: default} of every method, each section owned by one method."""
  sections = {}
  for method in METHODS.values():
    for key, value in method.defaults().items():
      assert key not in sections, f"config section {key!r} is defined by two methods"
      sections[key] = value
  return sections

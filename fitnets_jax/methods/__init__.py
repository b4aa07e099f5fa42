"""Distillation methods: one module each, plus `registry` (the one list of methods) and `shared` (the
stages and config sections several methods use).

Adding a method is one module in this folder named after it that defines `METHOD = Method(name=...,
stages=...)` (plus a config file and tests), or `register(Method(...))` from your own code:
`fitnets_jax.methods.registry` finds both, and everything that lists methods reads it.
"""

from fitnets_jax.methods.registry import Method, config_defaults, get, methods, names, register

__all__ = ["Method", "config_defaults", "get", "methods", "names", "register"]

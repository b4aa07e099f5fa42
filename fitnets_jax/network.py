"""A network: a flax module with its layer table, built from a config entry, and its forward pass.

`build_network` makes the `Network` of a config entry (`teacher`, `student`, `cohort[i]`, …), and
`forward` runs it with `capture_intermediates` (`fitnets_jax.features`), in the config's activation
dtype. Every part of the library that runs a network goes through `forward` or `predict`.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from fitnets_jax import compiler, features, models
from fitnets_jax.errors import check

COMPUTE_DTYPES = ("float32", "bfloat16")  # config.dtype: the activations' dtype


@dataclasses.dataclass
class Network:
  """A model with its layer table (names, shapes, params, MACs)."""

  name: str
  module: Any
  input_shape: tuple
  layers: list
  params: int
  macs: int
  sections: tuple = ()  # ((input layer, output layer), …) of models with named sections
  dtype: str = "float32"  # activations' dtype (config.dtype); parameters stay float32
  depth: int = 0  # weight layers (conv and dense) on the main path, as papers count layers
  paper_params: int = 0  # the FitNets paper's count (features.paper_params)

  def abstract_variables(self):
    """Shapes and dtypes of all variables (no computation)."""
    return jax.eval_shape(
      lambda: self.module.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1,) + self.input_shape), train=False)
    )

  def init(self, rng):
    """Fresh (params, batch_stats); batch_stats is {} for models without batch norm. One program
    compiled for a single run (`compiler.RUN_ONCE_OPTIONS`), with the values op-by-op execution gives;
    inside a traced function (a stage's initial state), part of that function's program."""
    variables = compiler.run_once(self._init_variables, rng)
    return variables["params"], variables.get("batch_stats", {})

  def _init_variables(self, rng):
    return self.module.init({"params": rng, "dropout": rng}, jnp.zeros((1,) + self.input_shape), train=False)

  def describe(self):
    return {
      "model": self.name,
      "layers": self.depth,
      "params": self.params,
      "paper_params": self.paper_params,
      "macs": self.macs,
    }


def network(name, module, input_shape, dtype="float32"):
  """A Network with its layer table, traced from shapes only."""
  net = Network(name, module, tuple(input_shape), [], 0, 0, tuple(getattr(module, "sections", ())), dtype)
  abstract = net.abstract_variables()
  net.layers = features.describe(module, abstract, input_shape)
  net.params, net.macs = features.count_params(abstract["params"]), features.total_macs(net.layers)
  net.depth = features.depth(net.layers)
  net.paper_params = features.paper_params(net.layers, abstract["params"])
  return net


def build_network(key, cfg, num_classes, image_shape, dtype="float32"):
  """The Network of `cfg.model` (dropout `cfg.dropout`), with the sections `cfg.sections` declares
  ([[input layer, output layer], …], for models of your own) instead of the model's; `key` names the
  config entry in errors."""
  net = network(
    cfg.model,
    models.get_model(
      cfg.model, num_classes, cfg.dropout, key=f"{key}.model", input_dropout=tuple(cfg.get("input_dropout", ()))
    ),
    image_shape,
    dtype,
  )
  declared = [tuple(pair) if isinstance(pair, (list, tuple)) else pair for pair in cfg.get("sections", ())]
  if declared:
    names = [l.name for l in net.layers]
    check(
      all(isinstance(p, tuple) and len(p) == 2 and all(n in names for n in p) for p in declared),
      f"{key}.sections={[list(p) if isinstance(p, tuple) else p for p in declared]!r}: each section is "
      f"[input layer, output layer], both layers of {cfg.model!r} ({', '.join(names[:12])}"
      f"{', …' if len(names) > 12 else ''}; `python -m fitnets_jax.tools.layers` lists them all).",
    )
    net.sections = tuple(declared)
  return net


def variables(params, batch_stats):
  """Flax variables of a network: its params, and its batch_stats when it has batch norm."""
  return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def cast_floats(tree, dtype):
  """`tree` with its floating-point leaves cast to `dtype` (integer leaves untouched)."""
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def forward(net, params, batch_stats, x, train, rng=None, capture=()):
  """(logits, captured features, batch_stats after the call) of `net`.

  With `net.dtype` bfloat16 the parameters and the input are cast to bf16 for the call, so every
  activation (and captured feature) is bf16, while the float32 parameters receive float32 gradients
  through the cast. Batch statistics stay float32 (flax reduces them in float32), and the logits
  come back as float32 for the losses.
  """
  if net.dtype != "float32":
    params, x = cast_floats(params, net.dtype), x.astype(net.dtype)
  logits, feats, new_stats = features.apply(
    net.module, variables(params, batch_stats), x, train, capture, rngs={"dropout": rng} if rng is not None else None
  )
  return cast_floats(logits, jnp.float32), feats, new_stats if new_stats is not None else batch_stats


def predict(net, network_variables, images):
  """`net`'s float32 logits in inference mode from its flax variables {"params", ["batch_stats"]}."""
  return forward(net, network_variables["params"], network_variables.get("batch_stats", {}), images, False)[0]

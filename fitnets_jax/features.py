"""Intermediate activations through `capture_intermediates`, and what is derived from them.

A layer is any submodule of a model, named by its path ("conv3", "conv3/conv", "fc"). Its
output is captured with a filter on that path; no forward pass is rewritten. `describe` lists
every layer in execution order with its output shape, non-linearity, parameters and MACs.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from fitnets_jax.errors import FitnetsError

_MAC_MODULES = ("Conv", "Dense")


@dataclasses.dataclass(frozen=True)
class Layer:
  name: str  # "/"-joined module path
  path: tuple
  kind: str  # module class name
  shape: tuple  # output shape of one example
  nonlinearity: str  # maxout | relu | linear: what a regressor onto this layer must end with
  pieces: int
  params: int  # parameters of this module and its submodules
  macs: int  # multiply-accumulates per example of this module and its submodules
  tied_bias: bool = True  # False: a bias per output position (pylearn2's tied_b 0), which a regressor copies


def _subtree(tree, path):
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def layer_variables(tree, name):
  """The variables of layer `name` ("section2/block1/bn2") in a params or batch_stats tree."""
  found = _subtree(tree, tuple(name.split("/")))
  if found is None:
    raise FitnetsError(f"No variables for layer {name!r}; the tree's top level holds {', '.join(tree)}.")
  return found


def count_params(tree):
  """Number of scalars in a pytree (arrays or ShapeDtypeStructs)."""
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def paper_params(layers, params):
  """Parameters as the FitNets paper's published figures count them (Romero et al. 2015, Tables 1–4):
  weights only, no biases or batch-norm scales, and every maxout layer counted with 2 pieces whatever
  its own count. This rule reproduces every published figure (teacher 9M, FitNet 1/2/4
  250K/862K/2.5M, MNIST teacher 361K). The authors' scripts/computeNumberParams.py multiplies each
  layer by its own num_pieces instead, which gives other numbers (docs/models.md)."""
  pieces = {l.path: l.pieces for l in layers if l.nonlinearity == "maxout" and l.pieces > 1}
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    keys = tuple(getattr(k, "key", k) for k in path)
    if keys[-1] != "kernel":
      continue
    n = math.prod(leaf.shape)
    owner = next((keys[:i] for i in range(len(keys) - 1, 0, -1) if keys[:i] in pieces), None)
    total += n // pieces[owner] * 2 if owner else n
  return int(total)


def describe(module, variables, input_shape):
  """Every capturable layer of `module`, in the order its outputs are produced."""
  records = []

  def record(mdl, method):
    if method != "__call__":
      return False
    if mdl.path and mdl.path not in {r[0] for r in records}:
      records.append(
        (
          tuple(mdl.path),
          type(mdl).__name__,
          getattr(mdl, "nonlinearity", "linear"),
          int(getattr(mdl, "pieces", 1) or 1),
          bool(getattr(mdl, "tied_bias", True)),
        )
      )
    return True

  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  _, state = jax.eval_shape(
    lambda v, x: module.apply(v, x, train=False, capture_intermediates=record, mutable=["intermediates"]), variables, x
  )
  params = variables.get("params", {})
  own_macs = {}
  for path, kind, *_ in records:
    kernel = _subtree(params, path + ("kernel",))
    if kind in _MAC_MODULES and kernel is not None:
      out = _subtree(state["intermediates"], path + ("__call__",))[0]
      own_macs[path] = math.prod(out.shape[1:-1]) * math.prod(kernel.shape)
  layers = []
  for path, kind, nonlinearity, pieces, tied_bias in records:
    out = _subtree(state["intermediates"], path + ("__call__",))[0]
    macs = sum(m for p, m in own_macs.items() if p[: len(path)] == path)
    sub = _subtree(params, path)
    layers.append(
      Layer(
        "/".join(path),
        path,
        kind,
        tuple(out.shape[1:]),
        nonlinearity,
        pieces,
        count_params(sub) if sub is not None else 0,
        macs,
        tied_bias,
      )
    )
  return layers


def depth(layers):
  """Weight layers (Conv/Dense with parameters) outside residual shortcuts: the depth papers quote
  (FitNet 4: 19, ResNet-20: 20)."""
  return sum(1 for l in layers if l.kind in _MAC_MODULES and l.params and "shortcut" not in l.name)


def total_macs(layers):
  """MACs per example of the whole model: every Conv/Dense counted once."""
  return sum(l.macs for l in layers if l.kind in _MAC_MODULES)


def find_layer(layers, name, key, model_name):
  """The layer called `name`; otherwise a FitnetsError listing the valid names."""
  for layer in layers:
    if layer.name == name:
      return layer
  raise FitnetsError(
    f"{key}={name!r} is not a layer of model {model_name!r}. Valid names: "
    f"{', '.join(l.name for l in layers)} (python -m fitnets_jax.tools.layers --config ... shows their shapes)."
  )


def preactivation(layers, name, model_name):
  """The name of layer `name`'s output before its final ReLU: the layer itself where it ends linearly (a
  pre-activation ResNet's section), else the last `…/preact` inside it (a post-activation block's sum,
  `models.layers.PreActivation`). RepDistiller's and mdistiller's `preact=True` features."""
  layer = find_layer(layers, name, "layer", model_name)
  if layer.nonlinearity == "linear":
    return name
  inside = [l.name for l in layers if l.name.startswith(name + "/") and l.path[-1] == "preact"]
  if not inside:
    raise FitnetsError(
      f"Layer {name!r} of model {model_name!r} ends in a {layer.nonlinearity} and has no `preact` layer inside it, "
      "so its pre-activation output cannot be captured; the ResNets' sections and blocks have one "
      "(python -m fitnets_jax.tools.layers lists the layers)."
    )
  return inside[-1]


def regressor_kernel(guided, hint):
  """FitNets regressor kernel k_i = N_g,i − N_h,i + 1 (paper §2.2) from two Layers."""
  if len(guided.shape) != 3 or len(hint.shape) != 3:
    raise FitnetsError(
      f"A convolutional regressor needs two feature maps (H, W, C); the guided layer {guided.name!r} "
      f"gives {guided.shape} and the hint layer {hint.name!r} gives {hint.shape}. Choose conv layers "
      "for hint.student_layer and hint.teacher_layer."
    )
  kernel = tuple(g - h + 1 for g, h in zip(guided.shape[:2], hint.shape[:2]))
  if min(kernel) < 1:
    raise FitnetsError(
      f"The guided layer hint.student_layer={guided.name!r} gives a {guided.shape[0]}×{guided.shape[1]} "
      f"map, smaller than the {hint.shape[0]}×{hint.shape[1]} map of the hint layer "
      f"hint.teacher_layer={hint.name!r}; the regressor kernel N_g − N_h + 1 would be {kernel}. "
      "Pick an earlier (larger) student layer or a later (smaller) teacher layer."
    )
  return kernel


def capture_filter(names):
  """A `capture_intermediates` filter that keeps only the `__call__` outputs of `names`."""
  wanted = frozenset(names)
  return lambda mdl, method: method == "__call__" and "/".join(mdl.path) in wanted


def apply(module, variables, x, train, capture=(), rngs=None):
  """Runs `module`; returns (logits, {layer name: output}, updated batch_stats or None).

  Outputs nobody reads (e.g. logits when only a hint is needed) are removed by XLA under jit,
  so capturing a prefix costs only the prefix.
  """
  mutable = (["intermediates"] if capture else []) + (["batch_stats"] if train and "batch_stats" in variables else [])
  if not mutable:
    return module.apply(variables, x, train=train, rngs=rngs), {}, None
  logits, state = module.apply(
    variables,
    x,
    train=train,
    rngs=rngs,
    mutable=mutable,
    capture_intermediates=capture_filter(capture) if capture else False,
  )
  feats = {name: _subtree(state["intermediates"], tuple(name.split("/")) + ("__call__",))[0] for name in capture}
  return logits, feats, state.get("batch_stats")


def prefix_paths(layers, last):
  """Module paths executed up to and including layer `last` (its submodules included)."""
  names = [l.name for l in layers]
  return frozenset(l.path for l in layers[: names.index(last) + 1])


def leaf_module(path):
  """The module path of a parameter or batch-statistic leaf (its tree path without the leaf name)."""
  return tuple(k.key for k in path[:-1])


def prefix_labels(tree, paths):
  """'train' for leaves whose module is in `paths`, else 'freeze' (for optax.partition)."""
  return jax.tree_util.tree_map_with_path(lambda p, _: "train" if leaf_module(p) in paths else "freeze", tree)


def merge_prefix(new, old, paths):
  """`new` for leaves whose module is in `paths`, `old` elsewhere (batch stats of frozen layers)."""
  return jax.tree_util.tree_map_with_path(lambda p, n, o: n if leaf_module(p) in paths else o, new, old)


def layer_table(layers):
  """A fixed-width text table of layers: name, kind, output shape, params, MACs."""
  rows = [("layer", "kind", "output shape", "params", "MACs")]
  rows += [(l.name, l.kind, "×".join(map(str, l.shape)), f"{l.params:,}", f"{l.macs:,}") for l in layers]
  widths = [max(len(r[i]) for r in rows) for i in range(5)]
  return "\n".join(
    "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
  )

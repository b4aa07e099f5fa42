"""Imports a teacher trained elsewhere as a saved network that `teacher.checkpoint=DIR` uses.

  python -m fitnets_jax.import_teacher --from pytorch --model resnet32x4 \
      --checkpoint resnet32x4_vanilla/ckpt_epoch_240.pth --out teachers/resnet32x4

reads a PyTorch checkpoint without PyTorch (`fitnets_jax.pth`), maps its weights onto the named
model of this package and writes `DIR` (variables, network.json, preprocessing.npz, SHA256SUMS), then
checks that the saved network loads and predicts. From Python: `import_pytorch(...)`.

The mapping pairs the checkpoint's modules, in the order its state_dict lists them, with the Flax
model's convolutions, batch norms and dense layers in the order they run (PyTorch registers a
model's modules in the order its reference code runs them, for every model of the zoo): a conv's
OIHW kernel becomes HWIO (grouped and depthwise alike), a linear layer's weight is transposed, a
batch norm's weight, bias, running mean and running variance become scale, bias, mean and var. Every
shape is checked; the first pair that does not fit is reported by both names. The input it expects
is the code base's: `--dataset cifar100` records RepDistiller's and mdistiller's CIFAR-100
normalisation, `imagenet` torchvision's (docs/teachers.md).
"""

import hashlib

import numpy as np
from absl import flags, logging

from fitnets_jax import command_line, files, models, pth, saved
from fitnets_jax.config import NORMALISATIONS
from fitnets_jax.errors import FitnetsError, check, or_exit
from fitnets_jax.network import network
from fitnets_jax.preprocessing import Preprocessing

NORMALISATION = NORMALISATIONS  # --dataset → the (mean, std) the teacher was trained with
SOURCES = ("pytorch",)


def _torch_modules(weights):
  """[(module name, kind, {field: array})] of a state_dict, in its order; kind is conv, bn or linear."""
  grouped = {}
  for key, value in weights.items():
    module, _, field = key.rpartition(".")
    grouped.setdefault(module, {})[field] = value
  out = []
  for module, fields in grouped.items():
    fields.pop("num_batches_tracked", None)
    weight = fields.get("weight")
    if "running_mean" in fields and "running_var" in fields:
      kind = "bn"
    elif weight is not None and weight.ndim == 4:
      kind = "conv"
    elif weight is not None and weight.ndim == 2:
      kind = "linear"
    else:
      raise FitnetsError(
        f"the checkpoint's module {module!r} ({', '.join(f'{k} {v.shape}' for k, v in fields.items())}) is not a "
        "Conv2d, BatchNorm2d or Linear layer; only models made of those (the zoo's) can be imported."
      )
    out.append((module, kind, fields))
  return out


_FLAX_KINDS = {"Conv": "conv", "BatchNorm": "bn", "Dense": "linear"}


def _flax_modules(net):
  """[(path, kind)] of `net`'s Conv, BatchNorm and Dense layers, in the order they run."""
  return [(layer.path, _FLAX_KINDS[layer.kind]) for layer in net.layers if layer.kind in _FLAX_KINDS]


def _converted(kind, fields):
  """{collection: {leaf: array}} of one PyTorch module's tensors in Flax's layout."""
  if kind == "bn":
    return {
      "params": {"scale": fields["weight"], "bias": fields["bias"]},
      "batch_stats": {"mean": fields["running_mean"], "var": fields["running_var"]},
    }
  kernel = fields["weight"].transpose(2, 3, 1, 0) if kind == "conv" else fields["weight"].T
  params = {"kernel": kernel}
  if "bias" in fields:
    params["bias"] = fields["bias"]
  return {"params": params}


def _put(tree, path, leaves):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree.setdefault(path[-1], {}).update(leaves)


def pytorch_variables(weights, net, where="checkpoint"):
  """Flax variables {"params", "batch_stats"} of Network `net` from a PyTorch state_dict `weights`."""
  import jax

  theirs, ours = _torch_modules(weights), _flax_modules(net)
  check(
    [k for _, k, _ in theirs] == [k for _, k in ours],
    f"{where} does not match model {net.name!r}: it has {len(theirs)} layers "
    f"({_kinds(k for _, k, _ in theirs)}) where the model has {len(ours)} ({_kinds(k for _, k in ours)}); "
    "check --model (the architecture the checkpoint was trained as) and --num_classes.",
  )
  abstract = net.abstract_variables()
  variables = {"params": {}, "batch_stats": {}}
  for (name, kind, fields), (path, _) in zip(theirs, ours):
    for collection, leaves in _converted(kind, fields).items():
      want = abstract[collection]
      for key in path:
        want = want[key]
      for leaf, value in leaves.items():
        shape = tuple(want[leaf].shape) if leaf in want else None
        check(
          shape == value.shape,
          f"{where} does not match model {net.name!r}: its {name} ({kind}) gives {collection} {leaf} of shape "
          f"{value.shape} for the model's layer {'/'.join(path)}, which has {shape}. Check --model and --num_classes.",
        )
      _put(variables[collection], path, {k: np.asarray(v, np.float32) for k, v in leaves.items()})
  variables = {k: v for k, v in variables.items() if v}
  want = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(abstract)}
  have = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables)}
  check(
    want == have,
    f"{where} does not match model {net.name!r}: the model's {', '.join(sorted(want - have)[:4])} "
    "have no counterpart in the checkpoint (a conv with a bias where the checkpoint's has none?). Check --model.",
  )
  return variables


def _kinds(kinds):
  kinds = list(kinds)
  return ", ".join(f"{kinds.count(k)} {k}" for k in ("conv", "bn", "linear"))


def _final_classes(weights):
  linear = [m for m in _torch_modules(weights) if m[1] == "linear"]
  return int(linear[-1][2]["weight"].shape[0]) if linear else None


def import_pytorch(checkpoint, model, out, num_classes=None, image_size=None, dataset=None):
  """Writes the saved network of the PyTorch `checkpoint` (.pth) as `model` in folder `out`, and returns
  the folder. `num_classes` defaults to the checkpoint's last linear layer, `image_size` to 224 for
  imagenet_* models and 32 otherwise, `dataset` (whose normalisation the teacher expects) to imagenet
  or cifar100 likewise."""
  imagenet = model.startswith("imagenet_")
  dataset = dataset or ("imagenet" if imagenet else "cifar100")
  check(
    dataset in NORMALISATION,
    f"--dataset={dataset!r}: one of {', '.join(NORMALISATION)} (the normalisation the teacher was trained with).",
  )
  weights = pth.state_dict(pth.load(checkpoint), checkpoint)
  num_classes = num_classes or _final_classes(weights)
  size = image_size or (224 if imagenet else 32)
  net = network(model, models.get_model(model, num_classes, key="--model"), (size, size, 3))
  variables = pytorch_variables(weights, net, checkpoint)
  mean, std = NORMALISATION[dataset]
  preprocessing = Preprocessing("standardize", {"mean": np.float32(mean), "std": np.float32(std)})
  digest = hashlib.sha256(files.read_bytes(checkpoint)).hexdigest()
  info = {
    **net.describe(),
    "test_accuracy": None,
    "dataset": dataset,
    "num_classes": num_classes,
    "image_shape": [size, size, 3],
    "dtype": "float32",
    "preprocessing": preprocessing.describe(),
    "imported_from": {"format": "pytorch", "checkpoint": checkpoint, "sha256": digest},
  }
  files.makedirs(out)
  preprocessing.save(out)
  saved.save_network(out, "", variables, info)
  saved.load_model(out)  # what teacher.checkpoint will read: checked now
  return out


def main(argv):
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS

  def run():
    check(f["from"].value in SOURCES, f"--from={f['from'].value!r}: one of {', '.join(SOURCES)}.")
    out = import_pytorch(f.checkpoint, f.model, f.out, f.num_classes, f.image_size, f.dataset)
    print(f"Imported {f.checkpoint} as {f.model} into {out}; use it with --config.teacher.checkpoint={out}")

  or_exit(run)


if __name__ == "__main__":
  flags.DEFINE_string("from", "pytorch", f"The checkpoint's framework: {', '.join(SOURCES)}.")
  flags.DEFINE_string("model", None, "The architecture, as the zoo names it (resnet32x4, wrn_40_2, vgg13, …).")
  flags.DEFINE_string("checkpoint", None, "The .pth file (a local path or gs://…).")
  flags.DEFINE_string("out", None, "The folder to write the saved network into.")
  flags.DEFINE_integer("num_classes", None, "Classes; default: the checkpoint's last linear layer's outputs.")
  flags.DEFINE_integer("image_size", None, "Input height and width; default 224 for imagenet_* models, else 32.")
  flags.DEFINE_string("dataset", None, f"Whose normalisation the teacher expects: {', '.join(NORMALISATION)}.")
  command_line.start(main, __doc__, required=("model", "checkpoint", "out"))

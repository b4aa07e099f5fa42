"""Model registry: `get_model(name, num_classes, dropout)` → a Flax module with named layers.

| name | paper model |
|---|---|
| maxout_cifar_teacher | Goodfellow's CIFAR-10 maxout net: 96/192/192 ch, kernels 8/8/5, pads 4/3/3, pools 4/4/2 s2, fc 500×5 |
| fitnet1 … fitnet4 | FitNets Table 7 students: 3×3 maxout convs (2 pieces), 2×2 pools between blocks, global 8×8 pool, fc 500×5 |
| maxout_mnist_teacher | Goodfellow's MNIST maxout net: 48/48/24 ch, pieces 2/2/4, kernels 8/8/5, pads 0/3/3, pools 4/4/2 s2, untied biases |
| fitnet_mnist | the authors' MNIST FitNet yaml: 16-16-16-16-12-12 ch, pieces 2/2/2/2/4/4, kernels 5/3/5/3/3/3, pads 0/0/3/0/3/0, pools 4 s2 after conv2 and conv4, 2 s2 after conv6, untied biases |
| maxout_svhn_teacher | Goodfellow's SVHN maxout net (pylearn2 svhn.yaml): 64/128/128 ch, kernels 5, pads 4/3/3, pools 3 s2, fc 400×5 |
| fitnet_svhn | 13 layers (paper §3.2): FitNet 3's 11 convs + fc + softmax |
| digits_teacher | 8×8 digits teacher: maxout convs 32-64-64 with batch norm, fc 128×2 (179K params) |
| digits_student | 8×8 digits FitNet: 10 thin maxout convs (6×5, 12×5), no batch norm, fc 32×2 (18K params) |
| digits_student_bn | 6 maxout convs 8-8-16-16-16-16 with batch norm, fc 32×2 (22K params) |
| digits_thin_D | the depth family (FitNets §4.4 on digits): D weight layers = D − 2 maxout convs in two halves of width w and 2w, a 2×2 pool after each, fc 32×2, softmax; no batch norm; w chosen so the model has ≈ 18K parameters (D = 5 … 41) |
| digits_macs_D | the same layout at a fixed number of multiplications, as the paper's §4.4 fixes them: w chosen for ≈ 363K MACs (digits_student's), U(±0.005) initialisation as the paper's models |
| resnetD, resnetDxW | CIFAR ResNet-D (D = 6n+2: 8, 14, 20, 26, 32, 56, 110, …), sections 16W/32W/64W |
| wrn_D_K | wide ResNet WRN-D-K (D = 6n+4), pre-activation, sections 16K/32K/64K |
| digits_resnetD | ResNet-D for 8×8 digits: sections 8/16/32 |
| resnet10, resnet18, resnet34, resnet50 | four-section ResNet (CIFAR form: 3×3 stem, no max-pool), sections 64/128/256/512 (×4 out of ResNet-50's bottlenecks) |
| ResNet18, ResNet34, ResNet50 | the same, under RepDistiller's names |
| digits_resnet10, digits_resnet18 | the same for 8×8 digits: sections 8/16/32/64 |
| imagenet_resnet18, imagenet_resnet34, imagenet_resnet50 | torchvision's ImageNet ResNets: 7×7 stride-2 stem and max-pool |
| vgg8, vgg11, vgg13, vgg16, vgg19 | RepDistiller's CIFAR VGGs with batch norm |
| MobileNetV2 | RepDistiller's CIFAR MobileNetV2 (T = 6, width ×0.5) |
| ShuffleV1, ShuffleV2 | RepDistiller's CIFAR ShuffleNets (V1 groups 3, V2 ×1) |
"""

import dataclasses
import inspect
import re

import flax.linen as nn

from fitnets_jax.errors import FitnetsError, check, named_attribute
from fitnets_jax.models.maxout import ConvSpec, MaxoutNet
from fitnets_jax.models.mobilenetv2 import MobileNetV2
from fitnets_jax.models.resnet import FOUR_SECTION_BLOCKS, four_section_resnet, resnet, wide_resnet
from fitnets_jax.models.shufflenet import shufflenet_v1, shufflenet_v2
from fitnets_jax.models.vgg import VGG_WIDTHS, vgg

PAPER_INIT = 0.005  # U(±0.005), FitNets §4 / maxout paper


def _plain(channels, pool_after=(), global_pool_last=False, pieces=2):
  """3×3 padded maxout convs with 2×2 pools after the listed (1-based) layers."""
  specs = []
  for i, c in enumerate(channels, start=1):
    last = i == len(channels)
    specs.append(ConvSpec(c, pieces, 3, 1, pool=2 if i in pool_after else 0, global_pool=global_pool_last and last))
  return tuple(specs)


def _fitnet(blocks):
  """FitNets Table 7: blocks of 3×3 maxout convs, 2×2 pool after blocks 1-2, global pool after 3."""
  channels, ends = [], []
  for block in blocks:
    channels += block
    ends.append(len(channels))
  return _plain(channels, pool_after=ends[:-1], global_pool_last=True)


_FITNET_BLOCKS = {
  "fitnet1": ((16, 16, 16), (32, 32, 32), (48, 48, 64)),
  "fitnet2": ((16, 32, 32), (48, 64, 80), (96, 96, 128)),
  "fitnet3": ((32, 48, 64, 64), (80,) * 4, (128,) * 3),
  "fitnet4": ((32, 32, 32, 48, 48), (80,) * 6, (128,) * 6),
}

_SPECS = {
  "maxout_cifar_teacher": dict(
    convs=(ConvSpec(96, 2, 8, 4, 4, 2), ConvSpec(192, 2, 8, 3, 4, 2), ConvSpec(192, 2, 5, 3, 2, 2)),
    dense_units=500,
    dense_pieces=5,
    init_range=PAPER_INIT,
  ),
  **{
    name: dict(convs=_fitnet(blocks), dense_units=500, dense_pieces=5, init_range=PAPER_INIT)
    for name, blocks in _FITNET_BLOCKS.items()
  },
  # Both MNIST yamls leave tied_b unset: pylearn2's default, a bias per output position (untied).
  "maxout_mnist_teacher": dict(
    convs=(
      ConvSpec(48, 2, 8, 0, 4, 2, tied_bias=False),
      ConvSpec(48, 2, 8, 3, 4, 2, tied_bias=False),
      ConvSpec(24, 4, 5, 3, 2, 2, tied_bias=False),
    ),
    init_range=PAPER_INIT,
  ),
  "fitnet_mnist": dict(  # the authors' MNIST_fitnet_valid.yaml
    convs=(
      ConvSpec(16, 2, 5, 0, tied_bias=False),
      ConvSpec(16, 2, 3, 0, 4, 2, tied_bias=False),
      ConvSpec(16, 2, 5, 3, tied_bias=False),
      ConvSpec(16, 2, 3, 0, 4, 2, tied_bias=False),
      ConvSpec(12, 4, 3, 3, tied_bias=False),
      ConvSpec(12, 4, 3, 0, 2, 2, tied_bias=False),
    ),
    init_range=PAPER_INIT,
  ),
  "maxout_svhn_teacher": dict(  # pylearn2/scripts/papers/maxout/svhn.yaml
    convs=(ConvSpec(64, 2, 5, 4, 3, 2), ConvSpec(128, 2, 5, 3, 3, 2), ConvSpec(128, 2, 5, 3, 3, 2)),
    dense_units=400,
    dense_pieces=5,
    init_range=PAPER_INIT,
  ),
  "fitnet_svhn": dict(convs=_fitnet(_FITNET_BLOCKS["fitnet3"]), dense_units=500, dense_pieces=5, init_range=PAPER_INIT),
  "digits_teacher": dict(
    convs=_plain((32, 64, 64), pool_after=(2, 3)), dense_units=128, dense_pieces=2, batch_norm=True
  ),
  # Thin and deep, no batch norm: the regime FitNets addresses (plain backprop struggles there).
  "digits_student": dict(convs=_plain((6,) * 5 + (12,) * 5, pool_after=(5, 10)), dense_units=32, dense_pieces=2),
  "digits_student_bn": dict(
    convs=_plain((8, 8, 16, 16, 16, 16), pool_after=(3, 6)), dense_units=32, dense_pieces=2, batch_norm=True
  ),
}

# The CIFAR-100 zoo of RepDistiller's model_dict (CRD, ReviewKD and DKD's tables) beyond the ResNet
# families, and torchvision's ImageNet ResNets: name → factory(num_classes).
ZOO = {
  **{f"vgg{d}": (lambda d: lambda n: vgg(d, n))(d) for d in VGG_WIDTHS},
  "MobileNetV2": lambda n: MobileNetV2(n),
  "ShuffleV1": shufflenet_v1,
  "ShuffleV2": shufflenet_v2,
  **{f"ResNet{d}": (lambda d: lambda n: four_section_resnet(d, n))(d) for d in (18, 34, 50)},
  **{f"imagenet_resnet{d}": (lambda d: lambda n: four_section_resnet(d, n, imagenet=True))(d) for d in (18, 34, 50)},
}
MODEL_NAMES = tuple(_SPECS) + tuple(ZOO)
FAMILIES = (
  "resnetD or resnetDxW (D = 6n+2, e.g. resnet8, resnet26, resnet32x4), resnet10/18/34/50 (four sections), "
  "wrn_D_K (D = 6n+4, e.g. wrn_16_2), digits_resnetD, digits_thin_D or digits_macs_D (D = 5 … 41, e.g. "
  "digits_thin_11)"
)
THIN_PARAMS = 18_000  # digits_thin_D's parameter budget: digits_student's size
THIN_MACS = 362_816  # digits_macs_D's multiplication budget: digits_student's MACs
THIN_DEPTHS = range(5, 42)


def thin_halves(depth):
  """(convs of width w, convs of width 2w) of digits_thin_<depth>: the first half takes the extra one."""
  convs = depth - 2
  return (convs + 1) // 2, convs // 2


def thin_params(depth, width, channels=1, classes=10, fc=32):
  """digits_thin_<depth>'s parameters at first-half width `width` (every maxout layer 2 pieces, biases
  included), from the layer shapes: 8×8 input, 3×3 convs, pools to 4×4 then 2×2."""
  first, second = thin_halves(depth)
  widths = [channels] + [width] * first + [2 * width] * second
  convs = sum((9 * c_in + 1) * 2 * c_out for c_in, c_out in zip(widths, widths[1:]))
  return convs + (2 * 2 * widths[-1] + 1) * 2 * fc + (fc + 1) * classes


def thin_macs(depth, width, channels=1, classes=10, fc=32):
  """digits_thin_<depth>'s multiply-accumulates per example at first-half width `width`: 3×3 convs over
  8×8 maps in the first half and 4×4 in the second (2 pieces), fc and softmax."""
  first, second = thin_halves(depth)
  widths = [channels] + [width] * first + [2 * width] * second
  area = [64] * first + [16] * second
  convs = sum(a * 9 * c_in * 2 * c_out for a, c_in, c_out in zip(area, widths, widths[1:]))
  return convs + 2 * 2 * widths[-1] * 2 * fc + fc * classes


def thin_width(depth, budget="params"):
  """The first-half width w whose digits_thin_<depth> comes closest to THIN_PARAMS parameters, or with
  `budget='macs'` to THIN_MACS multiply-accumulates (digits_macs_<depth>)."""
  cost, target = (thin_params, THIN_PARAMS) if budget == "params" else (thin_macs, THIN_MACS)
  return min(range(1, 64), key=lambda w: abs(cost(depth, w) - target))


def thin_student(depth, budget="params"):
  """digits_thin_<depth>'s (or, with budget='macs', digits_macs_<depth>'s) MaxoutNet fields; its guided
  layer for a hint is conv<first half> (4×4×w)."""
  first, second = thin_halves(depth)
  w = thin_width(depth, budget)
  fields = dict(
    convs=_plain((w,) * first + (2 * w,) * second, pool_after=(first, first + second)), dense_units=32, dense_pieces=2
  )
  return fields if budget == "params" else {**fields, "init_range": PAPER_INIT}


def _thin(name, key):
  """The MaxoutNet fields of `name` when it is digits_thin_<D> or digits_macs_<D>, else None."""
  match = re.fullmatch(r"digits_(thin|macs)_(\d+)", name)
  if not match:
    return None
  family, depth = match.group(1), int(match.group(2))
  if depth not in THIN_DEPTHS:
    raise FitnetsError(
      f"{key}={name!r}: the thin digits families have {THIN_DEPTHS.start} … {THIN_DEPTHS.stop - 1} weight layers "
      f"(D − 2 convs, fc, softmax), e.g. digits_{family}_11."
    )
  return thin_student(depth, "params" if family == "thin" else "macs")


def _resnet(name, num_classes, dropout, key):
  """The ResNet family member called `name`, or None when `name` is not of that family."""
  match = re.fullmatch(r"(digits_)?resnet(\d+)(?:x(\d+))?|wrn_(\d+)_(\d+)", name)
  if not match:
    return None
  digits, depth, width, wrn_depth, k = match.groups()
  if wrn_depth:
    if (int(wrn_depth) - 4) % 6 or int(wrn_depth) < 10 or int(k) < 1:
      raise FitnetsError(f"{key}={name!r}: a wide ResNet needs depth 6n+4 ≥ 10 and k ≥ 1 (e.g. wrn_16_2, wrn_40_2).")
    return wide_resnet(int(wrn_depth), int(k), num_classes, dropout)
  four_section = int(depth) in FOUR_SECTION_BLOCKS and width is None
  if not four_section and ((int(depth) - 2) % 6 or int(depth) < 8 or (width is not None and int(width) < 1)):
    raise FitnetsError(
      f"{key}={name!r}: a CIFAR ResNet needs depth 6n+2 ≥ 8 (8, 14, 20, 26, 32, 56, 110) "
      "and a width multiplier ≥ 1 (e.g. resnet32x4), or depth 10, 18 or 34 for the four-section "
      "ResNet."
    )
  if dropout:
    raise FitnetsError(
      f"{key.rsplit('.', 1)[0]}.dropout={dropout!r}: {name} has no dropout (as in He et al.); "
      "use 0, or a wide ResNet (wrn_D_K), whose blocks take dropout."
    )
  if four_section:
    return four_section_resnet(int(depth), num_classes, base=8 if digits else 64)
  return resnet(int(depth), num_classes, int(width or 1), base=8 if digits else 16)


def maxout_spec(name):
  """The MaxoutNet fields of a maxout model (convs, dense_units, …), e.g. to rebuild it elsewhere."""
  return dict(_SPECS[name])


def custom_model(name, num_classes, dropout, key):
  """The model of `name` = "package.module:factory": `factory(num_classes=…)` (and `dropout=…` when it
  is > 0) must return a Flax linen module called as `module(images, train=…)` that returns logits."""
  where, attribute = f"{key}={name!r}", name.partition(":")[2]
  what = "A model of your own is a factory(num_classes) returning a flax.linen Module (docs/models.md has an example)."
  factory = named_attribute(name, key, what)
  kwargs = {"num_classes": num_classes, **({"dropout": dropout} if dropout else {})}
  try:
    model = factory(**kwargs)
  except Exception as e:  # noqa: BLE001  (whatever the user's factory raises)
    raise FitnetsError(
      f"{where}: {attribute}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed ({type(e).__name__}: "
      f"{str(e)[:200]}); the factory takes num_classes (and dropout, when {key.rsplit('.', 1)[0]}.dropout > 0)."
    ) from None
  if not isinstance(model, nn.Module):
    raise FitnetsError(f"{where}: {attribute}(…) returned {type(model).__name__}, not a flax.linen Module.")
  return called_with_train(model, where)


def called_with_train(model, where):
  """`model`, called as `model(images, train=…)`: a module whose `__call__` takes `deterministic=`
  instead (flax's own convention) is wrapped, as a subclass with the same fields and parameters, so
  that train=True means deterministic=False."""
  parameters = inspect.signature(type(model).__call__).parameters
  if "train" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
    return model
  if "deterministic" not in parameters:
    raise FitnetsError(
      f"{where}: {type(model).__name__}.__call__{inspect.signature(type(model).__call__)} takes neither train= nor "
      "deterministic=; the library calls a model as model(images, train=True/False) (or deterministic=False/True) "
      "and expects logits back. Add one of the two arguments."
    )

  class Deterministic(type(model)):
    def __call__(self, x, train=False, **kwargs):
      return super().__call__(x, deterministic=not train, **kwargs)

  Deterministic.__name__ = Deterministic.__qualname__ = type(model).__name__
  fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.init and f.name not in ("parent",)}
  return Deterministic(**fields)


def get_model(name, num_classes, dropout=0.0, key="model", input_dropout=()):
  """Builds the named model, or the one a "package.module:factory" name makes (`custom_model`); an
  unknown name raises FitnetsError listing the known ones. `input_dropout` (maxout models): one
  include probability per weight layer's input (MaxoutNet)."""
  section = key.rsplit(".", 1)[0]
  if not 0.0 <= dropout < 1.0:
    raise FitnetsError(f"{section}.dropout={dropout!r} must be in [0, 1).")
  if ":" in name and not input_dropout:
    return custom_model(name, num_classes, dropout, key)
  if name in ZOO:
    check(
      not dropout and not input_dropout,
      f"{section}.dropout={dropout!r}: {name} has no dropout (as in its reference definition); use 0.",
    )
    return ZOO[name](num_classes)
  model = _resnet(name, num_classes, dropout, key)
  spec = _SPECS.get(name) or _thin(name, key)
  if model is None and spec is None:
    raise FitnetsError(
      f"{key}={name!r} is not a known model; choose one of: {', '.join(MODEL_NAMES)}, or {FAMILIES}, or your own "
      "as 'package.module:factory'."
    )
  if not input_dropout:
    return model or MaxoutNet(num_classes=num_classes, dropout=dropout, **spec)
  layers = len(spec["convs"]) + bool(spec.get("dense_units")) + 1 if spec else 0
  if model is not None or len(input_dropout) != layers or not all(0.0 < p <= 1.0 for p in input_dropout):
    raise FitnetsError(
      f"{section}.input_dropout={list(input_dropout)!r}: one include probability in (0, 1] per weight layer's "
      f"input of a maxout model (conv1 … logits"
      + (f": {layers} for {name!r}" if spec else f"; {name!r} is not one")
      + "), e.g. [0.8, 0.5, 0.5, 0.5, 0.5] for the maxout CIFAR/SVHN teachers as in Goodfellow et al.'s yamls; "
      "[] for none."
    )
  return MaxoutNet(num_classes=num_classes, dropout=dropout, input_dropout=tuple(input_dropout), **spec)

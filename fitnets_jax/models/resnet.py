"""CIFAR ResNets (He et al. 2016, §4.2), wide ResNets (Zagoruyko & Komodakis 2016), and the
four-section ResNet-18/34/50 in its usual CIFAR form (3×3 stem, no max-pool) or torchvision's ImageNet
form (7×7 stride-2 stem and a max-pool).

ResNet-(6n+2): a 3×3 `stem` conv of 16·max(1, w/2) channels, three sections `section1..3` of n basic
blocks (`block1..n`, 16w/32w/64w channels, strides 1/2/2), global average pooling and `logits`:
RepDistiller's resnet8 … resnet110, resnet8x4 and resnet32x4. Blocks are post-activation
(conv-BN-ReLU-conv-BN, add, ReLU); where the shape changes the shortcut is a 1×1 conv + BN (He et
al.'s option B). WRN-d-k: n = (d−4)/6 pre-activation blocks per section of 16k/32k/64k channels
after a 16-channel stem, BN-ReLU before pooling. ResNet-10/18/34/50: a 64-channel stem and four
sections of 1/2/(3,4,6,3) basic blocks, or (3,4,6,3) bottlenecks for ResNet-50, with
64/128/256/512 channels (×4 out of a bottleneck), strides 1/2/2/2.

Sections are named modules, so a section's output is captured by name like any hint layer, and
`sections` lists each section's (input layer, output layer): the input of `section1` is `stem`,
of `section{i}` it is `section{i−1}`. FSP and attention transfer use these points.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from fitnets_jax.models.layers import PreActivation, batch_norm, conv


class BasicBlock(nn.Module):
  """Post-activation basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); the sum before the
  ReLU is the layer `preact`."""

  features: int
  stride: int

  @nn.compact
  def __call__(self, x, train=False):
    y = jax.nn.relu(batch_norm(train, "bn1")(conv(self.features, self.stride, "conv1")(x)))
    y = batch_norm(train, "bn2")(conv(self.features, 1, "conv2")(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = batch_norm(train, "shortcut_bn")(conv(self.features, self.stride, "shortcut", kernel=1)(x))
    return jax.nn.relu(PreActivation(name="preact")(x + y))


class Bottleneck(nn.Module):
  """Post-activation bottleneck (He et al. 2016, Fig. 5 right; the stride on the 3×3 conv, as torchvision and
  RepDistiller): relu(bn(conv1×1(relu(bn(conv3×3(relu(bn(conv1×1(x))))))) + shortcut(x)), 4×`features` out."""

  features: int
  stride: int
  expansion = 4

  @nn.compact
  def __call__(self, x, train=False):
    y = jax.nn.relu(batch_norm(train, "bn1")(conv(self.features, 1, "conv1", kernel=1)(x)))
    y = jax.nn.relu(batch_norm(train, "bn2")(conv(self.features, self.stride, "conv2")(y)))
    out = self.features * self.expansion
    y = batch_norm(train, "bn3")(conv(out, 1, "conv3", kernel=1)(y))
    if self.stride != 1 or x.shape[-1] != out:
      x = batch_norm(train, "shortcut_bn")(conv(out, self.stride, "shortcut", kernel=1)(x))
    return jax.nn.relu(PreActivation(name="preact")(x + y))


class PreActBlock(nn.Module):
  """Wide-ResNet block: conv(relu(bn(conv(relu(bn(x)))))) + shortcut, dropout between the convs."""

  features: int
  stride: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train=False):
    a = jax.nn.relu(batch_norm(train, "bn1")(x))
    y = conv(self.features, self.stride, "conv1")(a)
    y = jax.nn.relu(batch_norm(train, "bn2")(y))
    if self.dropout:
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = conv(self.features, 1, "conv2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = conv(self.features, self.stride, "shortcut", kernel=1)(a)
    return x + y


class Section(nn.Module):
  """`blocks` blocks; the first one changes the resolution by `stride`."""

  features: int
  blocks: int
  stride: int
  preact: bool = False
  dropout: float = 0.0
  bottleneck: bool = False

  @property
  def nonlinearity(self):
    return "linear" if self.preact else "relu"

  @nn.compact
  def __call__(self, x, train=False):
    for i in range(self.blocks):
      stride = self.stride if i == 0 else 1
      name = f"block{i + 1}"
      if self.preact:
        block = PreActBlock(self.features, stride, self.dropout, name=name)
      else:
        block = (Bottleneck if self.bottleneck else BasicBlock)(self.features, stride, name=name)
      x = block(x, train)
    return x


class Stem(nn.Module):
  """A 3×3 conv (+ BN-ReLU unless pre-activation); with `imagenet`, He et al.'s 7×7 stride-2 conv, BN-ReLU
  and a 3×3 stride-2 max-pool (torchvision's ResNets)."""

  features: int
  preact: bool = False
  imagenet: bool = False

  @property
  def nonlinearity(self):
    return "linear" if self.preact else "relu"

  @nn.compact
  def __call__(self, x, train=False):
    x = conv(self.features, 2 if self.imagenet else 1, "conv", kernel=7 if self.imagenet else 3)(x)
    if self.preact:
      return x
    x = jax.nn.relu(batch_norm(train, "bn")(x))
    return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1))) if self.imagenet else x


class ResNet(nn.Module):
  """stem → section1..S → (BN-ReLU for pre-activation) → global average pool → logits."""

  num_classes: int
  blocks: int | tuple  # n blocks per section, or one count per section
  widths: tuple = (16, 32, 64)
  stem_width: int = 16
  preact: bool = False
  dropout: float = 0.0  # wide ResNets: between the two convs of each block
  bottleneck: bool = False  # ResNet-50's blocks (4× expansion)
  imagenet_stem: bool = False  # 7×7 stride-2 conv and max-pool

  @property
  def sections(self):
    names = ["stem"] + [f"section{i}" for i in range(1, len(self.widths) + 1)]
    return tuple(zip(names[:-1], names[1:]))

  @nn.compact
  def __call__(self, x, train=False):
    x = Stem(self.stem_width, self.preact, self.imagenet_stem, name="stem")(x, train)
    counts = self.blocks if isinstance(self.blocks, tuple) else (self.blocks,) * len(self.widths)
    for i, (width, count) in enumerate(zip(self.widths, counts)):
      section = Section(
        width, count, 1 if i == 0 else 2, self.preact, self.dropout, self.bottleneck, name=f"section{i + 1}"
      )
      x = section(x, train)
    if self.preact:
      x = jax.nn.relu(batch_norm(train, "final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="logits")(x)


def resnet(depth, num_classes, width=1, base=16, dropout=0.0):
  """ResNet-depth (depth = 6n+2) with sections of base·w, 2·base·w, 4·base·w channels after a stem of
  base·max(1, w/2): RepDistiller's resnet8x4 and resnet32x4 have a 32-channel stem and 64/128/256 sections."""
  stem = base * max(1, width // 2)
  return ResNet(num_classes, (depth - 2) // 6, tuple(base * width * m for m in (1, 2, 4)), stem, dropout=dropout)


FOUR_SECTION_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}


def four_section_resnet(depth, num_classes, base=64, imagenet=False):
  """ResNet-10/18/34/50 (He et al. 2016, Table 1): sections of base·(1, 2, 4, 8) channels (×4 out of
  ResNet-50's bottlenecks); for small images (3×3 stem, no max-pool), or with `imagenet` torchvision's
  7×7 stride-2 stem and max-pool."""
  return ResNet(
    num_classes,
    FOUR_SECTION_BLOCKS[depth],
    tuple(base * m for m in (1, 2, 4, 8)),
    base,
    bottleneck=depth == 50,
    imagenet_stem=imagenet,
  )


def wide_resnet(depth, k, num_classes, dropout=0.0):
  """WRN-depth-k (depth = 6n+4): pre-activation sections of 16k, 32k, 64k channels."""
  return ResNet(num_classes, (depth - 4) // 6, (16 * k, 32 * k, 64 * k), 16, preact=True, dropout=dropout)

"""CIFAR ResNets (He et al. 2016, §4.2), wide ResNets (Zagoruyko & Komodakis 2016), and the
four-section ResNet-18/34 in its usual CIFAR form (3×3 stem, no max-pool).

ResNet-(6n+2): a 3×3 `stem` conv, three sections `section1..3` of n basic blocks (`block1..n`,
16w/32w/64w channels, strides 1/2/2), global average pooling and `logits`. Blocks are
post-activation (conv-BN-ReLU-conv-BN, add, ReLU); where the shape changes the shortcut is a 1×1
conv + BN (He et al.'s option B). WRN-d-k: n = (d−4)/6 pre-activation blocks per section of
16k/32k/64k channels after a 16-channel stem, BN-ReLU before pooling. ResNet-10/18/34: a 64-channel
stem and four sections of 1/2/(3,4,6,3) basic blocks with 64/128/256/512 channels, strides 1/2/2/2.

Sections are named modules, so a section's output is captured by name like any hint layer, and
`sections` lists each section's (input layer, output layer): the input of `section1` is `stem`,
of `section{i}` it is `section{i−1}`. FSP and attention transfer use these points.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


def _bn(train, name):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _conv(features, stride, name, kernel=3):
  return nn.Conv(
    features,
    (kernel, kernel),
    (stride, stride),
    padding=[(kernel // 2, kernel // 2)] * 2,
    use_bias=False,
    kernel_init=nn.initializers.he_normal(),
    name=name,
  )


class PreActivation(nn.Module):
  """The identity, named `preact` where a block adds its branches before the ReLU: the sum becomes a
  layer of its own ("section1/block3/preact"), captured like any other (OFD's and ReviewKD's teacher
  features, RepDistiller's and mdistiller's `preact=True`). It has no parameters and computes nothing."""

  @nn.compact
  def __call__(self, x):
    return x


class BasicBlock(nn.Module):
  """Post-activation basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); the sum before the
  ReLU is the layer `preact`."""

  features: int
  stride: int

  @nn.compact
  def __call__(self, x, train=False):
    y = jax.nn.relu(_bn(train, "bn1")(_conv(self.features, self.stride, "conv1")(x)))
    y = _bn(train, "bn2")(_conv(self.features, 1, "conv2")(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = _bn(train, "shortcut_bn")(_conv(self.features, self.stride, "shortcut", kernel=1)(x))
    return jax.nn.relu(PreActivation(name="preact")(x + y))


class PreActBlock(nn.Module):
  """Wide-ResNet block: conv(relu(bn(conv(relu(bn(x)))))) + shortcut, dropout between the convs."""

  features: int
  stride: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train=False):
    a = jax.nn.relu(_bn(train, "bn1")(x))
    y = _conv(self.features, self.stride, "conv1")(a)
    y = jax.nn.relu(_bn(train, "bn2")(y))
    if self.dropout:
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = _conv(self.features, 1, "conv2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = _conv(self.features, self.stride, "shortcut", kernel=1)(a)
    return x + y


class Section(nn.Module):
  """`blocks` blocks; the first one changes the resolution by `stride`."""

  features: int
  blocks: int
  stride: int
  preact: bool = False
  dropout: float = 0.0

  @property
  def nonlinearity(self):
    return "linear" if self.preact else "relu"

  @nn.compact
  def __call__(self, x, train=False):
    for i in range(self.blocks):
      stride = self.stride if i == 0 else 1
      block = (
        PreActBlock(self.features, stride, self.dropout, name=f"block{i + 1}")
        if self.preact
        else BasicBlock(self.features, stride, name=f"block{i + 1}")
      )
      x = block(x, train)
    return x


class Stem(nn.Module):
  features: int
  preact: bool = False

  @property
  def nonlinearity(self):
    return "linear" if self.preact else "relu"

  @nn.compact
  def __call__(self, x, train=False):
    x = _conv(self.features, 1, "conv")(x)
    return x if self.preact else jax.nn.relu(_bn(train, "bn")(x))


class ResNet(nn.Module):
  """stem → section1..S → (BN-ReLU for pre-activation) → global average pool → logits."""

  num_classes: int
  blocks: int | tuple  # n blocks per section, or one count per section
  widths: tuple = (16, 32, 64)
  stem_width: int = 16
  preact: bool = False
  dropout: float = 0.0  # wide ResNets: between the two convs of each block

  @property
  def sections(self):
    names = ["stem"] + [f"section{i}" for i in range(1, len(self.widths) + 1)]
    return tuple(zip(names[:-1], names[1:]))

  @nn.compact
  def __call__(self, x, train=False):
    x = Stem(self.stem_width, self.preact, name="stem")(x, train)
    counts = self.blocks if isinstance(self.blocks, tuple) else (self.blocks,) * len(self.widths)
    for i, (width, count) in enumerate(zip(self.widths, counts)):
      x = Section(width, count, 1 if i == 0 else 2, self.preact, self.dropout, name=f"section{i + 1}")(x, train)
    if self.preact:
      x = jax.nn.relu(_bn(train, "final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="logits")(x)


def resnet(depth, num_classes, width=1, base=16, dropout=0.0):
  """ResNet-depth (depth = 6n+2) with sections of base·w, 2·base·w, 4·base·w channels."""
  return ResNet(
    num_classes, (depth - 2) // 6, tuple(base * width * m for m in (1, 2, 4)), base * width, dropout=dropout
  )


FOUR_SECTION_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def four_section_resnet(depth, num_classes, base=64):
  """ResNet-10/18/34 (He et al. 2016, Table 1) for small images: sections of base·(1, 2, 4, 8) channels."""
  return ResNet(num_classes, FOUR_SECTION_BLOCKS[depth], tuple(base * m for m in (1, 2, 4, 8)), base)


def wide_resnet(depth, k, num_classes, dropout=0.0):
  """WRN-depth-k (depth = 6n+4): pre-activation sections of 16k, 32k, 64k channels."""
  return ResNet(num_classes, (depth - 4) // 6, (16 * k, 32 * k, 64 * k), 16, preact=True, dropout=dropout)

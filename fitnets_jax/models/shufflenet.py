"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018) for CIFAR, as RepDistiller's `ShuffleV1` and
`ShuffleV2` define them (after kuangliu's pytorch-cifar): a 1×1 24-channel stem, three sections of
units, global average pooling and `logits`.

- V1, groups 3: sections of 240/480/960 channels with 4/8/4 units; a unit is a grouped 1×1 conv to a
  quarter of its output (ungrouped on the 24-channel stem), the channel shuffle, a 3×3 depthwise conv
  and a grouped 1×1 conv; the first unit of a section strides by 2 and concatenates a 3×3 average
  pool of its input, the others add their input.
- V2, ×1: sections of 116/232/464 channels, each a stride-2 `down` unit then 3/7/3 units that split
  the channels in half, transform one half (1×1, 3×3 depthwise, 1×1) and shuffle them back; then
  `head`, a 1×1 conv to 1024.

A unit's sum or concatenation before its final ReLU is the layer `preact`; V2's is taken before the
shuffle, as the reference's `preact` features are.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from fitnets_jax.models.layers import TORCH_DEFAULT, PreActivation, batch_norm, channel_shuffle, conv


def _conv(features, stride, name, kernel=1, groups=1):
  return conv(features, stride, name, kernel, groups, init=TORCH_DEFAULT)


def _conv_bn(x, train, features, stride, name, kernel=1, groups=1):
  return batch_norm(train, f"bn{name}")(_conv(features, stride, f"conv{name}", kernel, groups)(x))


class ShuffleV1Unit(nn.Module):
  features: int  # the unit's output channels (the pooled input included when it strides)
  stride: int
  groups: int
  first_groups: int  # the first 1×1 conv's groups: 1 on the stem's 24 channels

  @nn.compact
  def __call__(self, x, train=False):
    branch = self.features - (x.shape[-1] if self.stride == 2 else 0)
    mid = branch // 4
    y = jax.nn.relu(_conv_bn(x, train, mid, 1, "1", groups=self.first_groups))
    y = channel_shuffle(y, self.first_groups)
    y = jax.nn.relu(_conv_bn(y, train, mid, self.stride, "2", kernel=3, groups=mid))
    y = _conv_bn(y, train, branch, 1, "3", groups=self.groups)
    if self.stride == 2:
      pooled = nn.avg_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)), count_include_pad=True)
      y = jnp.concatenate([y, pooled], axis=-1)
    else:
      y = y + x
    return jax.nn.relu(PreActivation(name="preact")(y))


class ShuffleV2Unit(nn.Module):
  """Split in half, 1×1-BN-ReLU, 3×3 depthwise-BN, 1×1-BN-ReLU on the second half, concatenate, shuffle."""

  @nn.compact
  def __call__(self, x, train=False):
    half = x.shape[-1] // 2
    kept, y = x[..., :half], x[..., half:]
    c = y.shape[-1]
    y = jax.nn.relu(_conv_bn(y, train, c, 1, "1"))
    y = _conv_bn(y, train, c, 1, "2", kernel=3, groups=c)
    y = _conv_bn(y, train, c, 1, "3")
    PreActivation(name="preact")(jnp.concatenate([kept, y], axis=-1))
    return channel_shuffle(jnp.concatenate([kept, jax.nn.relu(y)], axis=-1), 2)


class ShuffleV2Down(nn.Module):
  """Two stride-2 branches, concatenated and shuffled: 3×3 depthwise-BN, 1×1-BN-ReLU; and 1×1-BN-ReLU,
  3×3 depthwise-BN, 1×1-BN-ReLU."""

  features: int

  @nn.compact
  def __call__(self, x, train=False):
    mid, c = self.features // 2, x.shape[-1]
    left = _conv_bn(x, train, c, 2, "1", kernel=3, groups=c)
    left = jax.nn.relu(_conv_bn(left, train, mid, 1, "2"))
    right = jax.nn.relu(_conv_bn(x, train, mid, 1, "3"))
    right = _conv_bn(right, train, mid, 2, "4", kernel=3, groups=mid)
    right = jax.nn.relu(_conv_bn(right, train, mid, 1, "5"))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class Section(nn.Module):
  features: int
  units: int
  version: int
  groups: int = 3
  first_groups: int = 3
  nonlinearity = "relu"

  @nn.compact
  def __call__(self, x, train=False):
    if self.version == 1:
      for i in range(self.units):
        groups = self.first_groups if i == 0 else self.groups
        x = ShuffleV1Unit(self.features, 2 if i == 0 else 1, self.groups, groups, name=f"unit{i + 1}")(x, train)
      return x
    x = ShuffleV2Down(self.features, name="down")(x, train)
    for i in range(self.units):
      x = ShuffleV2Unit(name=f"unit{i + 1}")(x, train)
    return x


class ConvBNReLU(nn.Module):
  features: int
  nonlinearity = "relu"

  @nn.compact
  def __call__(self, x, train=False):
    return jax.nn.relu(_conv_bn(x, train, self.features, 1, ""))


class ShuffleNet(nn.Module):
  num_classes: int
  version: int  # 1 or 2
  widths: tuple  # each section's output channels
  units: tuple  # units per section (V2: after its down unit)
  groups: int = 3  # V1
  head: int = 0  # V2: the 1×1 conv's channels before pooling
  stem: int = 24

  sections = (("stem", "section1"), ("section1", "section2"), ("section2", "section3"))

  @nn.compact
  def __call__(self, x, train=False):
    x = ConvBNReLU(self.stem, name="stem")(x, train)
    for i, (width, units) in enumerate(zip(self.widths, self.units)):
      first = 1 if i == 0 else self.groups
      x = Section(width, units, self.version, self.groups, first, name=f"section{i + 1}")(x, train)
    if self.head:
      x = ConvBNReLU(self.head, name="head")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    bound = x.shape[-1] ** -0.5  # nn.Linear's default U(±1/√fan_in), weight and bias
    uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)  # noqa: E731
    return nn.Dense(self.num_classes, kernel_init=uniform, bias_init=uniform, name="logits")(x)


def shufflenet_v1(num_classes):
  """RepDistiller's ShuffleV1: groups 3, sections 240/480/960 with 4/8/4 units."""
  return ShuffleNet(num_classes, 1, (240, 480, 960), (4, 8, 4), groups=3)


def shufflenet_v2(num_classes):
  """RepDistiller's ShuffleV2 (net size 1): sections 116/232/464 with 3/7/3 units, head 1024."""
  return ShuffleNet(num_classes, 2, (116, 232, 464), (3, 7, 3), head=1024)

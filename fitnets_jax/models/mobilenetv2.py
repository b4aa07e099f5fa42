"""MobileNetV2 for CIFAR (Sandler et al. 2018), as RepDistiller's `mobile_half` (the CRD tables'
"MobileNetV2"): expansion T = 6, width ×0.5, a stride-2 stem and their CIFAR strides.

`stem` (3×3 stride-2 conv, BN, ReLU) → `stage1..stage7` of inverted-residual blocks `block1..n`
(t, c, n, s = 1,16,1,1 · T,24,2,1 · T,32,3,2 · T,64,4,2 · T,96,3,1 · T,160,3,2 · T,320,1,1; each c ×
width, rounded down) → `head` (1×1 conv to 1280, BN, ReLU) → global average pooling → `logits`. Unlike
torchvision, every block has its 1×1 expansion conv, t = 1 included. A stage ends in a linear BN
(plus the residual); the sections are RepDistiller's feature points stem → stage2 → stage3 → stage5 →
stage7.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from fitnets_jax.models.layers import FAN_OUT_NORMAL, batch_norm, conv

STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1), (None, 160, 3, 2))
STAGES += ((None, 320, 1, 1),)  # (expansion, channels, blocks, stride); None: the network's T


def _conv(features, stride, name, kernel=1, groups=1):
  return conv(features, stride, name, kernel, groups, init=FAN_OUT_NORMAL)


class InvertedResidual(nn.Module):
  """1×1 expansion conv-BN-ReLU, 3×3 depthwise conv-BN-ReLU, 1×1 linear conv-BN; the input added back
  when the shape is kept."""

  features: int
  stride: int
  expansion: int
  nonlinearity = "linear"

  @nn.compact
  def __call__(self, x, train=False):
    hidden = x.shape[-1] * self.expansion
    y = jax.nn.relu(batch_norm(train, "bn1")(_conv(hidden, 1, "conv1")(x)))
    y = jax.nn.relu(batch_norm(train, "bn2")(_conv(hidden, self.stride, "conv2", kernel=3, groups=hidden)(y)))
    y = batch_norm(train, "bn3")(_conv(self.features, 1, "conv3")(y))
    return x + y if self.stride == 1 and x.shape[-1] == self.features else y


class Stage(nn.Module):
  features: int
  blocks: int
  stride: int
  expansion: int
  nonlinearity = "linear"

  @nn.compact
  def __call__(self, x, train=False):
    for i in range(self.blocks):
      x = InvertedResidual(self.features, self.stride if i == 0 else 1, self.expansion, name=f"block{i + 1}")(x, train)
    return x


class ConvBN(nn.Module):
  features: int
  stride: int
  kernel: int
  nonlinearity = "relu"

  @nn.compact
  def __call__(self, x, train=False):
    return jax.nn.relu(batch_norm(train, "bn")(_conv(self.features, self.stride, "conv", self.kernel)(x)))


class MobileNetV2(nn.Module):
  num_classes: int
  expansion: int = 6  # T
  width: float = 0.5
  last_channels: int = 1280

  sections = (("stem", "stage2"), ("stage2", "stage3"), ("stage3", "stage5"), ("stage5", "stage7"))

  @nn.compact
  def __call__(self, x, train=False):
    x = ConvBN(int(32 * self.width), 2, 3, name="stem")(x, train)
    for i, (t, c, n, s) in enumerate(STAGES, start=1):
      x = Stage(int(c * self.width), n, s, t or self.expansion, name=f"stage{i}")(x, train)
    last = int(self.last_channels * self.width) if self.width > 1.0 else self.last_channels
    x = ConvBN(last, 1, 1, name="head")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="logits")(x)

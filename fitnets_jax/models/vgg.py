"""VGG with batch norm for CIFAR (Simonyan & Zisserman 2015), as RepDistiller's `vgg8/11/13/16/19` define it.

Five blocks `block0..block4` of 3×3 convs (with bias) each followed by BN and ReLU; the last ReLU of a
block comes after its `preact` layer. A 2×2 max-pool follows blocks 0, 1 and 2; after block 3 only
for 64-pixel inputs (the reference forward pass skips it on CIFAR's 32×32). Global average pooling
and `logits` (512 → classes). The sections are block0 → block1 → … → block4.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from fitnets_jax.models.layers import FAN_OUT_NORMAL, PreActivation, batch_norm, conv

VGG_WIDTHS = {  # RepDistiller's cfg 'S', 'A', 'B', 'D', 'E'
  8: ((64,), (128,), (256,), (512,), (512,)),
  11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
  13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
  16: ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
  19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGGBlock(nn.Module):
  """conv-BN-ReLU × len(widths); the last BN's output is the layer `preact`."""

  widths: tuple
  nonlinearity = "relu"

  @nn.compact
  def __call__(self, x, train=False):
    for i, width in enumerate(self.widths, start=1):
      x = batch_norm(train, f"bn{i}")(conv(width, 1, f"conv{i}", bias=True, init=FAN_OUT_NORMAL)(x))
      if i < len(self.widths):
        x = jax.nn.relu(x)
    return jax.nn.relu(PreActivation(name="preact")(x))


class VGG(nn.Module):
  num_classes: int
  widths: tuple  # one tuple of conv widths per block

  @property
  def sections(self):
    names = [f"block{i}" for i in range(len(self.widths))]
    return tuple(zip(names[:-1], names[1:]))

  @nn.compact
  def __call__(self, x, train=False):
    pool_after = (0, 1, 2, 3) if x.shape[1] == 64 else (0, 1, 2)
    for i, widths in enumerate(self.widths):
      x = VGGBlock(widths, name=f"block{i}")(x, train)
      if i in pool_after:
        x = nn.max_pool(x, (2, 2), (2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="logits")(x)


def vgg(depth, num_classes):
  """RepDistiller's vgg<depth> (their `vgg8_bn` … `vgg19_bn`, the CRD tables' vgg8 … vgg19)."""
  return VGG(num_classes, VGG_WIDTHS[depth])

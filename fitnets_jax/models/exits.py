"""Early-exit heads of "Be Your Own Teacher" (Zhang et al., ICCV 2019, §3.1 and Fig. 2).

A shallow section's output goes through a bottleneck of depthwise-separable convolutions, one
per later section, each bringing it to that section's channels and resolution, so the last one
matches the deepest section. Global average pooling gives the exit's feature F_i; a dense layer
gives its logits. A separable block is the authors' SepConv: depthwise 3×3 (stride s), 1×1,
BN, ReLU, depthwise 3×3, 1×1 to the new width, BN, ReLU.

With `attention` (the authors' released code; not in the paper), the section output is first
multiplied by a mask: sigmoid(upsample(ReLU(BN(SepConv_stride2(x))))), bilinear back to x's size.
The BN and ReLU after the SepConv are in the authors' `resnet.py` as its derivatives copy it; its
stored revision 307141b has the SepConv alone (`attention_norm=False`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


class SeparableBlock(nn.Module):
  features: int
  stride: int

  @nn.compact
  def __call__(self, x, train=False):
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
    channels = x.shape[-1]
    depthwise = lambda stride, name: nn.Conv(
      channels, (3, 3), (stride, stride), padding=[(1, 1)] * 2, feature_group_count=channels, use_bias=False, name=name
    )
    pointwise = lambda features, name: nn.Conv(features, (1, 1), use_bias=False, name=name)
    x = jax.nn.relu(bn("bn1")(pointwise(channels, "pointwise1")(depthwise(self.stride, "depthwise1")(x))))
    return jax.nn.relu(bn("bn2")(pointwise(self.features, "pointwise2")(depthwise(1, "depthwise2")(x))))


class ExitHead(nn.Module):
  """[attention mask →] bottleneck (`blocks`: (channels, stride) per separable block) → average pool
  → logits.

  Returns (logits, feature): the feature is the pooled bottleneck output, compared with the
  deepest section's pooled output in BYOT's feature term."""

  blocks: tuple
  num_classes: int
  attention: bool = False
  attention_norm: bool = True  # BN and ReLU after the attention's SepConv

  @nn.compact
  def __call__(self, x, train=False):
    if self.attention:
      mask = SeparableBlock(x.shape[-1], 2, name="attention")(x, train)
      if self.attention_norm:
        mask = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="attention_bn")(mask)
        mask = jax.nn.relu(mask)
      x = x * jax.nn.sigmoid(jax.image.resize(mask, x.shape, "bilinear"))
    for i, (features, stride) in enumerate(self.blocks):
      x = SeparableBlock(features, stride, name=f"sepconv{i + 1}")(x, train)
    feature = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="logits")(feature), feature

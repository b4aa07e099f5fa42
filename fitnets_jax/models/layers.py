"""The pieces the convolutional families share: a BN with PyTorch's defaults, a padded conv, the `preact`
identity and ShuffleNet's channel shuffle."""

import flax.linen as nn

# PyTorch's own initialisers, for the families whose reference code keeps them.
FAN_OUT_NORMAL = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # N(0, 2/(k²·out))
TORCH_DEFAULT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # nn.Conv2d's U(±1/√fan_in)


def batch_norm(train, name):
  """nn.BatchNorm2d's defaults: momentum 0.1 (flax's 0.9), ε 1e-5."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def conv(features, stride, name, kernel=3, groups=1, bias=False, init=nn.initializers.he_normal()):
  """A kernel×kernel conv padded by kernel//2 on each side (PyTorch's `padding=kernel // 2`), in `groups`
  groups (depthwise when groups = channels)."""
  return nn.Conv(
    features,
    (kernel, kernel),
    (stride, stride),
    padding=[(kernel // 2, kernel // 2)] * 2,
    feature_group_count=groups,
    use_bias=bias,
    kernel_init=init,
    name=name,
  )


class PreActivation(nn.Module):
  """The identity, named `preact` where a block adds its branches before the ReLU: the sum becomes a
  layer of its own ("section1/block3/preact"), captured like any other (OFD's and ReviewKD's teacher
  features, RepDistiller's and mdistiller's `preact=True`). It has no parameters and computes nothing."""

  @nn.compact
  def __call__(self, x):
    return x


def channel_shuffle(x, groups):
  """ShuffleNet's shuffle (Zhang et al. 2018, §3.1) on NHWC: channels seen as (groups, C/groups), transposed."""
  *lead, channels = x.shape
  return x.reshape(*lead, groups, channels // groups).swapaxes(-1, -2).reshape(*lead, channels)

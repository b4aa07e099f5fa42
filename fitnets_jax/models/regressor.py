"""The FitNets regressor r(·) (Romero et al. 2015, §2.2, eq. 3).

A convolution with no padding and stride 1 whose kernel k_i = N_g,i − N_h,i + 1 maps the
student's N_g×N_g guided map onto the teacher's N_h×N_h hint map, with as many output channels
as the hint layer and the hint layer's non-linearity (maxout with the teacher's number of pieces
for a maxout teacher). Initialised U(±0.05) as in the authors' code.
"""

import flax.linen as nn
import jax

from fitnets_jax.models.maxout import kernel_init, maxout


class Regressor(nn.Module):
  features: int
  kernel: tuple
  nonlinearity: str = "linear"  # maxout | relu | linear
  pieces: int = 1
  init_range: float = 0.05

  @nn.compact
  def __call__(self, x):
    width = self.features * (self.pieces if self.nonlinearity == "maxout" else 1)
    x = nn.Conv(width, tuple(self.kernel), padding="VALID", kernel_init=kernel_init(self.init_range), name="conv")(x)
    if self.nonlinearity == "maxout":
      return maxout(x, self.pieces)
    if self.nonlinearity == "relu":
      return jax.nn.relu(x)
    return x

"""The FitNets regressor r(·) (Romero et al. 2015, §2.2, eq. 3).

A convolution with no padding and stride 1 whose kernel k_i = N_g,i − N_h,i + 1 maps the
student's N_g×N_g guided map onto the teacher's N_h×N_h hint map, with as many output channels
as the hint layer and the hint layer's non-linearity (maxout with the teacher's number of pieces
for a maxout teacher). Initialised U(±0.05) as in the authors' code, whose regressor's bias is
tied or untied as the hint layer's (`generateConvRegressor`: tied_b=teacher_hintlayer.tied_b).
"""

from typing import Optional

import flax.linen as nn
import jax

from fitnets_jax.models.maxout import kernel_init, maxout, untied_bias


class Regressor(nn.Module):
  features: int
  kernel: tuple
  nonlinearity: str = "linear"  # maxout | relu | linear
  pieces: int = 1
  init_range: float = 0.05
  untied_bias_shape: Optional[tuple] = None  # (h, w) of the hint map: one bias per position (untied)

  @nn.compact
  def __call__(self, x):
    width = self.features * (self.pieces if self.nonlinearity == "maxout" else 1)
    tied = self.untied_bias_shape is None
    x = nn.Conv(
      width, tuple(self.kernel), padding="VALID", use_bias=tied, kernel_init=kernel_init(self.init_range), name="conv"
    )(x)
    if not tied:
      x = untied_bias(self, x)
    if self.nonlinearity == "maxout":
      return maxout(x, self.pieces)
    if self.nonlinearity == "relu":
      return jax.nn.relu(x)
    return x

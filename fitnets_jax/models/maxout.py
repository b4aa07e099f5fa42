"""Maxout convolutional networks: Goodfellow et al.'s teachers and the FitNets students.

Every layer is named (`conv1` … `convN`, `fc`, `logits`) so a config can point at it. As in
pylearn2's MaxoutConvC01B, a conv layer's output (what a hint captures) is taken *after* its
maxout and its pooling. Pooling uses cuda-convnet's rule, out = ceil((n − size)/stride) + 1,
which reproduces the paper's 725M multiplications for the CIFAR-10 teacher (Romero et al. 2015, Table 5).
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def _on_cpu():
  return jax.default_backend() == "cpu"


@jax.custom_jvp
def first_maximum(a, b):
  """max(a, b), whose derivative follows `a` wherever a ≥ b: at an exact tie the whole gradient goes
  to the first argument, as PyTorch's max pooling gives it to one maximum. `jnp.maximum` splits it in
  halves instead, which costs XLA:CPU a comparison, a select and a division per element."""
  return jnp.maximum(a, b)


@first_maximum.defjvp
def _first_maximum_jvp(primals, tangents):
  (a, b), (da, db) = primals, tangents
  return jnp.maximum(a, b), jnp.where(a >= b, da, db)


def maxout(x, pieces):
  """Maxout over groups of `pieces` consecutive channels (Goodfellow et al. 2013, eq. 1).

  On CPU the groups are taken as strided channel slices combined by elementwise maxima: XLA:CPU
  differentiates a reshape to a tiny minor axis + max slower (the MNIST student's conv1, 5×5 from 1
  to 32 channels on 28×28 at batch 128, takes 14.5 ms forward and backward this way against 24 ms).
  Accelerators keep the reshape, which their layouts favour. The values are identical; at exact ties
  the gradient is split instead of going to one piece.
  """
  if pieces == 1:
    return x
  if _on_cpu():
    return functools.reduce(jnp.maximum, [x[..., k::pieces] for k in range(pieces)])
  return jnp.max(x.reshape(x.shape[:-1] + (x.shape[-1] // pieces, pieces)), axis=-1)


def max_pool_ceil(x, size, stride):
  """Max pooling whose windows cover the whole map (cuda-convnet's rule, out = ceil((n − size)/stride) + 1).

  On CPU the pooling is separable: the maximum of `size` strided row slices of the (−∞-padded) map,
  then of `size` strided column slices of that, by `first_maximum`. XLA:CPU's gradient of
  `reduce_window` (select-and-scatter) is slower, and so is one maximum of all size² slices by
  `jnp.maximum`: the MNIST student's conv2 (3×3, 16 → 32 channels on 24×24, then a 4×4 stride-2 pool)
  takes 21 ms forward and backward this way, against 34 ms with `reduce_window` and 52 ms with the
  size² slices (benchmarks/layer_profile.py, docs/speed.md). Same values; at an exact tie the
  gradient goes to one maximum of the window, as with `reduce_window`, if not always the same one.
  """
  pads = []
  for n in x.shape[1:3]:
    out = max(1, math.ceil((n - size) / stride) + 1)
    pads.append((0, max(0, (out - 1) * stride + size - n)))
  if not _on_cpu():
    return nn.max_pool(x, (size, size), strides=(stride, stride), padding=pads)
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  rows, cols = ((n - size) // stride + 1 for n in x.shape[1:3])
  x = functools.reduce(first_maximum, [x[:, i : i + (rows - 1) * stride + 1 : stride] for i in range(size)])
  return functools.reduce(first_maximum, [x[:, :, j : j + (cols - 1) * stride + 1 : stride] for j in range(size)])


def kernel_init(init_range):
  """U(±init_range) as in the maxout/FitNets papers; LeCun normal when init_range is 0."""
  if not init_range:
    return nn.initializers.lecun_normal()

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -init_range, init_range)

  return init


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """One maxout conv layer: channels, pieces, square kernel, zero padding, then pooling."""

  features: int
  pieces: int = 2
  kernel: int = 3
  padding: int = 1
  pool: int = 0  # 0: no pooling
  pool_stride: int = 0  # 0: same as pool
  global_pool: bool = False  # max over the whole remaining map (FitNets' final 8×8 pool)
  tied_bias: bool = True  # False: one bias per output position and channel (pylearn2's default tied_b: 0)


def untied_bias(module, x):
  """`x` plus an untied bias: one learned value per position and channel of `x` (pylearn2's conv layers
  with tied_b 0: `b` of shape (channels, rows, cols)), initialised at 0."""
  return x + module.param("untied_bias", nn.initializers.zeros, x.shape[1:], jnp.float32).astype(x.dtype)


class MaxoutConv(nn.Module):
  """conv → (batch norm) → maxout → (max pool). Captured output: after the pooling. With an untied
  bias (`spec.tied_bias` False) the bias is per position, added to the convolution's output."""

  spec: ConvSpec
  batch_norm: bool = False
  init_range: float = 0.0
  nonlinearity = "maxout"

  @property
  def pieces(self):
    return self.spec.pieces

  @property
  def tied_bias(self):
    return self.spec.tied_bias

  @nn.compact
  def __call__(self, x, train=False):
    s = self.spec
    padding = [(s.padding, s.padding)] * 2
    if _on_cpu() and 2 * s.padding > s.kernel - 1:
      # Padded by more than 'SAME' (the maxout teachers' 5×5 convs padded by 3): XLA:CPU runs such a
      # convolution up to 9× slower than the same convolution on an input padded beforehand. The
      # barrier keeps XLA from folding the padding back into the convolution. Same values.
      x = jax.lax.optimization_barrier(jnp.pad(x, ((0, 0), *padding, (0, 0))))
      padding = "VALID"
    x = nn.Conv(
      s.features * s.pieces,
      (s.kernel, s.kernel),
      padding=padding,
      use_bias=not self.batch_norm and s.tied_bias,
      kernel_init=kernel_init(self.init_range),
      name="conv",
    )(x)
    if not s.tied_bias and not self.batch_norm:
      x = untied_bias(self, x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
    x = maxout(x, s.pieces)
    if s.global_pool:
      return jnp.max(x, axis=(1, 2), keepdims=True)
    if s.pool:
      x = max_pool_ceil(x, s.pool, s.pool_stride or s.pool)
    return x


class MaxoutDense(nn.Module):
  """Dense → (batch norm) → maxout."""

  units: int
  pieces: int
  batch_norm: bool = False
  init_range: float = 0.0
  nonlinearity = "maxout"

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(
      self.units * self.pieces, use_bias=not self.batch_norm, kernel_init=kernel_init(self.init_range), name="dense"
    )(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
    return maxout(x, self.pieces)


def input_dropout(module, x, include, scale, train):
  """pylearn2's Dropout cost on one layer's input: keep each unit with probability `include` and
  multiply the kept ones by `scale` (pylearn2: 1/include, but 1 on the image), at training only."""
  if not train or include >= 1.0:
    return x
  keep = jax.random.bernoulli(module.make_rng("dropout"), include, x.shape)
  return jnp.where(keep, x * scale, 0.0).astype(x.dtype)


class MaxoutNet(nn.Module):
  """Maxout conv layers, an optional maxout dense layer, and a softmax layer (`logits`).

  Dropout (rate `dropout`, only when > 0) is applied before `fc` and before `logits`. With
  `input_dropout` (one include probability per weight layer, conv1 … logits) each layer's input is
  dropped instead, as Goodfellow et al.'s pylearn2 yamls do (`Dropout` cost: the image kept with 0.8
  and not rescaled, every hidden input kept with 0.5 and scaled by 2).
  """

  convs: tuple
  num_classes: int
  dense_units: int = 0
  dense_pieces: int = 1
  batch_norm: bool = False
  dropout: float = 0.0
  init_range: float = 0.0
  input_dropout: tuple = ()

  @nn.compact
  def __call__(self, x, train=False):
    include = list(self.input_dropout)

    def drop(x, index):
      if not include:
        return x
      return input_dropout(self, x, include[index], 1.0 if index == 0 else 1.0 / include[index], train)

    for i, spec in enumerate(self.convs, start=1):
      x = MaxoutConv(spec, self.batch_norm, self.init_range, name=f"conv{i}")(drop(x, i - 1), train)
    x = x.reshape((x.shape[0], -1))
    if self.dense_units:
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train, name="fc_dropout")(x)
      x = MaxoutDense(self.dense_units, self.dense_pieces, self.batch_norm, self.init_range, name="fc")(
        drop(x, len(self.convs)), train
      )
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train, name="logits_dropout")(x)
    x = drop(x, len(self.convs) + bool(self.dense_units))
    return nn.Dense(self.num_classes, kernel_init=kernel_init(self.init_range), name="logits")(x)

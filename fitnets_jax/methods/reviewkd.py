"""`reviewkd`: knowledge review (Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021),
one stage beside the labels.

The student's features of every level, deepest first, pass through a chain of attention-based fusion
(ABF) modules: level i's map goes through a 1×1 conv + BN to `mid` channels, and, below the deepest
level, is fused with the chain's residual from the level above (nearest-upsampled to its size) by two
spatial attention maps from a 1×1 conv + sigmoid on their concatenation (§3.3, Fig. 3); the fused map,
nearest-resized to the teacher's size at that level, goes through a 3×3 conv + BN to the teacher's
channels. The hierarchical context loss (HCL, §3.4) compares each output with the teacher's map:
(MSE + Σ_l 2^-k·MSE of both adaptive-average-pooled to l×l, l = 4, 2, 1 below the map's height) / Σ of
the weights, summed over levels. The loss is

  L = H(y, P_S) + w·min(epoch / warm-up, 1)·Σ_levels HCL,

as the authors' CIFAR-100 code (dvlab-research/ReviewKD `CIFAR-100/model/reviewkd.py`, `train.py`):
levels are each section's output and the pooled features (the student's after ReLU, the teacher's
before: `preact=True`); `mid` = min(512, channels of the student's pooled features); conv kernels
kaiming-uniform with a = 1, the attention conv torch's default; the BN layers normalise with the batch's
statistics (the heads never run in inference mode); the warm-up counts epochs from 0, so the first
epoch has no review term (mdistiller counts from 1: `reviewkd.first_epoch`); weight 1 (train.py's
`--kd-loss-weight`; reviewKD.sh uses 5 for most pairs, 0.6 for ResNet-56 → 20, 1 for 110 → 32). The
fusion modules train with the student and are left behind.
"""

import math

import ml_collections

from fitnets_jax.errors import check
from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

HCL_LEVELS = (4, 2, 1)  # the pooled sizes of the hierarchical context loss (the authors' `hcl`)


def defaults():
  return {
    "reviewkd": ml_collections.ConfigDict(
      dict(
        weight=1.0,  # train.py --kd-loss-weight (reviewKD.sh: 5 for most pairs, 0.6 resnet56→20, 1 resnet110→32)
        warmup_epochs=20.0,  # train.py --kd-warm-up: the review term grows as epoch / warm-up
        first_epoch=0,  # the first epoch's number in epoch / warm-up: 0 as the authors' train.py, 1 as mdistiller
        max_mid_channels=512,  # mid = min(this, channels of the student's pooled features) (the authors' 512)
        # The levels below the pooled features, shallow to deep; []: each section's output — the
        # student's after its ReLU, the teacher's before it (its last block's `preact`), as the authors.
        student_layers=[],
        teacher_layers=[],
        # With student_layers []: the student's sections before their ReLU (mdistiller's STU_PREACT).
        student_preact=False,
      )
    )
  }


def nearest_indices(size_in, size_out):
  """torch's F.interpolate(mode='nearest') source indices along one axis: ⌊i·in/out⌋."""
  import numpy as np

  return np.minimum(np.floor(np.arange(size_out) * (size_in / size_out)).astype(np.int64), size_in - 1)


def resize_nearest(x, size):
  """(batch, h, w, c) → (batch, size[0], size[1], c), torch's nearest interpolation."""
  if x.shape[1:3] == tuple(size):
    return x
  x = x[:, nearest_indices(x.shape[1], size[0])]
  return x[:, :, nearest_indices(x.shape[2], size[1])]


def hcl(student_maps, teacher_maps):
  """Σ_levels of the hierarchical context loss (Chen et al. §3.4): (MSE + Σ_k 2^-k·MSE of the maps
  adaptive-average-pooled to l_k × l_k, for l = 4, 2, 1 below the map's height) / (1 + Σ_k 2^-k)."""
  import jax
  import jax.numpy as jnp

  from fitnets_jax import losses

  total = 0.0
  for s, t in zip(student_maps, teacher_maps):
    s, t = s.astype(jnp.float32), jax.lax.stop_gradient(t.astype(jnp.float32))
    value, weight, weights = jnp.mean(jnp.square(s - t)), 1.0, 1.0
    for level in HCL_LEVELS:
      if level >= s.shape[1]:
        continue
      weight /= 2.0
      pooled = losses.adaptive_average_pool(s, (level, level)) - losses.adaptive_average_pool(t, (level, level))
      value = value + weight * jnp.mean(jnp.square(pooled))
      weights += weight
    total = total + value / weights
  return total


def kaiming_uniform_a1(key, shape):
  """torch's kaiming_uniform_(a=1) of a conv kernel (HWIO here): U(±√(3 / fan_in))."""
  import jax

  bound = math.sqrt(3.0 / math.prod(shape[:-1]))
  return jax.random.uniform(key, shape, minval=-bound, maxval=bound)


def abf_init(rng, in_channels, mid_channels, out_channels, fuse):
  """One ABF module's parameters: conv1 (1×1, no bias) + BN, conv2 (3×3, no bias) + BN, and with
  `fuse` the attention conv (1×1 with bias, 2 maps)."""
  import jax

  k1, k2, k3 = jax.random.split(rng, 3)
  params = {
    "conv1": kaiming_uniform_a1(k1, (1, 1, in_channels, mid_channels)),
    "bn1": shared.batch_norm_params(mid_channels),
    "conv2": kaiming_uniform_a1(k2, (3, 3, mid_channels, out_channels)),
    "bn2": shared.batch_norm_params(out_channels),
  }
  if fuse:
    params["attention"] = {
      "kernel": shared.torch_uniform(2 * mid_channels)(k3, (1, 1, 2 * mid_channels, 2)),
      "bias": shared.torch_uniform(2 * mid_channels)(jax.random.fold_in(k3, 1), (2,)),
    }
  return params


def abf(params, x, residual, out_size):
  """ABF (Chen et al. Fig. 3): (output for the loss, the residual handed to the next shallower level)."""
  import jax
  import jax.numpy as jnp

  x = shared.batch_norm_train(shared.conv_same(x, params["conv1"]), params["bn1"])
  if "attention" in params:
    residual = resize_nearest(residual, x.shape[1:3])
    pair = jnp.concatenate([x, residual], axis=-1)
    z = jax.nn.sigmoid(shared.conv_same(pair, params["attention"]["kernel"]) + params["attention"]["bias"])
    x = x * z[..., :1] + residual * z[..., 1:]
  x = resize_nearest(x, out_size)
  return shared.batch_norm_train(shared.conv_same(x, params["conv2"]), params["bn2"]), x


def review(params, student_maps, out_sizes):
  """The ABF chain over the student's levels (shallow to deep), run deepest first; the outputs, shallow
  to deep."""
  outputs, residual = [], None
  for i in reversed(range(len(student_maps))):
    out, residual = abf(params[f"abf{i}"], student_maps[i], residual, out_sizes[i])
    outputs.insert(0, out)
  return outputs


def levels(config, student, teacher):
  """The map levels; the pooled features (the layer each classifier reads, averaged) follow them."""
  cfg = config.reviewkd
  return shared.level_pairs(student, teacher, "reviewkd", cfg, "ReviewKD", cfg.student_preact)


def reviewkd_stage(ctx):
  import jax.numpy as jnp

  cfg = ctx.config.reviewkd
  check(cfg.warmup_epochs > 0, f"reviewkd.warmup_epochs={cfg.warmup_epochs!r} must be > 0 (a tiny value: no warm-up).")
  check(
    cfg.first_epoch in (0, 1), f"reviewkd.first_epoch={cfg.first_epoch!r} must be 0 (the authors) or 1 (mdistiller)."
  )
  check(
    isinstance(cfg.max_mid_channels, int) and cfg.max_mid_channels > 0,
    f"reviewkd.max_mid_channels={cfg.max_mid_channels!r} must be an integer > 0.",
  )
  student, teacher = ctx.student, ctx.teacher
  pairs = levels(ctx.config, student, teacher)
  s_levels, t_levels = [s.name for s, _ in pairs], [t.name for _, t in pairs]
  s_pooled, t_pooled = shared.classifier_input(student), shared.classifier_input(teacher)
  s_shapes, t_shapes = [s.shape for s, _ in pairs], [t.shape for _, t in pairs]
  for name, shape in [*zip(s_levels, s_shapes), *zip(t_levels, t_shapes)]:
    check(len(shape) == 3, f"ReviewKD's level {name!r} gives {shape}; a level must be a feature map (h, w, channels).")
  pooled_channels = [
    next(l.shape[-1] for l in net.layers if l.name == p) for net, p in ((student, s_pooled), (teacher, t_pooled))
  ]
  in_channels = [s[-1] for s in s_shapes] + [pooled_channels[0]]
  out_channels = [s[-1] for s in t_shapes] + [pooled_channels[1]]
  out_sizes = [s[:2] for s in t_shapes] + [(1, 1)]
  mid = min(cfg.max_mid_channels, in_channels[-1])

  def heads(rng):
    import jax

    last = len(in_channels) - 1
    return {
      f"abf{i}": abf_init(jax.random.fold_in(rng, i), c_in, mid, c_out, fuse=i < last)
      for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels))
    }

  pool = lambda f: jnp.mean(f.astype(jnp.float32), axis=(1, 2), keepdims=True)

  def term(s_feats, t_feats, params):
    t_feats = t_feats["teacher"]
    s_maps = [s_feats[n].astype(jnp.float32) for n in s_levels] + [pool(s_feats[s_pooled])]
    t_maps = [t_feats[n] for n in t_levels] + [pool(t_feats[t_pooled])]
    return hcl(review(params, s_maps, out_sizes), t_maps)

  def warmup(step):
    return shared.epoch_warmup(step, ctx.steps_per_epoch, cfg.warmup_epochs, cfg.first_epoch)

  captures = (tuple(dict.fromkeys([*s_levels, s_pooled])), {"teacher": tuple(dict.fromkeys([*t_levels, t_pooled]))})
  return shared.distiller_stage(ctx, "reviewkd", cfg, captures, term, heads, warmup=warmup)


METHOD = Method(
  name="reviewkd", stages=lambda ctx: [reviewkd_stage(ctx)], teachers="one", defaults=defaults, levels=levels
)

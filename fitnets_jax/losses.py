"""Pure loss functions. No state, no config: every argument is an array or a number.

All reductions are done in float32 whatever the activations' dtype, and the losses' own matrix
products in full float32 precision: on GPUs and TPUs the default would round their operands to
TF32 or bfloat16 (errors of 1e-3 in an FSP matrix), while the networks keep the fast default.
"""

import jax
import jax.numpy as jnp
import numpy as np

FULL = jax.lax.Precision.HIGHEST


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def cross_entropy(logits, labels):
  """H(y, softmax(z)) with integer labels, mean over the batch."""
  logp = jax.nn.log_softmax(_f32(logits))
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def soft_cross_entropy(target_probs, logits):
  """H(p, softmax(z)) = −Σ_c p_c log q_c, mean over the batch."""
  return -jnp.mean(jnp.sum(_f32(target_probs) * jax.nn.log_softmax(_f32(logits)), axis=-1))


def kl_divergence(target_probs, logits):
  """KL(p ‖ softmax(z)) = Σ_c p_c (log p_c − log q_c), mean over the batch (0·log 0 = 0)."""
  p = _f32(target_probs)
  logp = jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
  return jnp.mean(jnp.sum(p * (logp - jax.nn.log_softmax(_f32(logits))), axis=-1))


def softened(logits, temperature):
  """p^τ = softmax(z / τ) (Hinton et al. 2015, eq. 1)."""
  return jax.nn.softmax(_f32(logits) / temperature)


def soft_target(teacher_logits, temperature, weights=None):
  """The teachers' softened outputs averaged with weights μ: Σ_i μ_i·p_i^τ / Σ_i μ_i (docs/methods.md,
  *Multi-teacher KD*).

  `teacher_logits` is one (batch, classes) array or a sequence of them; `weights` defaults to
  uniform. One teacher gives p^τ itself. The result is a target (stop_gradient).
  """
  stacked = _f32(teacher_logits if not isinstance(teacher_logits, (list, tuple)) else jnp.stack(teacher_logits))
  if stacked.ndim == 2:
    stacked = stacked[None]
  mu = jnp.ones(stacked.shape[0], jnp.float32) if weights is None else _f32(weights)
  probs = jax.nn.softmax(stacked / temperature, axis=-1)
  return jax.lax.stop_gradient(jnp.tensordot(mu / jnp.sum(mu), probs, axes=1, precision=FULL))


def fitnets_kd_loss(student_logits, teacher_logits, labels, lam, temperature, weights=None):
  """FitNets KD loss (Romero et al. 2015, eq. 2): L = H(y, P_S) + λ·H(P_T^τ, P_S^τ).

  No τ² factor, as the paper writes it; λ is annealed by the caller. The teacher is a
  target (stop_gradient); several teachers give the μ-weighted `soft_target`. Mean over the
  batch. Returns (loss, {"ce", "soft_ce"}).
  """
  target = soft_target(teacher_logits, temperature, weights)
  ce = cross_entropy(student_logits, labels)
  soft = soft_cross_entropy(target, _f32(student_logits) / temperature)
  return ce + lam * soft, {"ce": ce, "soft_ce": soft}


def hinton_kd_loss(student_logits, teacher_logits, labels, alpha, temperature, weights=None):
  """Hinton KD: L = α·τ²·KL(P_T^τ ‖ P_S^τ) + (1−α)·H(y, P_S), mean over the batch.

  The τ² keeps the soft gradients' scale independent of τ (Hinton et al. 2015, §2). Several
  teachers give the μ-weighted `soft_target`. Returns (loss, {"ce", "kl"}).
  """
  target = soft_target(teacher_logits, temperature, weights)
  ce = cross_entropy(student_logits, labels)
  kl = kl_divergence(target, _f32(student_logits) / temperature)
  return alpha * temperature**2 * kl + (1.0 - alpha) * ce, {"ce": ce, "kl": kl}


HINT_REDUCTIONS = ("authors", "paper", "mse")


def hint_loss(teacher_hint, regressed_guided, reduction="authors"):
  """FitNets hint loss (Romero et al. 2015, eq. 3) between the teacher's hint u_h(x) (a target,
  stop_gradient) and the regressed guided layer r(v_g(x)), in one of three reductions of ½(u − r)²:

  - `authors` (default): the authors' `HintCost` (costs/HintCost.py), which sums ½(u − r)² over axis 1
    of pylearn2's C01B tensors — the rows — and averages the rest: sum over H, mean over batch, W and C.
    For an (N, H, W, C) map that is eq. 3 divided by W·C; for a flat (N, F) feature, eq. 3 itself.
  - `paper`: eq. 3 as written, ½‖u − r‖² summed over every non-batch axis, mean over the batch.
  - `mse`: RepDistiller's and mdistiller's FitNet, `MSELoss` (mean over every axis, no ½):
    eq. 3 × 2 / (H·W·C).
  """
  diff = _f32(jax.lax.stop_gradient(teacher_hint)) - _f32(regressed_guided)
  squared = jnp.square(diff)
  if reduction == "mse":
    return jnp.mean(squared)
  if reduction == "authors" and squared.ndim == 4:
    return 0.5 * jnp.mean(jnp.sum(squared, axis=1))
  return 0.5 * jnp.mean(jnp.sum(squared.reshape(squared.shape[0], -1), axis=-1))


def pool_to(x, size):
  """Max-pools an NHWC map down to `size` (h, w) with window = stride = the integer ratio."""
  fh, fw = x.shape[1] // size[0], x.shape[2] // size[1]
  if (fh, fw) == (1, 1):
    return x
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, fh, fw, 1), (1, fh, fw, 1), "VALID")


def fsp_matrix(first, second):
  """FSP matrix (Yim et al. 2017, eq. 1): G_ij = Σ_{s,t} F¹_{s,t,i}·F²_{s,t,j} / (h·w).

  `first` (batch, h, w, m) and `second` (batch, h', w', n); the larger map is max-pooled to the
  smaller one's size first. Computed in full float32 (`FULL`). Returns (batch, m, n).
  """
  first, second = _f32(first), _f32(second)
  size = (min(first.shape[1], second.shape[1]), min(first.shape[2], second.shape[2]))
  first, second = pool_to(first, size), pool_to(second, size)
  return jnp.einsum("bhwi,bhwj->bij", first, second, precision=FULL) / (size[0] * size[1])


def fsp_loss(teacher_matrices, student_matrices, weights):
  """FSP loss (Yim et al. 2017, eq. 2): (1/N) Σ_x Σ_i λ_i ‖G_i^T(x) − G_i^S(x)‖².

  Squared Frobenius norm per example and section, mean over the batch. The teacher's
  matrices are targets (stop_gradient).
  """
  total = 0.0
  for g_t, g_s, lam in zip(teacher_matrices, student_matrices, weights):
    diff = jax.lax.stop_gradient(_f32(g_t)) - _f32(g_s)
    total = total + lam * jnp.mean(jnp.sum(jnp.square(diff), axis=(1, 2)))
  return total


ATTENTION_FORMS = ("authors", "paper")
ATTENTION_POOLS = ("features", "map")


def average_pool(x, size):
  """Average-pools the two spatial axes (1 and 2) of `x` down to `size` (integer ratio)."""
  fh, fw = x.shape[1] // size[0], x.shape[2] // size[1]
  if (fh, fw) == (1, 1):
    return x
  return x.reshape(x.shape[0], size[0], fh, size[1], fw, *x.shape[3:]).mean(axis=(2, 4))


def _adaptive_pool_matrix(size_in, size_out):
  """(size_out, size_in) rows averaging torch's adaptive_avg_pool windows ⌊i·in/out⌋ … ⌈(i+1)·in/out⌉."""
  m = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_average_pool(x, size):
  """(batch, h, w, c) → (batch, size[0], size[1], c) as torch's F.adaptive_avg_pool2d, for any sizes
  (overlapping windows where they do not divide)."""
  if x.shape[1:3] == tuple(size):
    return x
  rows, cols = _adaptive_pool_matrix(x.shape[1], size[0]), _adaptive_pool_matrix(x.shape[2], size[1])
  return jnp.einsum("ih,nhwc,jw->nijc", rows, x, cols)


def attention_map(features, size=None, pool="features"):
  """Attention map (Zagoruyko & Komodakis 2017, eq. 2 with p = 2): Q = vec(mean_c A_c²) / ‖·‖₂.

  `features` (batch, h, w, c) → (batch, h'·w'). With `size` (h', w'), an integer fraction of (h, w),
  `pool='features'` average-pools the features before squaring (RepDistiller's and mdistiller's
  `adaptive_avg_pool2d`); `pool='map'` average-pools the map of channel means after squaring.
  """
  x = _f32(features)
  if size is not None and pool == "features":
    x = average_pool(x, size)
  a = jnp.mean(jnp.square(x), axis=-1)
  if size is not None and pool == "map":
    a = average_pool(a, size)
  return normalize(a.reshape(a.shape[0], -1))


def normalize(x, eps=1e-12):
  """x / max(‖x‖₂, eps) along the last axis, as PyTorch's `F.normalize`, with a finite gradient at
  x = 0: the norm is √max(Σx², eps²), the same value, while `jnp.linalg.norm`'s gradient at 0 is NaN
  (one all-zero map would make the whole step non-finite)."""
  return x / jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))


def attention_loss(teacher_features, student_features, beta, form="authors", pool="features"):
  """Attention transfer loss (Zagoruyko & Komodakis 2017, eq. 3) of one pair of layers:

  - `authors` (default): β · mean over batch and positions of (Q_S − Q_T)², as the authors' `cifar.py`
    adds `β · (at(x) − at(y)).pow(2).mean()` per group; RepDistiller, mdistiller and torchdistill agree.
  - `paper`: β/2 · the same mean: eq. 3's β/2 with the code's squared, averaged difference (the paper's
    β of 10³ is divided by the map's size and the batch, i.e. a mean), half the authors' value.

  Maps of unequal size: the larger side is average-pooled to the smaller's size (integer ratio),
  its features first (`pool='features'`, as RepDistiller and mdistiller) or its map (`pool='map'`).
  The teacher is a target (stop_gradient).
  """
  size = (
    min(teacher_features.shape[1], student_features.shape[1]),
    min(teacher_features.shape[2], student_features.shape[2]),
  )
  q_t = jax.lax.stop_gradient(attention_map(teacher_features, size, pool))
  q_s = attention_map(student_features, size, pool)
  scale = beta if form == "authors" else beta / 2.0
  return scale * jnp.mean(jnp.square(q_s - q_t))


PEER_REDUCTIONS = ("sum", "mean")


def mutual_learning_loss(logits, peer_logits, labels, temperature=1.0, peers="sum"):
  """Deep Mutual Learning (Zhang et al. 2018): the loss of network k in a cohort of K,
  L_k = H(y, p_k) + c · Σ_{l≠k} KL(p_l^τ ‖ p_k^τ), mean over the batch.

  `peers='sum'` (default): c = 1, as the authors' TensorFlow code adds the K−1 KL terms;
  `peers='mean'`: c = 1/(K−1), the paper's eq. 10. The two agree for K = 2. `peer_logits` holds
  the other K−1 networks' logits; they are targets for this update only (stop_gradient). τ = 1 in
  the paper; no τ² factor. Returns (loss, {"ce", "kl"}), kl being the weighted sum c·Σ.
  """
  ce = cross_entropy(logits, labels)
  scaled = _f32(logits) / temperature
  kl = sum(kl_divergence(softened(jax.lax.stop_gradient(peer), temperature), scaled) for peer in peer_logits)
  if peers == "mean":
    kl = kl / len(peer_logits)
  return ce + kl, {"ce": ce, "kl": kl}


def feature_distance(features, target, kind):
  """BYOT's feature term between a shallow exit's (adapted) feature and the deepest one's (a target):
  `l2` — one Frobenius norm ‖F_i − F_C‖ over the whole batch (the authors' code, `torch.dist`: not
  squared, not averaged), `squared` — ‖F_i − F_C‖²₂ per example, mean over the batch (the paper's eq. 3).
  The norm's gradient at 0 is kept finite (√max(Σ, 1e-24))."""
  diff = _f32(features) - jax.lax.stop_gradient(_f32(target))
  if kind == "l2":
    return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(diff)), 1e-24))
  return jnp.mean(jnp.sum(jnp.square(diff.reshape(diff.shape[0], -1)), axis=-1))


def self_distillation_loss(exit_logits, exit_features, labels, alpha, temperature, feature_weight, feature_kind="l2"):
  """Be Your Own Teacher (Zhang et al. 2019, eq. 1–3): the deepest exit teaches the shallow ones.

  `exit_logits` / `exit_features` list the exits shallow → deep; the last is the teacher q_C, F_C
  (stop_gradient). Loss: H(y, q_C) + Σ_{i<C} [(1−α)·H(y, q_i) + α·KL(q_C^τ ‖ q_i^τ)
  + λ·d(F_i, F_C)], d from `feature_distance` (λ = 0, kind "off", or a shallow feature given as
  None: no feature term for that exit); no τ². KL rather than the authors' soft cross-entropy: the
  two differ by the target's entropy, a constant, so their gradients are equal. Means over the
  batch. Returns (loss, {"ce", "kl", "feature"}) with the terms summed over exits.
  """
  deep_logits, deep_feature = exit_logits[-1], exit_features[-1]
  target = softened(jax.lax.stop_gradient(deep_logits), temperature)
  ce_deep = cross_entropy(deep_logits, labels)
  ce, kl, feature = 0.0, 0.0, 0.0
  for logits, feat in zip(exit_logits[:-1], exit_features[:-1]):
    ce = ce + cross_entropy(logits, labels)
    kl = kl + kl_divergence(target, _f32(logits) / temperature)
    if feature_kind != "off" and feature_weight and feat is not None:
      feature = feature + feature_distance(feat, deep_feature, feature_kind)
  total = ce_deep + (1.0 - alpha) * ce + alpha * kl + feature_weight * feature
  return total, {"ce": ce_deep + ce, "kl": kl, "feature": feature}


def accuracy(logits, labels):
  """Fraction of argmax predictions equal to the labels."""
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)

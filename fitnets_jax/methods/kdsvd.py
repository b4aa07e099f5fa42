"""`kdsvd`: knowledge distillation with singular value decomposition (Lee et al., ECCV 2018), one stage
beside the labels.

Each guided map, reshaped to (positions × channels), is decomposed by SVD; its leading right singular
vectors (over the channels) summarise it. The student keeps k + 3 of its vectors and takes, for each
of the teacher's k, the one most aligned with it (|cos| largest), with the sign that makes the cosine
positive; both are scaled by the teacher's normalised singular values. Between consecutive pairs the
vectors are related by the RBF exp(−(v_i − v_{i−1})²/8) for every pair of channels, and the student's
relation matrix matches the teacher's: Σ(RBF_S − RBF_T)² / b, non-finite entries counted as 0. As
RepDistiller's `KDSVD.py` (from the authors' TensorFlow code, sseung0703/SSKD_SVD): k = 1,
`F.normalize` of u, s and v over their first axis, weight 1 (mdistiller `KDSVD.LOSS.FEAT_WEIGHT`).
A singular vector's sign is the SVD routine's choice (cuSOLVER, LAPACK and XLA may differ), and the
RBF between consecutive vectors depends on it; here each teacher vector is turned so that its entry of
largest magnitude is positive, which makes the loss a function of the features alone.
Layers: the hint pairs (`hint` or `hints`, at least two, their `kind` not read), each pair's student
and teacher maps with the same channel count; RepDistiller pairs every section's output.
"""

import ml_collections

from fitnets_jax.errors import check
from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

NORMALIZE_EPS = 1e-12  # F.normalize


def defaults():
  return {
    "kdsvd": ml_collections.ConfigDict(
      dict(
        weight=1.0,  # mdistiller KDSVD.LOSS.FEAT_WEIGHT
        k=1,  # the teacher's singular vectors (RepDistiller KDSVD(k=1), mdistiller KDSVD.K)
      )
    )
  }


def _normalize(x, axis):
  return x / shared.safe_norm(x, axis=axis, floor=NORMALIZE_EPS)


def singular(feature, n):
  """(s, v) of the map (b, h, w, c) seen as (b, h·w, c): the first `n` singular values and right
  singular vectors (b, c, n), non-finite entries zeroed, each normalised over its first axis."""
  import jax
  import jax.numpy as jnp

  finite = lambda a: jnp.where(jnp.isfinite(a), a, 0.0)
  # LAPACK's SVD on CPU never returns on a NaN input: a diverged step must reach the NaN guard instead.
  x = finite(feature.astype(jnp.float32).reshape(feature.shape[0], -1, feature.shape[-1]))
  # One LAPACK call per example: jaxlib's batched SVD splits the batch over XLA's CPU thread pool and waits
  # for the parts on a pool thread, so several batched SVDs at once can hold every thread and never return.
  _, s, vh = jax.lax.map(lambda m: jnp.linalg.svd(m, full_matrices=False), x)
  v = finite(jnp.swapaxes(vh, 1, 2))[:, :, :n]
  return _normalize(finite(s)[:, :n], axis=1), _normalize(v, axis=1)


def canonical_sign(v):
  """Each vector (a column of v) turned so that its entry of largest magnitude is positive."""
  import jax.numpy as jnp

  top = jnp.take_along_axis(v, jnp.argmax(jnp.abs(v), axis=1, keepdims=True), axis=1)
  return v * jnp.where(top < 0, -1.0, 1.0)


def align(v_student, v_teacher):
  """For each teacher vector, the student vector whose |cosine| with it is largest, signed to a positive cosine."""
  import jax.numpy as jnp

  cosine = jnp.einsum("bci,bcj->bij", v_student, v_teacher)  # (b, k + 3, k)
  best = jnp.abs(cosine) == jnp.max(jnp.abs(cosine), axis=1, keepdims=True)
  return jnp.einsum("bci,bij->bcj", v_student, jnp.where(best, jnp.sign(cosine), 0.0))


def kdsvd_loss(student_maps, teacher_maps, k=1):
  """Σ over consecutive pairs of Σ(RBF_S − RBF_T)² / b, in float32 (the module docstring)."""
  import jax
  import jax.numpy as jnp

  total, previous = 0.0, None
  for f_s, f_t in zip(student_maps, teacher_maps):
    s_t, v_t = singular(jax.lax.stop_gradient(f_t), k)
    v_t = canonical_sign(v_t)
    _, v_s = singular(f_s, k + 3)
    v_s = align(v_s, v_t)
    v_t, v_s = v_t * s_t[:, None, :], v_s * s_t[:, None, :]
    if previous is not None:
      rbf = lambda a, b: jnp.exp(-jnp.square(a[:, :, None, :] - b[:, None, :, :]) / 8.0)
      squared = jnp.square(rbf(v_s, previous[0]) - rbf(v_t, previous[1]))
      total = total + jnp.sum(jnp.where(jnp.isfinite(squared), squared, 0.0)) / f_s.shape[0]
    previous = (v_s, v_t)
  return total


def kdsvd_stage(ctx):
  from fitnets_jax import hints

  cfg = ctx.config.kdsvd
  check(isinstance(cfg.k, int) and cfg.k > 0, f"kdsvd.k={cfg.k!r} must be an integer > 0.")
  pairs = hints.pairs(ctx.config, ctx.student, ctx.teachers, maps_for="kdsvd")
  check(
    len(pairs) >= 2,
    f"kdsvd relates consecutive guided layers, so it needs at least two hint pairs; {len(pairs)} configured. "
    "List them in `hints`, shallow to deep (configs/kdsvd_digits.py pairs every section).",
  )
  for p in pairs:
    check(
      p.hint.shape[-1] == p.guided.shape[-1],
      f"{p.key}: kdsvd aligns the student's singular vectors with the teacher's over the channels, so both maps "
      f"need as many: {p.guided.name!r} has {p.guided.shape[-1]}, {p.hint.name!r} {p.hint.shape[-1]}.",
    )
  by_teacher, guided_names = shared.hint_captures(pairs)

  def term(s_feats, t_feats, _):
    students = [s_feats[p.guided.name] for p in pairs]
    return kdsvd_loss(students, [t_feats[p.teacher][p.hint.name] for p in pairs], cfg.k)

  return shared.distiller_stage(ctx, "kdsvd", cfg, (guided_names, by_teacher), term)


METHOD = Method(
  name="kdsvd",
  stages=lambda ctx: [kdsvd_stage(ctx)],
  teachers="one",
  defaults=defaults,
  uses_hint_pairs=lambda config: True,
)

"""docs/conventions.md, row by row: each loss and preprocessing step against NumPy transcriptions of
the reference implementations' formulas (the authors' code, RepDistiller, mdistiller, torchdistill),
written here from their math, in float64. Values are compared at the factor the page states;
gradients against central differences of the transcription. Every row of the page names its test,
and `test_every_row_of_the_conventions_page_names_a_test_here` checks that the names exist.
"""

import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fitnets_jax import losses, preprocessing

RNG = np.random.default_rng(7)
PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "conventions.md"


def np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(logits, labels):
  return -np.mean(np_log_softmax(logits)[np.arange(len(labels)), labels])


def numeric_grad(f, x, h=1e-6):
  """Central differences of the float64 function f at x."""
  x = np.array(x, np.float64)
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[i] += h
    down[i] -= h
    g[i] = (f(up) - f(down)) / (2 * h)
  return g


def check(ours, reference, x, factor=1.0, rtol=1e-5, atol=1e-7):
  """ours(x) == factor · reference(x) in value, and their gradients in x agree at that factor (ours
  compiled once: value and gradient each a single XLA program, not dozens of op-by-op ones)."""
  ours = jax.jit(ours)
  x32 = jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(float(ours(x32)), factor * reference(np.asarray(x, np.float64)), rtol=rtol, atol=atol)
  np.testing.assert_allclose(np.asarray(jax.grad(ours)(x32)), factor * numeric_grad(reference, x), rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------------------------------- KD


def np_kl_sum_over_classes_mean_over_batch(log_q, p):
  """torch's kl_div(log q, p) summed over classes, divided by the batch (RepDistiller: size_average=False
  then / batch; mdistiller: .sum(1).mean(); torchdistill: KLDivLoss(reduction='batchmean'))."""
  return np.sum(p * (np.log(p) - log_q)) / len(p)


S, T, Y = RNG.normal(size=(4, 6)) * 2, RNG.normal(size=(4, 6)) * 3, np.array([0, 5, 2, 2])


def test_hinton_kd_matches_repdistiller_mdistiller_and_torchdistill():
  alpha, tau = 0.9, 4.0

  def reference(s):  # γ·CE + α·τ²·KL with γ = 1 − α: RD's -r/-a, MD's CE_WEIGHT/KD_WEIGHT, TD's α/β
    kl = np_kl_sum_over_classes_mean_over_batch(np_log_softmax(s / tau), np_softmax(T / tau))
    return (1 - alpha) * np_ce(s, Y) + alpha * tau**2 * kl

  check(lambda s: losses.hinton_kd_loss(s, T, Y, alpha, tau)[0], reference, S)


def test_fitnets_kd_matches_the_authors_kdcost():
  lam, tau = 4.0, 3.0

  def reference(s):  # KDCost: H(y, P_S) + λ·H(P_T^τ, P_S^τ), both mean over the batch, no τ²
    soft = -np.mean(np.sum(np_softmax(T / tau) * np_log_softmax(s / tau), -1))
    return np_ce(s, Y) + lam * soft

  check(lambda s: losses.fitnets_kd_loss(s, T, Y, lam, tau)[0], reference, S)


def np_dkd(s, t, y, alpha, beta, tau):
  """mdistiller's dkd_loss (the DKD authors' code), from its math: b = [p_t, Σ_others p] of softmax(z/τ),
  TCKD = Σ b_T·log(b_T / b_S) summed over the batch ÷ batch; p̂ = softmax(z/τ − 1000·onehot(y)), NCKD the
  same sum over p̂ with 0·log 0 = 0; both × τ²; α·TCKD + β·NCKD."""
  n, onehot = len(y), np.eye(s.shape[1])[y]
  ps, pt = np_softmax(s / tau), np_softmax(t / tau)
  bs = np.stack([np.sum(ps * onehot, 1), np.sum(ps * (1 - onehot), 1)], 1)
  bt = np.stack([np.sum(pt * onehot, 1), np.sum(pt * (1 - onehot), 1)], 1)
  tckd = np.sum(bt * np.log(bt / bs)) / n * tau**2
  log_ps2, pt2 = np_log_softmax(s / tau - 1000.0 * onehot), np_softmax(t / tau - 1000.0 * onehot)
  terms = np.where(pt2 > 0, pt2 * (np.log(np.where(pt2 > 0, pt2, 1.0)) - log_ps2), 0.0)
  nckd = np.sum(terms) / n * tau**2
  return alpha * tckd + beta * nckd


def test_dkd_matches_the_authors_mdistiller_dkd_loss():
  from fitnets_jax.methods import dkd, shared

  alpha, beta, tau = 1.0, 8.0, 4.0

  def ours(s):
    tckd, nckd = dkd.dkd_terms(s, T, Y, tau)
    return alpha * tckd + beta * nckd

  check(ours, lambda s: np_dkd(s, T, Y, alpha, beta, tau), S)
  # The warm-up: the 1-based epoch over warm-up epochs, capped at 1 (mdistiller's trainer counts from 1).
  warm = [float(shared.epoch_warmup(step, 10, 20.0, first_epoch=1)) for step in (0, 9, 10, 199, 190, 10_000)]
  assert warm == pytest.approx([0.05, 0.05, 0.1, 1.0, 1.0, 1.0])


REL_S, REL_T = RNG.normal(size=(5, 2, 2, 3)), RNG.normal(size=(5, 7))  # student map, teacher embedding: b = 5


def np_similarity(fs, ft):
  """RepDistiller's and mdistiller's similarity_loss, from its math: G = F·Fᵀ over the batch (F flattened
  per example), each row divided by max(its L2 norm, 1e-12), ‖G_T − G_S‖²_F / b²."""

  def gram(f):
    f = f.reshape(len(f), -1)
    g = f @ f.T
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)

  return np.sum((gram(ft) - gram(fs)) ** 2) / len(fs) ** 2


def np_pkt(fs, ft, eps=1e-7):
  """The PKT authors' cosine_similarity_loss (as RD and MD keep it), from its math: rows over their norm
  + ε, K = (cos + 1)/2 row-normalised, mean over all b² entries of p_T·log((p_T + ε)/(p_S + ε))."""

  def neighbours(f):
    f = f.reshape(len(f), -1)
    f = f / (np.sqrt(np.sum(f**2, axis=1, keepdims=True)) + eps)
    k = (f @ f.T + 1.0) / 2.0
    return k / k.sum(axis=1, keepdims=True)

  p_s, p_t = neighbours(fs), neighbours(ft)
  return np.mean(p_t * np.log((p_t + eps) / (p_s + eps)))


def test_sp_matches_repdistiller_and_mdistiller_similarity_loss():
  from fitnets_jax.methods import sp

  check(lambda f: sp.similarity_loss(f, REL_T), lambda f: np_similarity(f, REL_T), REL_S)


def test_pkt_matches_the_authors_cosine_similarity_loss():
  from fitnets_jax.methods import pkt

  embedding = REL_S.reshape(5, -1)
  check(lambda f: pkt.pkt_loss(f, REL_T), lambda f: np_pkt(f, REL_T), embedding, rtol=1e-4)


def np_huber(a, b):
  d = np.abs(a - b)
  return np.mean(np.where(d < 1.0, 0.5 * d**2, d - 0.5))


def np_rkd(fs, ft):
  """The RKD authors' RkdDistance and RKdAngle (kept by RD and MD), from their math: pdist with the
  squared distance floored at 1e-12, zero diagonal, ÷ the mean of the positive entries; unit difference
  vectors (norm floored at 1e-12) and all their pairwise products; Huber (δ = 1) means. (dist, angle)."""

  def pdist(e):
    sq = np.sum(e**2, 1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * e @ e.T, 1e-12))
    np.fill_diagonal(d, 0.0)
    return d / d[d > 0].mean()

  def angle(e):
    diff = e[None, :, :] - e[:, None, :]
    unit = diff / np.maximum(np.linalg.norm(diff, axis=2, keepdims=True), 1e-12)
    return np.einsum("ijc,ikc->ijk", unit, unit).reshape(-1)

  return np_huber(pdist(fs), pdist(ft)), np_huber(angle(fs), angle(ft))


def test_rkd_matches_the_authors_distance_and_angle_losses():
  from fitnets_jax.methods import rkd

  s, t = REL_S.reshape(5, -1)[:, :7] * 2, REL_T
  check(lambda f: rkd.rkd_terms(f, t)[0], lambda f: np_rkd(f, t)[0], s)
  check(lambda f: rkd.rkd_terms(f, t)[1], lambda f: np_rkd(f, t)[1], s, rtol=1e-4)


MAP_S, MAP_T = RNG.normal(size=(3, 4, 4, 5)), RNG.normal(size=(3, 4, 4, 6))  # NHWC, b = 3


def np_nst(fs, ft):
  """The NST authors' mmd_poly (c = 0) with the teacher-only term RD and MD add, from its math: each channel's
  pattern over the positions divided by √(Σx² + 1e-10); k(x, y) = (xᵀy)²; per example the mean over channel
  pairs of k(t, t) + k(s, s) − 2·k(s, t), then the mean over the batch."""

  def patterns(f):  # NCHW-style (b, c, positions)
    f = np.transpose(f, (0, 3, 1, 2)).reshape(f.shape[0], f.shape[3], -1)
    return f / np.sqrt(np.sum(f**2, axis=2, keepdims=True) + 1e-10)

  s, t = patterns(fs), patterns(ft)
  k = lambda a, b: np.mean(np.einsum("bip,bjp->bij", a, b) ** 2, axis=(1, 2))
  return np.mean(k(t, t) + k(s, s) - 2 * k(s, t))


def test_nst_matches_the_authors_mmd_poly():
  from fitnets_jax.methods import nst

  check(lambda f: nst.mmd_poly(f, MAP_T), lambda f: np_nst(f, MAP_T), MAP_S, rtol=1e-4)
  dead = jnp.asarray(MAP_S, jnp.float32).at[..., 2].set(0.0)  # a dead channel: ε keeps the step finite
  assert np.all(np.isfinite(np.asarray(jax.grad(lambda f: nst.mmd_poly(f, MAP_T))(dead))))


VID_PARAMS = {
  "conv1": RNG.normal(size=(5, 6)) * 0.4,
  "conv2": RNG.normal(size=(6, 6)) * 0.4,
  "conv3": RNG.normal(size=(6, 6)) * 0.4,
  "log_scale": RNG.normal(size=(6,)),
}


def np_vid(fs, ft, params, eps=1e-5):
  """RD's and MD's VIDLoss, from its math: μ = three bias-free 1×1 convolutions with ReLUs between, σ² =
  log(1 + e^α) + ε per teacher channel, mean over everything of ½((μ − t)²/σ² + log σ²)."""
  relu = lambda x: np.maximum(x, 0)
  mean = relu(relu(fs @ params["conv1"]) @ params["conv2"]) @ params["conv3"]
  var = np.log1p(np.exp(params["log_scale"])) + eps
  return np.mean(0.5 * ((mean - ft) ** 2 / var + np.log(var)))


def test_vid_matches_repdistillers_and_mdistillers_vid_loss():
  from fitnets_jax.methods import vid

  params32 = {k: jnp.asarray(v, jnp.float32) for k, v in VID_PARAMS.items()}
  check(lambda f: vid.vid_loss(f, MAP_T, params32, 1e-5), lambda f: np_vid(f, MAP_T, VID_PARAMS), MAP_S)

  def with_log_scale(a):  # the learned variances' gradient
    return {**VID_PARAMS, "log_scale": a}

  check(
    lambda a: vid.vid_loss(MAP_S, MAP_T, {**params32, "log_scale": a}, 1e-5),
    lambda a: np_vid(MAP_S, MAP_T, with_log_scale(a)),
    VID_PARAMS["log_scale"],
  )
  # σ² starts at 5: log(1 + e^α) + ε = 5 with α = log(e^{5 − ε} − 1), as both peers initialise it.
  alpha = np.log(np.expm1(5.0 - 1e-5))
  assert np.log1p(np.exp(alpha)) + 1e-5 == pytest.approx(5.0)


def np_correlation(es, et):
  """RD's Correlation (the CC authors' code), from its math: δ = |e_S − e_T|, mean over i of
  Σ_d δ_i,d·δ_{i+1},d for the b − 1 consecutive pairs of the batch."""
  d = np.abs(es - et)
  return np.mean(np.sum(d[:-1] * d[1:], axis=1))


def test_cc_matches_repdistillers_correlation():
  from fitnets_jax.methods import cc

  es, et = RNG.normal(size=(5, 7)), RNG.normal(size=(5, 7))
  check(lambda f: cc.correlation_loss(f, et), lambda f: np_correlation(f, et), es)


def np_factor_loss(fs, ft, form):
  """RD's FactorTransfer (p1 = 2, p2 = 1), from its math: F.normalize(mean over channels of f², flattened),
  mean |Δ|; or the FT paper's eq. 3–4: the whole factor flattened and L2-normalised, ‖Δ‖₁ per example, mean
  over the batch."""

  def factor(f):
    f = np.mean(f**2, axis=-1) if form == "repdistiller" else f
    f = f.reshape(len(f), -1)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

  diff = np.abs(factor(fs) - factor(ft))
  return np.mean(diff) if form == "repdistiller" else np.mean(np.sum(diff, axis=1))


@pytest.mark.parametrize("form", ["repdistiller", "paper"])
def test_ft_matches_repdistillers_factor_transfer_and_the_papers(form):
  from fitnets_jax.methods import ft

  t = MAP_T[..., :5]
  check(lambda f: ft.factor_loss(f, t, form), lambda f: np_factor_loss(f, t, form), MAP_S, rtol=1e-4)


def np_crd(es, et, index, contrast_ids, mem_s, mem_t, z, temperature=0.07, momentum=0.5):
  """The CRD authors' ContrastMemory + ContrastLoss (RD `crd/`), from their math: scores exp(⟨m, e⟩/τ) of
  the student's embedding against the teacher-side bank and the teacher's against the student-side bank;
  Z = mean(score)·N when still unset (< 0); NCE of eq. 18 with P_n = 1/N and ε = 1e-7 on each side,
  summed; then each bank's batch rows ← normalise(m·row + (1 − m)·e). Returns (loss, banks, Z)."""
  n, k = len(mem_s), contrast_ids.shape[1] - 1
  score_s = np.exp(np.einsum("bkd,bd->bk", mem_t[contrast_ids], es) / temperature)
  score_t = np.exp(np.einsum("bkd,bd->bk", mem_s[contrast_ids], et) / temperature)
  z = [score_s.mean() * n if z[0] < 0 else z[0], score_t.mean() * n if z[1] < 0 else z[1]]

  def nce(x):
    noise = k / n
    d1 = np.log(x[:, 0] / (x[:, 0] + noise + 1e-7))
    d0 = np.log(noise / (x[:, 1:] + noise + 1e-7))
    return -(d1.sum() + d0.sum()) / len(x)

  loss = nce(score_s / z[0]) + nce(score_t / z[1])
  banks = []
  for bank, e in ((mem_s, es), (mem_t, et)):
    bank = bank.copy()
    row = bank[index] * momentum + e * (1 - momentum)
    bank[index] = row / np.linalg.norm(row, axis=1, keepdims=True)
    banks.append(bank)
  return loss, banks, z


def test_crd_matches_the_authors_contrast_memory_and_nce_loss():
  from fitnets_jax.methods import crd

  n, d, b, k = 11, 4, 3, 5
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  es, et = unit(RNG.normal(size=(b, d))), unit(RNG.normal(size=(b, d)))
  mem_s, mem_t = RNG.uniform(-0.8, 0.8, size=(n, d)), RNG.uniform(-0.8, 0.8, size=(n, d))
  index = np.array([4, 0, 9])
  ids = np.concatenate([index[:, None], RNG.integers(0, n, size=(b, k))], axis=1)
  for z in ([-1.0, -1.0], [3.0, 5.0]):  # the first step sets Z; later steps keep it
    memory = {
      "student": jnp.asarray(mem_s, jnp.float32),
      "teacher": jnp.asarray(mem_t, jnp.float32),
      "z": jnp.asarray(z),
    }
    ours = lambda e: crd.contrast(e, jnp.asarray(et, jnp.float32), index, ids, memory, 0.07, 0.5)
    want_loss, (want_s, want_t), want_z = np_crd(es, et, index, ids, mem_s, mem_t, z)
    # Z, once set, is a constant (the authors store it with .item()): no gradient flows through it.
    check(lambda e: ours(e)[0], lambda e: np_crd(e, et, index, ids, mem_s, mem_t, want_z)[0], es, rtol=1e-4)
    _, got = ours(jnp.asarray(es, jnp.float32))
    np.testing.assert_allclose(got["student"], want_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["teacher"], want_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["z"], want_z, rtol=1e-5)


@pytest.mark.parametrize("k", [4, 9])
def test_crd_negatives_are_other_classes_without_replacement_where_the_class_leaves_enough(k):
  """Each row: the example's own id, then k ids of other classes — distinct where its class leaves ≥ k
  others (the authors' np.random.choice(…, replace=False)), drawn with replacement otherwise."""
  from fitnets_jax.methods import crd

  labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2], np.int32)  # others: 9 for class 0, 7 for 1 and 2
  table = crd.class_table(labels, 3)
  index = np.array([0, 3, 8, 5], np.int32)
  rows = np.asarray(crd.sample_contrast(jax.random.PRNGKey(0), index, labels[index], labels, table, k))
  assert rows.shape == (4, k + 1) and (rows[:, 0] == index).all()
  for row, i in zip(rows, index):
    assert (labels[row[1:]] != labels[i]).all()
    if k <= 12 - np.sum(labels == labels[i]):
      assert len(set(row[1:])) == k
  seen = set()
  for seed in range(200):  # every other-class example is drawn
    rows = np.asarray(crd.sample_contrast(jax.random.PRNGKey(seed), index[:1], labels[:1], labels, table, k))
    seen |= set(rows[0, 1:])
  assert seen == set(range(3, 12))


# ---------------------------------------------------------------------------------------- ReviewKD


def np_conv(x, kernel_hwio):
  """torch's Conv2d (stride 1, padding k // 2, no bias) in NCHW, with the kernel given as HWIO."""
  k = kernel_hwio.shape[0]
  w = np.transpose(kernel_hwio, (3, 2, 0, 1))  # OIHW
  p = k // 2
  xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
  h, wd = x.shape[2:]
  out = np.zeros((x.shape[0], w.shape[0], h, wd))
  for i in range(k):
    for j in range(k):
      out += np.einsum("nchw,oc->nohw", xp[:, :, i : i + h, j : j + wd], w[:, :, i, j])
  return out


def np_batch_norm(x, scale, bias):
  """BatchNorm2d in training mode: the batch's mean and biased variance per channel, eps 1e-5."""
  mean = x.mean(axis=(0, 2, 3), keepdims=True)
  var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * scale[None, :, None, None] + bias[None, :, None, None]


def np_nearest(x, size):
  """F.interpolate(x, size, mode='nearest'): source index floor(i · in / out)."""
  rows = [int(np.floor(i * x.shape[2] / size)) for i in range(size)]
  cols = [int(np.floor(j * x.shape[3] / size)) for j in range(size)]
  return x[:, :, rows][:, :, :, cols]


def np_adaptive_avg_pool(x, size):
  """F.adaptive_avg_pool2d(x, (size, size)): window floor(i·in/out) … ceil((i+1)·in/out)."""
  h, w = x.shape[2:]
  out = np.zeros(x.shape[:2] + (size, size))
  for i in range(size):
    for j in range(size):
      r0, r1 = (i * h) // size, int(np.ceil((i + 1) * h / size))
      c0, c1 = (j * w) // size, int(np.ceil((j + 1) * w / size))
      out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
  return out


def np_abf(p, x, y, shape, out_shape):
  """The authors' ABF.forward: conv1 + BN; with a residual y, fuse by the sigmoid attention conv's two
  maps; nearest-resize to out_shape; conv2 + BN. Returns (output, residual)."""
  x = np_batch_norm(np_conv(x, p["conv1"]), p["bn1"]["scale"], p["bn1"]["bias"])
  if y is not None:
    y = np_nearest(y, shape)
    z = np_conv(np.concatenate([x, y], axis=1), p["attention"]["kernel"]) + p["attention"]["bias"][None, :, None, None]
    z = 1 / (1 + np.exp(-z))
    x = x * z[:, :1] + y * z[:, 1:]
  if x.shape[-1] != out_shape:
    x = np_nearest(x, out_shape)
  return np_batch_norm(np_conv(x, p["conv2"]), p["bn2"]["scale"], p["bn2"]["bias"]), x


def np_hcl(fstudent, fteacher):
  """The authors' hcl: per level, MSE plus the MSEs of 4×4, 2×2, 1×1 adaptive average pools below the
  map's height, weighted 1/2, 1/4, 1/8, divided by the weights' sum; summed over levels."""
  total = 0.0
  for fs, ft in zip(fstudent, fteacher):
    h = fs.shape[2]
    loss, cnt, tot = np.mean((fs - ft) ** 2), 1.0, 1.0
    for size in (4, 2, 1):
      if size >= h:
        continue
      cnt /= 2.0
      loss += np.mean((np_adaptive_avg_pool(fs, size) - np_adaptive_avg_pool(ft, size)) ** 2) * cnt
      tot += cnt
    total += loss / tot
  return total


def np_reviewkd(params, student_nchw, teacher_nchw):
  """The authors' ReviewKD.forward (deepest level first, outputs inserted at the front) and hcl."""
  x = student_nchw[::-1]
  deepest = len(x) - 1
  out, res = np_abf(params[f"abf{deepest}"], x[0], None, None, teacher_nchw[-1].shape[-1])
  results = [out]
  for k, feature in enumerate(x[1:]):
    i = deepest - 1 - k
    out, res = np_abf(params[f"abf{i}"], feature, res, feature.shape[-1], teacher_nchw[i].shape[-1])
    results.insert(0, out)
  return np_hcl(results, teacher_nchw)


def test_reviewkd_matches_the_authors_abf_chain_and_hierarchical_context_loss():
  from fitnets_jax.methods import reviewkd, shared

  # Student levels 3×3×2 and 2×2×3 and pooled ×4; the teacher's 4×4×3, 2×2×2 and pooled ×5: the chain
  # upsamples 2 → 3 (fusion) and 3 → 4 (to the teacher's size), both non-integer nearest ratios, and
  # the 4×4 level pools to 2×2 and 1×1, the 2×2 level to 1×1.
  n, mid = 3, 4
  student = [RNG.normal(size=(n, 3, 3, 2)), RNG.normal(size=(n, 2, 2, 3)), RNG.normal(size=(n, 1, 1, 4))]
  teacher = [RNG.normal(size=(n, 4, 4, 3)), RNG.normal(size=(n, 2, 2, 2)), RNG.normal(size=(n, 1, 1, 5))]
  key = jax.random.PRNGKey(3)
  params = {
    f"abf{i}": reviewkd.abf_init(jax.random.fold_in(key, i), s.shape[-1], mid, t.shape[-1], fuse=i < 2)
    for i, (s, t) in enumerate(zip(student, teacher))
  }
  # Trained BN scales and shifts are not 1 and 0: give them values.
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(a.size), a.shape), params)
  np_params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  nchw = lambda a: np.transpose(a, (0, 3, 1, 2))
  out_sizes = [t.shape[1:3] for t in teacher]

  def ours(level, x):
    maps = [jnp.asarray(s, jnp.float32) for s in student]
    maps[level] = x
    return reviewkd.hcl(reviewkd.review(params, maps, out_sizes), [jnp.asarray(t, jnp.float32) for t in teacher])

  def reference(level, x):
    maps = [nchw(s) for s in student]
    maps[level] = nchw(x)
    return np_reviewkd(np_params, maps, [nchw(t) for t in teacher])

  for level in (0, 2):  # the shallowest level (fused, resized) and the pooled one (through every fusion)
    check(lambda x: ours(level, x), lambda x: reference(level, x), student[level], rtol=1e-4, atol=1e-6)
  # The warm-up: the authors count epochs from 0 (no review term in the first epoch), mdistiller from 1.
  warm = [float(shared.epoch_warmup(step, 10, 20.0, first_epoch=0)) for step in (0, 9, 10, 199, 200, 10_000)]
  assert warm == pytest.approx([0.0, 0.0, 0.05, 0.95, 1.0, 1.0])


# -------------------------------------------------------------------------------------------- OFD


def np_margin(gamma, beta):
  """The authors' get_margin_from_BN: s = |γ|, m = β; −s·exp(−(m/s)²/2)/√(2π)/Φ(−m/s) + m where
  Φ(−m/s) > 0.001, else −3s (Φ from erf here, scipy's norm.cdf there)."""
  out = []
  for g, b in zip(gamma, beta):
    s, m = abs(g), b
    cdf = 0.5 * (1 + math.erf(-m / s / math.sqrt(2)))
    out.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / cdf + m if cdf > 0.001 else -3 * s)
  return np.array(out)


def np_ofd(student_nchw, teacher_nchw, connectors, bns):
  """The authors' Distiller.forward and train step: each level's connector (1×1 conv, training-mode
  BN), distillation_loss = Σ mse(s, max(t, m))·[(s > t') | (t' > 0)], ÷ 2^(n−1−i), then ÷ batch ÷ 1000."""
  total, n = 0.0, len(student_nchw)
  for i, (s, t) in enumerate(zip(student_nchw, teacher_nchw)):
    p = connectors[i]
    s = np_batch_norm(np_conv(s, p["conv"]), p["bn"]["scale"], p["bn"]["bias"])
    m = np_margin(bns[i]["scale"], bns[i]["bias"])[None, :, None, None]
    t = np.maximum(t, m)
    total += np.sum((s - t) ** 2 * ((s > t) | (t > 0))) / 2 ** (n - i - 1)
  return total / len(student_nchw[0]) / 1000


def test_ofd_matches_the_authors_distiller_and_margin():
  from fitnets_jax.methods import ofd, shared

  n = 4
  student = [RNG.normal(size=(n, 4, 4, 2)), RNG.normal(size=(n, 2, 2, 3))]
  teacher = [RNG.normal(size=(n, 4, 4, 3)), RNG.normal(size=(n, 2, 2, 5))]
  # The teacher's BN before the ReLU: one channel of each level has β ≫ |γ| (Φ(−β/|γ|) ≤ 0.001: −3|γ|).
  bns = [
    {"scale": np.array([1.0, -0.5, 0.3]), "bias": np.array([0.2, -0.4, 2.0])},
    {"scale": np.array([0.8, 1.2, 0.1, 2.0, 0.6]), "bias": np.array([0.0, 0.5, 1.0, -1.0, 0.3])},
  ]
  key = jax.random.PRNGKey(5)
  connectors = [
    shared.connector_init(jax.random.fold_in(key, i), s.shape[-1], t.shape[-1])
    for i, (s, t) in enumerate(zip(student, teacher))
  ]
  connectors = jax.tree.map(lambda a: a + 0.2 * jax.random.normal(jax.random.PRNGKey(a.size), a.shape), connectors)
  np_connectors = jax.tree.map(lambda a: np.asarray(a, np.float64), connectors)
  np.testing.assert_allclose(
    ofd.margin(jnp.asarray(bns[1]["scale"]), jnp.asarray(bns[1]["bias"])),
    np_margin(bns[1]["scale"], bns[1]["bias"]),
    rtol=1e-5,
  )
  nchw = lambda a: np.transpose(a, (0, 3, 1, 2))

  def ours(x):
    total = 0.0
    for i, (s, t) in enumerate(zip([x, student[1]], teacher)):
      p = connectors[i]
      source = shared.batch_norm_train(shared.conv_same(jnp.asarray(s, jnp.float32), p["conv"]), p["bn"])
      m = ofd.margin(jnp.asarray(bns[i]["scale"]), jnp.asarray(bns[i]["bias"]))
      total = total + ofd.partial_l2(source, jnp.asarray(t, jnp.float32), m) / 2 ** (1 - i)
    return 1e-3 * total

  reference = lambda x: np_ofd([nchw(x), nchw(student[1])], [nchw(t) for t in teacher], np_connectors, bns)
  check(ours, reference, student[0], rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------------------------- AB


def np_ab(student_nchw, teacher_nchw, connectors, margin=1.0):
  """The authors' Distillation step: criterion_alternative_L2 = Σ |(s + μ)²·[(s > −μ) & (t ≤ 0)] +
  (s − μ)²·[(s ≤ μ) & (t > 0)]| per level (through its connection layer, conv + training-mode BN, where
  there is one), ÷ batch, the shallower levels ÷ 2, ÷ 4; then ÷ 1000 × 3."""
  total, n = 0.0, len(student_nchw)
  for i, (s, t) in enumerate(zip(student_nchw, teacher_nchw)):
    p = connectors.get(f"connector{i}")
    if p is not None:
      s = np_batch_norm(np_conv(s, p["conv"]), p["bn"]["scale"], p["bn"]["bias"])
    loss = (s + margin) ** 2 * ((s > -margin) & (t <= 0)) + (s - margin) ** 2 * ((s <= margin) & (t > 0))
    total += np.abs(loss).sum() / len(s) / 2 ** (n - 1 - i)
  return total / 1000 * 3


def test_ab_matches_the_authors_alternative_loss():
  from fitnets_jax.methods import ab, shared

  n = 4
  # Level 0 has a connection layer (2 → 3 channels); level 1 has equal channels and none.
  student = [RNG.normal(size=(n, 4, 4, 2)) * 1.5, RNG.normal(size=(n, 2, 2, 3)) * 1.5]
  teacher = [RNG.normal(size=(n, 4, 4, 3)), RNG.normal(size=(n, 2, 2, 3))]
  connectors = {"connector0": shared.connector_init(jax.random.PRNGKey(2), 2, 3)}
  connectors = jax.tree.map(lambda a: a + 0.2 * jax.random.normal(jax.random.PRNGKey(a.size), a.shape), connectors)
  np_connectors = jax.tree.map(lambda a: np.asarray(a, np.float64), connectors)
  nchw = lambda a: np.transpose(a, (0, 3, 1, 2))

  def ours(level, x):
    maps = [jnp.asarray(m, jnp.float32) for m in student]
    maps[level] = x
    return 3e-3 * ab.boundary_loss(maps, [jnp.asarray(t, jnp.float32) for t in teacher], connectors, 1.0)

  def reference(level, x):
    maps = [nchw(m) for m in student]
    maps[level] = nchw(x)
    return np_ab(maps, [nchw(t) for t in teacher], np_connectors)

  for level in (0, 1):
    check(lambda x: ours(level, x), lambda x: reference(level, x), student[level], rtol=1e-5, atol=1e-7)


def np_kdsvd(student_maps, teacher_maps, k=1):
  """RD's KDSVD (the authors' TF code, k = 1), from its math: each map as (positions × channels), its SVD's
  first singular values and right vectors normalised over their first axis (the student keeps k + 3);
  the teacher's vectors signed so their largest-magnitude entry is positive (our choice: the SVD's own sign
  is arbitrary); each teacher vector takes the student vector of largest |cos|, times sign(cos); both
  scaled by the teacher's values; Σ over consecutive pairs of (RBF_S − RBF_T)² / b, RBF = exp(−Δ²/8)."""

  def vectors(f, n):
    x = f.reshape(f.shape[0], -1, f.shape[-1])
    _, s, vh = np.linalg.svd(x, full_matrices=False)
    v = np.swapaxes(vh, 1, 2)[:, :, :n]
    s = s[:, :n]
    return s / np.linalg.norm(s, axis=1, keepdims=True), v / np.linalg.norm(v, axis=1, keepdims=True)

  total, previous = 0.0, None
  for fs, ft in zip(student_maps, teacher_maps):
    s_t, v_t = vectors(ft, k)
    top = np.take_along_axis(v_t, np.argmax(np.abs(v_t), axis=1)[:, None, :], axis=1)
    v_t = v_t * np.sign(top)
    _, v_s = vectors(fs, k + 3)
    cos = np.einsum("bci,bcj->bij", v_s, v_t)
    mask = np.where(np.abs(cos) == np.abs(cos).max(axis=1, keepdims=True), np.sign(cos), 0.0)
    v_s = np.einsum("bci,bij->bcj", v_s, mask) * s_t[:, None, :]
    v_t = v_t * s_t[:, None, :]
    if previous is not None:
      rbf = lambda a, b: np.exp(-((a[:, :, None, :] - b[:, None, :, :]) ** 2) / 8)
      total += np.sum((rbf(v_s, previous[0]) - rbf(v_t, previous[1])) ** 2) / len(fs)
    previous = (v_s, v_t)
  return total


def test_kdsvd_matches_repdistillers_kdsvd():
  from fitnets_jax.methods import kdsvd

  s1, t1 = RNG.normal(size=(2, 4, 4, 5)), RNG.normal(size=(2, 4, 4, 5))
  s2, t2 = RNG.normal(size=(2, 2, 2, 6)), RNG.normal(size=(2, 2, 2, 6))
  ours = lambda f: kdsvd.kdsvd_loss([f, jnp.asarray(s2, jnp.float32)], [t1, t2])
  check(ours, lambda f: np_kdsvd([f, s2], [t1, t2]), s1, rtol=1e-4, atol=1e-6)


def test_relation_losses_stay_finite_on_an_all_zero_feature_row():
  """A dead ReLU example (all zeros) or an example's difference with itself: where torch's gradients of
  F.normalize / sqrt are NaN, ours are 0, so the step is not discarded as non-finite."""
  from fitnets_jax.methods import pkt, rkd, sp

  s = jnp.asarray(REL_S.reshape(5, -1)[:, :7], jnp.float32).at[2].set(0.0)
  for loss in (
    lambda f: sp.similarity_loss(f, REL_T),
    lambda f: pkt.pkt_loss(f, REL_T),
    lambda f: sum(rkd.rkd_terms(f, REL_T)),
  ):
    assert np.isfinite(float(loss(s))) and np.all(np.isfinite(np.asarray(jax.grad(loss)(s))))


# ------------------------------------------------------------------------------------------ hints

U = RNG.normal(size=(2, 3, 4, 5))  # NHWC: H = 3 rows, W = 4 columns, C = 5 channels
R = RNG.normal(size=(2, 3, 4, 5))


def np_hint_cost_c01b(hint, student_output):
  """The authors' HintCost on pylearn2's C01B tensors: ½(hint − out)², summed over axis 1 (the rows),
  then T.mean over what is left (channels, columns, batch)."""
  c01b = lambda x: np.transpose(x, (3, 1, 2, 0))
  return np.mean(np.sum(0.5 * (c01b(hint) - c01b(student_output)) ** 2, axis=1))


def np_mse(a, b):
  """RepDistiller's HintLoss / mdistiller's FitNet: nn.MSELoss / F.mse_loss, mean over every element."""
  return np.mean((a - b) ** 2)


def test_hint_authors_reduction_matches_the_authors_hint_cost():
  check(lambda r: losses.hint_loss(U, r, "authors"), lambda r: np_hint_cost_c01b(U, r), R)


def test_hint_reductions_relate_to_repdistiller_and_mdistiller_mse_by_the_stated_factors():
  h, w, c = U.shape[1:]
  check(lambda r: losses.hint_loss(U, r, "mse"), lambda r: np_mse(r, U), R)
  check(lambda r: losses.hint_loss(U, r, "authors"), lambda r: np_mse(r, U), R, factor=h / 2)
  check(lambda r: losses.hint_loss(U, r, "paper"), lambda r: np_mse(r, U), R, factor=h * w * c / 2)
  check(lambda r: losses.hint_loss(U, r, "paper"), lambda r: np_hint_cost_c01b(U, r), R, factor=w * c)


# -------------------------------------------------------------------------------------- attention

FT = RNG.normal(size=(2, 4, 4, 3))  # teacher features, NHWC
FS = RNG.normal(size=(2, 8, 8, 2))  # student features, twice the size, other channels


def np_normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def np_at(f_nchw, reduce=np.mean):
  """The authors' `at`: F.normalize(x.pow(2).mean(1).view(b, −1)) on NCHW features (torchdistill's
  paper mode sums over channels instead: `reduce=np.sum`, the same map once normalised)."""
  return np_normalize(reduce(f_nchw**2, axis=1).reshape(len(f_nchw), -1))


def nchw(x):
  return np.transpose(x, (0, 3, 1, 2))


def np_at_loss_repdistiller(f_s, f_t):
  """RepDistiller's / mdistiller's AT pair: the larger features adaptive-average-pooled to the
  smaller size, then (at(f_s) − at(f_t)).pow(2).mean() (the authors' cifar.py term, β outside)."""
  f_s, f_t = nchw(f_s), nchw(f_t)
  if f_s.shape[2] > f_t.shape[2]:
    f_s = np_adaptive_avg_pool(f_s, f_t.shape[2])
  elif f_t.shape[2] > f_s.shape[2]:
    f_t = np_adaptive_avg_pool(f_t, f_s.shape[2])
  return np.mean((np_at(f_s) - np_at(f_t)) ** 2)


def test_attention_authors_form_matches_the_authors_code_at_equal_sizes():
  f_s = RNG.normal(size=FT.shape[:3] + (6,))
  check(lambda s: losses.attention_loss(FT, s, 1000.0), lambda s: 1000.0 * np_at_loss_repdistiller(s, FT), f_s)
  check(lambda s: losses.attention_loss(FT, s, 1000.0, "paper"), lambda s: np_at_loss_repdistiller(s, FT), f_s, 500.0)


def test_attention_feature_pooling_matches_repdistiller_and_mdistiller():
  check(lambda s: losses.attention_loss(FT, s, 1.0, pool="features"), lambda s: np_at_loss_repdistiller(s, FT), FS)


def test_attention_map_matches_torchdistill_paper_mode_normalisation():
  # torchdistill's paper mode: Σ_b ‖at_sum(s) − at_sum(t)‖₂ / batch; its map equals ours once normalised.
  f = RNG.normal(size=(2, 4, 4, 3))
  np.testing.assert_allclose(losses.attention_map(f), np_at(nchw(f), np.sum), rtol=1e-5)
  expected = np.mean(np.linalg.norm(np_at(nchw(FT[:, :4, :4]), np.sum) - np_at(nchw(f), np.sum), axis=1))
  q_s, q_t = losses.attention_map(f), losses.attention_map(FT[:, :4, :4])
  np.testing.assert_allclose(np.mean(np.linalg.norm(q_s - q_t, axis=1)), expected, rtol=1e-5)


# -------------------------------------------------------------------------------------------- FSP

F1 = RNG.normal(size=(2, 4, 4, 3))
F2 = RNG.normal(size=(2, 4, 4, 5))
G_T = np.asarray(losses.fsp_matrix(RNG.normal(size=F1.shape), RNG.normal(size=F2.shape)), np.float64)


def np_fsp_repdistiller(bot, top):
  """RepDistiller's compute_fsp at equal sizes: (bot.unsqueeze(1) · top.unsqueeze(2)).mean(−1) →
  (b, C_top, C_bot), the mean over positions of products."""
  bot, top = nchw(bot).reshape(len(bot), bot.shape[-1], -1), nchw(top).reshape(len(top), top.shape[-1], -1)
  return np.mean(bot[:, None] * top[:, :, None], axis=-1)


def test_fsp_matrix_and_loss_relate_to_repdistiller_by_m_times_n():
  np.testing.assert_allclose(
    np.transpose(losses.fsp_matrix(F1, F2), (0, 2, 1)), np_fsp_repdistiller(F1, F2), rtol=1e-5, atol=1e-6
  )
  m, n = F1.shape[-1], F2.shape[-1]

  def reference(f2):  # RepDistiller's compute_loss: (s − t).pow(2).mean()
    return np.mean((np_fsp_repdistiller(F1, f2) - np.transpose(G_T, (0, 2, 1))) ** 2)

  check(lambda f2: losses.fsp_loss([G_T], [losses.fsp_matrix(F1, f2)], [1.0]), reference, F2, factor=m * n)


def test_fsp_max_pooling_matches_torchdistill():
  big = RNG.normal(size=(2, 8, 8, 3))  # the larger map is adaptive-max-pooled to the smaller (torchdistill)
  pooled = nchw(big).reshape(2, 3, 4, 2, 4, 2).max(axis=(3, 5))
  flat = lambda x: x.reshape(len(x), x.shape[1], -1)
  expected = flat(pooled) @ np.transpose(flat(nchw(F2)), (0, 2, 1)) / 16
  np.testing.assert_allclose(losses.fsp_matrix(big, F2), expected, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------- DML

PEERS = [RNG.normal(size=(4, 6)) * s for s in (2.0, 1.5)]


def np_dml_kl(own, peer):
  """The authors' kl_loss_compute(logits1 = own, logits2 = peer): mean over the batch of
  Σ p2·log(1e-8 + p2 / (p1 + 1e-8))."""
  p1, p2 = np_softmax(own), np_softmax(peer)
  return np.mean(np.sum(p2 * np.log(1e-8 + p2 / (p1 + 1e-8)), 1))


def test_dml_sum_matches_the_authors_code_and_mean_is_the_papers_eq_10():
  def authors(s):  # net_loss = CE + Σ_{j≠i} kl_loss_compute(net_i, net_j)
    return np_ce(s, Y) + sum(np_dml_kl(s, p) for p in PEERS)

  # The 1e-8 guards move the value by about 1e-7: within the tolerance.
  check(lambda s: losses.mutual_learning_loss(s, PEERS, Y, 1.0, "sum")[0], authors, S, rtol=1e-5, atol=1e-6)

  def paper(s):
    return np_ce(s, Y) + sum(np_dml_kl(s, p) for p in PEERS) / len(PEERS)

  check(lambda s: losses.mutual_learning_loss(s, PEERS, Y, 1.0, "mean")[0], paper, S, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- BYOT

EXITS = [RNG.normal(size=(4, 6)) * s for s in (1.0, 2.0)]  # two shallow exits; the deepest is T


def test_byot_matches_the_authors_train_py_up_to_the_targets_entropy():
  alpha, tau = 0.3, 3.0
  target = np_softmax(T / tau)

  def authors(first):  # CE(deep) + Σ_shallow [α·CrossEntropy(out/τ, teacher/τ) + (1 − α)·CE]
    shallow = [first, EXITS[1]]
    soft = lambda z: -np.mean(np.sum(target * np_log_softmax(z / tau), 1))
    return np_ce(T, Y) + sum(alpha * soft(z) + (1 - alpha) * np_ce(z, Y) for z in shallow)

  entropy = -np.mean(np.sum(target * np.log(target), 1))

  def ours(first):
    total, _ = losses.self_distillation_loss([first, EXITS[1], T], [None] * 3, Y, alpha, tau, 0.0, "off")
    return total

  # KL = soft CE − H(target): the value is lower by α·H per shallow exit, the gradient is the same.
  x32 = jnp.asarray(EXITS[0], jnp.float32)
  np.testing.assert_allclose(float(ours(x32)), authors(EXITS[0]) - 2 * alpha * entropy, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.grad(ours)(x32)), numeric_grad(authors, EXITS[0]), rtol=1e-3, atol=1e-6)


def np_upsample_bilinear_x2(x):
  """PyTorch's nn.Upsample(scale_factor=2, mode='bilinear') (align_corners=False) on (b, h, w):
  source coordinate (i + ½)/2 − ½, clamped at 0, linear between its two neighbours."""

  def axis_weights(n):
    src = np.maximum((np.arange(2 * n) + 0.5) / 2 - 0.5, 0.0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = src - lo
    m = np.zeros((2 * n, n))
    m[np.arange(2 * n), lo] += 1 - frac
    m[np.arange(2 * n), hi] += frac
    return m

  rows, cols = axis_weights(x.shape[1]), axis_weights(x.shape[2])
  return np.einsum("ih,bhw,jw->bij", rows, x, cols)


def test_byot_attention_upsampling_matches_pytorch_bilinear():
  x = RNG.normal(size=(2, 4, 5))
  ours = jax.image.resize(jnp.asarray(x[..., None], jnp.float32), (2, 8, 10, 1), "bilinear")[..., 0]
  np.testing.assert_allclose(ours, np_upsample_bilinear_x2(x), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- preprocessing

IMAGES = RNG.integers(0, 256, (30, 4, 4, 3)).astype(np.float64)


def np_pylearn2_gcn(x, scale=55.0, min_divisor=1e-8):
  """pylearn2's global_contrast_normalize(X, scale, subtract_mean=True, use_std=False, sqrt_bias=0):
  X − row mean, divided by √(Σ X²)/scale, divisors below min_divisor set to 1; on the 0–255 pixels."""
  x = x - x.mean(axis=1, keepdims=True)
  norms = np.sqrt((x**2).sum(axis=1, keepdims=True)) / scale
  norms[norms < min_divisor] = 1.0
  return x / norms


def np_pylearn2_zca(x, filter_bias=0.1):
  """pylearn2's ZCA.fit: eigh(XᵀX/n + filter_bias·I) of the centred rows, P = V·diag(1/√λ)·Vᵀ."""
  mean = x.mean(axis=0)
  c = x - mean
  eigs, eigv = np.linalg.eigh(c.T @ c / len(x) + filter_bias * np.eye(x.shape[1]))
  return mean, (eigv * np.sqrt(1.0 / eigs)) @ eigv.T


def test_gcn_and_zca_match_pylearn2():
  flat = IMAGES.reshape(len(IMAGES), -1)
  ours = preprocessing.gcn(flat / 255.0, 55.0)  # scale-free: [0, 1] here, 0–255 in pylearn2's CIFAR10(gcn=55)
  np.testing.assert_allclose(ours, np_pylearn2_gcn(flat), rtol=1e-6, atol=1e-6)
  mean, w = preprocessing.zca_fit(ours, 0.1)
  ref_mean, ref_w = np_pylearn2_zca(np_pylearn2_gcn(flat))
  np.testing.assert_allclose((ours - mean) @ w, (np_pylearn2_gcn(flat) - ref_mean) @ ref_w, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ page


def test_every_row_of_the_conventions_page_names_a_test_here():
  names = re.findall(r"`(test_[a-z0-9_]+)`", PAGE.read_text())
  defined = "".join(path.read_text() for path in PAGE.parents[1].joinpath("tests").glob("test_*.py"))
  assert len(names) >= 12
  missing = [n for n in names if f"def {n}(" not in defined]
  assert not missing, f"docs/conventions.md names tests that do not exist: {missing}"


@pytest.mark.parametrize("reduction", losses.HINT_REDUCTIONS)
def test_the_hint_reductions_are_the_pages_rows(reduction):
  assert f"`{reduction}`" in PAGE.read_text()

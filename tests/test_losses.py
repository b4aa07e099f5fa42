"""Every loss against values computed independently in NumPy (or by hand)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fitnets_jax import losses

RNG = np.random.default_rng(0)
S = RNG.normal(size=(5, 7)).astype(np.float32) * 2
T = RNG.normal(size=(5, 7)).astype(np.float32) * 3
Y = np.array([0, 3, 6, 2, 2])


def np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_ce(p, q):
  return float(np.mean(-np.sum(p * np.log(q), -1)))


def test_cross_entropy_matches_numpy():
  expected = float(np.mean(-np.log(np_softmax(S.astype(np.float64))[np.arange(5), Y])))
  np.testing.assert_allclose(losses.cross_entropy(S, Y), expected, rtol=1e-5)


def test_cross_entropy_by_hand():
  # Two equal logits: −log ½.
  np.testing.assert_allclose(losses.cross_entropy(jnp.zeros((1, 2)), jnp.array([1])), np.log(2), rtol=1e-6)


@pytest.mark.parametrize("tau,lam", [(1.0, 4.0), (3.0, 2.5), (3.0, 0.0), (20.0, 1.0)])
def test_fitnets_kd_loss_matches_numpy(tau, lam):
  s, t = S.astype(np.float64), T.astype(np.float64)
  hard = np_ce(np.eye(7)[Y], np_softmax(s))
  soft = np_ce(np_softmax(t / tau), np_softmax(s / tau))  # H(P_T^τ, P_S^τ), no τ²
  total, parts = losses.fitnets_kd_loss(S, T, Y, lam, tau)
  np.testing.assert_allclose(parts["ce"], hard, rtol=1e-5)
  np.testing.assert_allclose(parts["soft_ce"], soft, rtol=1e-5)
  np.testing.assert_allclose(total, hard + lam * soft, rtol=1e-5)


@pytest.mark.parametrize("tau,alpha", [(1.0, 0.5), (4.0, 0.9), (2.5, 1.0)])
def test_hinton_kd_loss_matches_numpy(tau, alpha):
  s, t = S.astype(np.float64), T.astype(np.float64)
  p, q = np_softmax(t / tau), np_softmax(s / tau)
  kl = float(np.mean(np.sum(p * (np.log(p) - np.log(q)), -1)))
  hard = np_ce(np.eye(7)[Y], np_softmax(s))
  total, parts = losses.hinton_kd_loss(S, T, Y, alpha, tau)
  np.testing.assert_allclose(parts["kl"], kl, rtol=1e-4)
  np.testing.assert_allclose(total, alpha * tau**2 * kl + (1 - alpha) * hard, rtol=1e-4)


def test_kd_soft_gradient_is_logit_matching_at_high_temperature():
  # Hinton et al. §2.1: with zero-mean logits and large τ, ∂KL/∂z_S ≈ (z_S − z_T)/(N·τ²) per example.
  tau, n = 400.0, 7
  s = S[:1] - S[:1].mean()
  t = T[:1] - T[:1].mean()
  grad = jax.grad(lambda z: losses.kl_divergence(losses.softened(t, tau), z / tau))(jnp.asarray(s))
  np.testing.assert_allclose(grad, (s - t) / (n * tau**2), rtol=2e-2, atol=1e-9)


def test_kd_teacher_gets_no_gradient():
  g = jax.grad(lambda t: losses.fitnets_kd_loss(S, t, Y, 4.0, 3.0)[0])(jnp.asarray(T))
  assert not np.any(np.asarray(g))


def test_kl_divergence_handles_zero_probabilities():
  target = np.array([[1.0, 0.0, 0.0]])
  logits = np.array([[2.0, 0.0, -1.0]])
  expected = -np.log(np_softmax(logits)[0, 0])
  np.testing.assert_allclose(losses.kl_divergence(target, logits), expected, rtol=1e-6)


@pytest.mark.parametrize("reduction", ["authors", "paper", "mse"])
def test_hint_loss_reductions_match_numpy(reduction):
  u = RNG.normal(size=(3, 4, 6, 5)).astype(np.float32)
  r = RNG.normal(size=(3, 4, 6, 5)).astype(np.float32)
  d2 = (u.astype(np.float64) - r) ** 2
  expected = {
    "paper": np.mean([0.5 * np.sum(d2[i]) for i in range(3)]),  # eq. 3: ½ Σ over the map, mean over the batch
    "authors": np.mean(0.5 * d2.sum(axis=1)),  # HintCost: Σ over rows (H), mean over batch, W and C
    "mse": np.mean(d2),
  }[reduction]
  np.testing.assert_allclose(losses.hint_loss(u, r, reduction), expected, rtol=1e-5)


def test_hint_loss_by_hand():
  # One example, two positions off by 1 and 2 → ½(1 + 4); a flat feature has no rows, so the authors'
  # reduction is eq. 3 there. On a 2×1×1 map off by 1 and 2: authors sum the rows, ½(1 + 4) again.
  for reduction in ("authors", "paper"):
    np.testing.assert_allclose(losses.hint_loss(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]]), reduction), 2.5)
  np.testing.assert_allclose(losses.hint_loss(np.array([1.0, 2.0]).reshape(1, 2, 1, 1), np.zeros((1, 2, 1, 1))), 2.5)
  # 1×1×2×1 (two columns): authors average the columns → ½·(1 + 4)/2.
  np.testing.assert_allclose(losses.hint_loss(np.array([1.0, 2.0]).reshape(1, 1, 2, 1), np.zeros((1, 1, 2, 1))), 1.25)


def test_hint_loss_gradient_flows_only_to_the_student():
  u = jnp.ones((2, 3))
  r = jnp.zeros((2, 3))
  gu, gr = jax.grad(losses.hint_loss, argnums=(0, 1))(u, r, "paper")
  assert not np.any(np.asarray(gu))
  np.testing.assert_allclose(gr, -np.ones((2, 3)) / 2)  # d/dr ½Σ(u−r)²/B = −(u−r)/B


def test_losses_reduce_in_float32_from_bfloat16():
  total, _ = losses.fitnets_kd_loss(S.astype(jnp.bfloat16), T.astype(jnp.bfloat16), Y, 4.0, 3.0)
  assert total.dtype == jnp.float32


def test_accuracy():
  assert float(losses.accuracy(np.array([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0]]), np.array([1, 1, 1]))) == pytest.approx(
    2 / 3
  )


# ---------------------------------------------------------------------------- FSP, attention, several teachers


def np_max_pool(x, f):
  b, h, w, c = x.shape
  return x.reshape(b, h // f, f, w // f, f, c).max(axis=(2, 4))


def np_fsp(a, b):
  """G_ij = Σ_{s,t} a_{s,t,i} b_{s,t,j} / (h·w), written as explicit loops over positions."""
  batch, h, w, m = a.shape
  g = np.zeros((batch, m, b.shape[-1]))
  for s in range(h):
    for t in range(w):
      g += a[:, s, t, :, None] * b[:, s, t, None, :]
  return g / (h * w)


def test_fsp_matrix_matches_numpy_with_and_without_pooling():
  a = RNG.normal(size=(2, 4, 4, 3))
  b = RNG.normal(size=(2, 4, 4, 5))
  np.testing.assert_allclose(losses.fsp_matrix(a, b), np_fsp(a, b), rtol=1e-5, atol=1e-6)
  small = RNG.normal(size=(2, 2, 2, 5))  # the 4×4 map is max-pooled 2×2 first, whichever side it is on
  np.testing.assert_allclose(losses.fsp_matrix(a, small), np_fsp(np_max_pool(a, 2), small), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.fsp_matrix(small, a), np_fsp(small, np_max_pool(a, 2)), rtol=1e-5, atol=1e-6)
  assert losses.fsp_matrix(a.astype(np.float16), b.astype(np.float16)).dtype == jnp.float32


def test_fsp_matrix_by_hand():
  # One position: G = outer product; four positions of ones: G_ij = 1.
  np.testing.assert_allclose(losses.fsp_matrix(np.array([[[[1.0, 2.0]]]]), np.array([[[[3.0]]]]))[0], [[3.0], [6.0]])
  np.testing.assert_allclose(losses.fsp_matrix(np.ones((1, 2, 2, 2)), np.ones((1, 2, 2, 3)))[0], np.ones((2, 3)))


def test_fsp_loss_matches_numpy():
  g_t = [RNG.normal(size=(3, 4, 5)), RNG.normal(size=(3, 5, 6))]
  g_s = [RNG.normal(size=(3, 4, 5)), RNG.normal(size=(3, 5, 6))]
  weights = [1.0, 0.5]
  expected = sum(w * np.mean(np.sum((t - s) ** 2, axis=(1, 2))) for t, s, w in zip(g_t, g_s, weights))
  np.testing.assert_allclose(losses.fsp_loss(g_t, g_s, weights), expected, rtol=1e-5)
  grads = jax.grad(lambda t: losses.fsp_loss([t], [g_s[0]], [1.0]))(jnp.asarray(g_t[0], jnp.float32))
  assert not np.any(grads)  # the teacher's matrices are targets


def np_pool(x, f):
  """Average pooling of axes 1 and 2 by f (a map (b, h, w) or features (b, h, w, c))."""
  b, h, w = x.shape[:3]
  return x.reshape(b, h // f, f, w // f, f, *x.shape[3:]).mean(axis=(2, 4))


def np_attention(x, f=1, pool="features"):
  if f > 1 and pool == "features":
    x = np_pool(x, f)
  a = (x**2).mean(-1)
  if f > 1 and pool == "map":
    a = np_pool(a, f)
  q = a.reshape(a.shape[0], -1)
  return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize("form,scale", [("authors", 1000.0), ("paper", 500.0)])
@pytest.mark.parametrize("pool", ["features", "map"])
def test_attention_map_and_loss_match_numpy(form, scale, pool):
  t = RNG.normal(size=(3, 4, 4, 8))
  s = RNG.normal(size=(3, 4, 4, 2))  # channel counts may differ
  np.testing.assert_allclose(losses.attention_map(t), np_attention(t), rtol=1e-5)
  expected = scale * np.mean((np_attention(s) - np_attention(t)) ** 2)
  np.testing.assert_allclose(losses.attention_loss(t, s, 1000.0, form, pool), expected, rtol=1e-5)
  big = RNG.normal(size=(3, 8, 8, 2))  # a 2× larger student map: pooled to 4×4
  expected = scale * np.mean((np_attention(big, 2, pool) - np_attention(t)) ** 2)
  np.testing.assert_allclose(losses.attention_loss(t, big, 1000.0, form, pool), expected, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(losses.attention_map(t), axis=1), 1.0, rtol=1e-6)


def test_attention_pooling_features_first_differs_from_pooling_the_map():
  big = RNG.normal(size=(2, 8, 8, 3))
  assert np.max(np.abs(np_attention(big, 2, "features") - np_attention(big, 2, "map"))) > 1e-3


def test_attention_of_an_all_zero_map_is_zero_with_a_finite_gradient():
  # A dead ReLU block gives one example an all-zero student map: F.normalize's rule makes its Q zero,
  # and the gradient must stay finite (‖·‖'s gradient at 0 is NaN), or the whole step is discarded.
  t = RNG.normal(size=(2, 4, 4, 3)).astype(np.float32)
  s = RNG.normal(size=(2, 4, 4, 3)).astype(np.float32)
  s[1] = 0.0
  np.testing.assert_array_equal(losses.attention_map(s)[1], np.zeros(16))
  q_s = np.concatenate([np_attention(s[:1]), np.zeros((1, 16))])
  expected = 1000 * np.mean((q_s - np_attention(t)) ** 2)
  np.testing.assert_allclose(losses.attention_loss(t, s, 1000.0), expected, rtol=1e-5)
  grads = jax.grad(lambda x: losses.attention_loss(t, x, 1000.0))(jnp.asarray(s))
  assert np.all(np.isfinite(grads)) and np.any(grads[0]) and not np.any(grads[1])
  naive = jax.grad(lambda x: jnp.sum(x / jnp.maximum(jnp.linalg.norm(x), 1e-12)))(jnp.zeros(4))
  assert np.all(np.isnan(naive))  # what the test guards against


def test_attention_loss_by_hand():
  # A map with all attention on one position vs a uniform one over 4 positions:
  # Q_T = (1,0,0,0), Q_S = (½,½,½,½); mean square difference = (¼ + 3·¼)/4 = ¼; β·¼ (authors), β/8 (paper).
  t = np.zeros((1, 2, 2, 1))
  t[0, 0, 0, 0] = 3.0
  np.testing.assert_allclose(losses.attention_loss(t, np.ones((1, 2, 2, 1)), 8.0), 2.0, rtol=1e-6)
  np.testing.assert_allclose(losses.attention_loss(t, np.ones((1, 2, 2, 1)), 8.0, "paper"), 1.0, rtol=1e-6)


def test_weighted_soft_target_matches_numpy():
  t1, t2, t3 = (RNG.normal(size=(5, 7)) * 3 for _ in range(3))
  mu = np.array([0.2, 0.0, 0.6])
  expected = sum(m * np_softmax(t / 3.0) for m, t in zip(mu, (t1, t2, t3))) / mu.sum()
  np.testing.assert_allclose(losses.soft_target([t1, t2, t3], 3.0, mu), expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
    losses.soft_target([t1, t2], 2.0), (np_softmax(t1 / 2) + np_softmax(t2 / 2)) / 2, rtol=1e-5, atol=1e-7
  )
  np.testing.assert_allclose(losses.soft_target(t1, 3.0), np_softmax(t1 / 3.0), rtol=1e-5, atol=1e-7)
  # The KD losses with several teachers use that target.
  target = expected
  hard = np_ce(np.eye(7)[Y], np_softmax(S.astype(np.float64)))
  soft = np_ce(target, np_softmax(S.astype(np.float64) / 3.0))
  total, _ = losses.fitnets_kd_loss(S, [t1, t2, t3], Y, 2.0, 3.0, mu)
  np.testing.assert_allclose(total, hard + 2.0 * soft, rtol=1e-5)


def np_kl(p, q):
  return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), -1)))


@pytest.mark.parametrize("k,tau,peers", [(2, 1.0, "sum"), (3, 1.0, "sum"), (3, 2.0, "sum"), (3, 1.0, "mean")])
def test_mutual_learning_loss_matches_numpy(k, tau, peers):
  cohort = [RNG.normal(size=(5, 7)).astype(np.float32) * s for s in (2, 3, 1.5)[:k]]
  for i in range(k):
    mine, others = cohort[i].astype(np.float64), [c.astype(np.float64) for j, c in enumerate(cohort) if j != i]
    ce = np_ce(np.eye(7)[Y], np_softmax(mine))
    kl = sum(np_kl(np_softmax(p / tau), np_softmax(mine / tau)) for p in others)  # Σ_l KL(p_l ‖ p_k)
    kl = kl / (k - 1) if peers == "mean" else kl  # eq. 10 averages, the authors' code sums
    total, parts = losses.mutual_learning_loss(cohort[i], [c for j, c in enumerate(cohort) if j != i], Y, tau, peers)
    np.testing.assert_allclose(parts["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(parts["kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(total, ce + kl, rtol=1e-5)


def test_mutual_learning_loss_treats_peers_as_targets():
  peer_grad = jax.grad(lambda p: losses.mutual_learning_loss(jnp.asarray(S), [p], jnp.asarray(Y))[0])(jnp.asarray(T))
  assert float(jnp.max(jnp.abs(peer_grad))) == 0.0
  own_grad = jax.grad(lambda s: losses.mutual_learning_loss(s, [jnp.asarray(T)], jnp.asarray(Y))[0])(jnp.asarray(S))
  expected = 2 * np_softmax(S.astype(np.float64)) - np.eye(7)[Y] - np_softmax(T.astype(np.float64))  # CE + KL at τ = 1
  np.testing.assert_allclose(own_grad, expected / 5, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
  "kind,alpha,tau,lam", [("l2", 0.3, 3.0, 0.03), ("squared", 0.5, 2.0, 0.1), ("off", 0.3, 3.0, 0.03)]
)
def test_self_distillation_loss_matches_numpy(kind, alpha, tau, lam):
  exits = [RNG.normal(size=(5, 7)) * s for s in (1.0, 2.0, 3.0)]  # shallow → deep
  feats = [RNG.normal(size=(5, 4)) for _ in range(3)]
  deep, deep_feat = exits[-1], feats[-1]
  expected = np_ce(np.eye(7)[Y], np_softmax(deep))
  for z, f in zip(exits[:-1], feats[:-1]):
    expected += (1 - alpha) * np_ce(np.eye(7)[Y], np_softmax(z))
    expected += alpha * np_kl(np_softmax(deep / tau), np_softmax(z / tau))
    # l2: torch.dist, one norm over the whole batch; squared: eq. 3 per example, mean over the batch
    distance = {"l2": np.sqrt(np.sum((f - deep_feat) ** 2)), "squared": np.mean(np.sum((f - deep_feat) ** 2, -1))}
    expected += lam * distance[kind] if kind != "off" else 0.0
  total, parts = losses.self_distillation_loss(
    [np.float32(z) for z in exits], [np.float32(f) for f in feats], Y, alpha, tau, lam, kind
  )
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  assert set(parts) == {"ce", "kl", "feature"}
  # A shallow exit given no feature (the authors' code skips the one just before the deepest) has no term
  skipped, _ = losses.self_distillation_loss(
    [np.float32(z) for z in exits], [np.float32(feats[0]), None, np.float32(feats[2])], Y, alpha, tau, lam, kind
  )
  if kind != "off":
    unskipped = {
      "l2": np.sqrt(np.sum((feats[1] - deep_feat) ** 2)),
      "squared": np.mean(np.sum((feats[1] - deep_feat) ** 2, -1)),
    }
    np.testing.assert_allclose(skipped, expected - lam * unskipped[kind], rtol=1e-5)


def test_self_distillation_targets_are_the_deepest_exit():
  exits = [jnp.asarray(S), jnp.asarray(T)]
  feats = [jnp.ones((5, 3)), jnp.zeros((5, 3))]
  grads = jax.grad(
    lambda e, f: losses.self_distillation_loss(e, f, jnp.asarray(Y), 0.3, 3.0, 0.03, "l2")[0], argnums=(0, 1)
  )(exits, feats)
  ce_only = jax.grad(lambda z: losses.cross_entropy(z, jnp.asarray(Y)))(jnp.asarray(T))
  np.testing.assert_allclose(grads[0][1], ce_only, rtol=1e-5)  # the deepest exit learns from the labels only
  assert float(jnp.max(jnp.abs(grads[1][1]))) == 0.0  # F_C is a target
  # ‖F_1 − F_C‖ over the batch = √15; its gradient is λ·(F_1 − F_C)/√15
  np.testing.assert_allclose(grads[1][0], np.full((5, 3), 0.03 / np.sqrt(15)), rtol=1e-5)
  same = jax.grad(lambda f: losses.feature_distance(f, f, "l2"))(jnp.ones((5, 3)))
  assert np.all(np.isfinite(same)) and not np.any(same)  # zero distance: a finite (zero) gradient

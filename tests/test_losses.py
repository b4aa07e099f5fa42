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
  soft = np_ce(np_softmax(t / tau), np_softmax(s / tau))   # H(P_T^τ, P_S^τ), no τ²
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


def test_hint_loss_is_half_squared_error_summed_over_map_mean_over_batch():
  u = RNG.normal(size=(3, 4, 4, 5)).astype(np.float32)
  r = RNG.normal(size=(3, 4, 4, 5)).astype(np.float32)
  expected = np.mean([0.5 * np.sum((u[i] - r[i]) ** 2) for i in range(3)])
  np.testing.assert_allclose(losses.hint_loss(u, r), expected, rtol=1e-5)
  # By hand: one example, two positions off by 1 and 2 → ½(1 + 4).
  np.testing.assert_allclose(losses.hint_loss(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]])), 2.5)


def test_hint_loss_gradient_flows_only_to_the_student():
  u = jnp.ones((2, 3)); r = jnp.zeros((2, 3))
  gu, gr = jax.grad(losses.hint_loss, argnums=(0, 1))(u, r)
  assert not np.any(np.asarray(gu))
  np.testing.assert_allclose(gr, -np.ones((2, 3)) / 2)   # d/dr ½Σ(u−r)²/B = −(u−r)/B


def test_losses_reduce_in_float32_from_bfloat16():
  total, _ = losses.fitnets_kd_loss(S.astype(jnp.bfloat16), T.astype(jnp.bfloat16), Y, 4.0, 3.0)
  assert total.dtype == jnp.float32


def test_accuracy():
  assert float(losses.accuracy(np.array([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0]]), np.array([1, 1, 1]))) == pytest.approx(2 / 3)

"""Pure loss functions. No state, no config: every argument is an array or a number.

All reductions are done in float32 whatever the activations' dtype.
"""

import jax
import jax.numpy as jnp


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


def fitnets_kd_loss(student_logits, teacher_logits, labels, lam, temperature):
  """FitNets KD loss (Romero et al. 2015, eq. 2): L = H(y, P_S) + λ·H(P_T^τ, P_S^τ).

  No τ² factor, as the paper writes it; λ is annealed by the caller. The teacher is a
  target (stop_gradient). Mean over the batch. Returns (loss, {"ce", "soft_ce"}).
  """
  target = jax.lax.stop_gradient(softened(teacher_logits, temperature))
  ce = cross_entropy(student_logits, labels)
  soft = soft_cross_entropy(target, _f32(student_logits) / temperature)
  return ce + lam * soft, {"ce": ce, "soft_ce": soft}


def hinton_kd_loss(student_logits, teacher_logits, labels, alpha, temperature):
  """Hinton KD: L = α·τ²·KL(P_T^τ ‖ P_S^τ) + (1−α)·H(y, P_S), mean over the batch.

  The τ² keeps the soft gradients' scale independent of τ (Hinton et al. 2015, §2).
  Returns (loss, {"ce", "kl"}).
  """
  target = jax.lax.stop_gradient(softened(teacher_logits, temperature))
  ce = cross_entropy(student_logits, labels)
  kl = kl_divergence(target, _f32(student_logits) / temperature)
  return alpha * temperature**2 * kl + (1.0 - alpha) * ce, {"ce": ce, "kl": kl}


def hint_loss(teacher_hint, regressed_guided):
  """FitNets hint loss (Romero et al. 2015, eq. 3): ½‖u_h(x) − r(v_g(x))‖².

  Summed over the feature map (every non-batch axis), mean over the batch. The teacher's
  hint is a target (stop_gradient).
  """
  diff = _f32(jax.lax.stop_gradient(teacher_hint)) - _f32(regressed_guided)
  return 0.5 * jnp.mean(jnp.sum(jnp.square(diff).reshape(diff.shape[0], -1), axis=-1))


def accuracy(logits, labels):
  """Fraction of argmax predictions equal to the labels."""
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)

"""`cc`: correlation congruence (Peng et al., ICCV 2019), one stage beside the labels.

Both networks' pooled embeddings pass through a trained linear embedding (128 wide), and the student
matches the teacher's correlation between consecutive examples of the batch. As the code the authors
gave RepDistiller (`CC.py`, `Correlation`, with `LinearEmbed` heads on the student's and the teacher's
side, `--feat_dim 128`): with δ = e_S − e_T, the loss is mean over i < b − 1 of Σ_d |δ_i,d|·|δ_{i+1},d|;
the weight is 0.02 (RepDistiller's `-b 0.02`). Both heads train with the student (torch's default
initialisation) and are left behind; the teacher's features carry no gradient, its head does.
The paper's own form, a Taylor-expanded Gaussian-kernel correlation matrix over the batch (eq. 7–9;
torchdistill's `CCKDLoss`), is a different function, not a factor of this one (docs/conventions.md).
The embedding is the layer the classifier reads, averaged over its positions (RepDistiller's
`feat[-1]`).
"""

import math

import ml_collections

from fitnets_jax.errors import check
from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method


def defaults():
  return {
    "cc": ml_collections.ConfigDict(
      dict(
        weight=0.02,  # RepDistiller -b 0.02
        embedding=128,  # width of both linear embeddings (RepDistiller --feat_dim)
        student_layer="",  # "": the layer the classifier reads, averaged over its positions
        teacher_layer="",
      )
    )
  }


def correlation_loss(student_embedding, teacher_embedding):
  """mean_i Σ_d |δ_i,d|·|δ_{i+1},d|, δ = e_S − e_T over the batch's consecutive examples, in float32."""
  import jax.numpy as jnp

  delta = jnp.abs(student_embedding.astype(jnp.float32) - teacher_embedding.astype(jnp.float32))
  return jnp.mean(jnp.sum(delta[:-1] * delta[1:], axis=1))


def cc_stage(ctx):
  import jax

  cfg = ctx.config.cc
  check(isinstance(cfg.embedding, int) and cfg.embedding > 0, f"cc.embedding={cfg.embedding!r} must be an integer > 0.")

  def heads(rng, student_shape, teacher_shape):
    ks, kt = jax.random.split(rng)
    return {
      "embed_student": shared.linear_init(ks, math.prod(student_shape), cfg.embedding),
      "embed_teacher": shared.linear_init(kt, math.prod(teacher_shape), cfg.embedding),
    }

  def relation(s, t, params):
    embed = lambda f, p: f.reshape(len(f), -1).astype(p["kernel"].dtype) @ p["kernel"] + p["bias"]
    t = jax.lax.stop_gradient(t)
    return correlation_loss(embed(s, params["embed_student"]), embed(t, params["embed_teacher"]))

  return shared.feature_pair_stage(ctx, "cc", cfg, relation, pool=True, heads=heads)


METHOD = Method(name="cc", stages=lambda ctx: [cc_stage(ctx)], teachers="one", defaults=defaults)

"""`fitnets`: hints, then KD (Romero et al. 2015, Algorithm 1).

Stage `hint`: the student up to and including the guided layer, plus a convolutional regressor,
minimise ½‖u_h(x) − r(v_g(x))‖² against the teacher's hint layer (eq. 3). Everything after the
guided layer — parameters and batch statistics — is frozen bit for bit, and is not computed:
only the two networks' prefixes are captured, and XLA drops the unused rest.
Stage `kd`: the regressor is dropped and the whole student trains on the KD loss from the
stage-1 weights (`fitnets_jax.methods.kd`).
"""

import jax
import jax.numpy as jnp

from fitnets_jax import features, losses
from fitnets_jax.methods import kd
from fitnets_jax.methods.base import Stage, forward, fresh_or_carried
from fitnets_jax.models.regressor import Regressor

USES_TEACHER = True


def hint_stage(ctx):
  cfg = ctx.config.hint
  student, teacher = ctx.student, ctx.teacher
  hint = features.find_layer(teacher.layers, cfg.teacher_layer, "hint.teacher_layer", teacher.name)
  guided = features.find_layer(student.layers, cfg.student_layer, "hint.student_layer", student.name)
  regressor = Regressor(hint.shape[-1], features.regressor_kernel(guided, hint), hint.nonlinearity,
                        hint.pieces, cfg.regressor_init)
  trained = features.prefix_paths(student.layers, guided.name)
  num_steps = ctx.steps("hint")

  def init(rng, carry):
    params, stats = fresh_or_carried(student, rng, carry)
    reg = regressor.init(jax.random.fold_in(rng, 1), jnp.zeros((1,) + guided.shape))["params"]
    return {"student": params, "regressor": reg}, {"student": stats}

  def labels(params):
    return {"student": features.prefix_labels(params["student"], trained),
            "regressor": jax.tree.map(lambda _: "train", params["regressor"])}

  def loss(params, batch_stats, teacher_vars, batch, rng, step):
    x = batch["image"]
    _, s_feats, stats = forward(student, params["student"], batch_stats["student"], x, True, rng,
                                capture=(guided.name,))
    _, t_feats, _ = forward(teacher, teacher_vars["params"], teacher_vars["batch_stats"], x, False,
                            capture=(hint.name,))
    value = losses.hint_loss(t_feats[hint.name], regressor.apply({"params": params["regressor"]},
                                                                 s_feats[guided.name]))
    stats = features.merge_prefix(stats, batch_stats["student"], trained)
    return value, ({"hint": value}, {"student": stats})

  return Stage("hint", "student", num_steps, ctx.optimizer("hint", num_steps), init, loss, labels,
               uses_teacher=True, evaluate=False)


def stages(ctx):
  return [hint_stage(ctx), kd.kd_stage(ctx)]

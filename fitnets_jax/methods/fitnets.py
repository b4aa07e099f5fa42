"""`fitnets`: hints, then KD (Romero et al. 2015, Algorithm 1).

Stage `hint`: the student up to and including the guided layer, plus a convolutional regressor,
minimise ½(u_h(x) − r(v_g(x)))² against the teacher's hint layer (eq. 3), reduced as the authors'
`HintCost` does by default (`hint.reduction`, `losses.hint_loss`). The regressor is initialised
U(±0.05), has max-norm 0.9 and no learning-rate scale, as the authors' `generateConvRegressor`. Everything after the
guided layer — parameters and batch statistics — is frozen bit for bit, and is not computed:
only the two networks' prefixes are captured, and XLA drops the unused rest.
Several hint pairs (`config.hints`, see `fitnets_jax.hints`) train progressively — stage
`hint1` up to guided layer 1, then `hint2` up to guided layer 2, … — or jointly in one `hint`
stage on the weighted sum, up to the deepest guided layer. A pair may be of kind `attention`.
Stage `kd`: the regressors are dropped and the whole student trains on the KD loss from the
hint stages' weights (`fitnets_jax.methods.kd`).
"""

import jax
import jax.numpy as jnp
import ml_collections

from fitnets_jax import features, hints
from fitnets_jax.methods import kd
from fitnets_jax.methods.base import Method, forward, fresh_or_carried, hint_captures, teacher_features


def defaults():
  """The hint pairs (`hint`, or the list `hints`), read by every method that uses hints or attention."""
  return {
    "hint": ml_collections.ConfigDict(
      dict(
        teacher_layer="conv2",  # hint layer (python -m fitnets_jax.layers lists them)
        student_layer="conv5",  # guided layer
        kind="regression",  # regression: FitNets' regressor + L2 | attention: attention transfer
        weight=1.0,  # this pair's weight in the loss
        regressor_init=0.05,  # U(±r) initialisation of the regressor; 0: lecun normal
        regressor_max_norm=0.9,  # max-norm of each regressor's kernel columns (the authors' code: 0.9); 0: none
        reduction="authors",  # ½(u − r)²: authors (sum over rows, mean over the rest) | paper (eq. 3) | mse
        order="progressive",  # several pairs (`hints`): progressive (one phase per pair) | joint
      )
    ),
    # Several hint pairs: a list of dicts with teacher_layer, student_layer and optionally kind,
    # weight and teacher (index into `teachers`); empty: the one pair in `hint`.
    "hints": [],
  }


def hint_stage(ctx, name, pairs):
  """Trains the student up to the deepest guided layer of `pairs` (and their regressors) on their losses."""
  student = ctx.student
  options = hints.loss_options(ctx.config)
  last = max((p.guided for p in pairs), key=lambda l: [x.name for x in student.layers].index(l.name))
  trained = features.prefix_paths(student.layers, last.name)
  by_teacher, guided_names = hint_captures(pairs)

  def init(rng, carry):
    params, stats = fresh_or_carried(student, rng, carry)
    regressors = {
      f"regressor{i}": p.regressor.init(jax.random.fold_in(rng, i + 1), jnp.zeros((1,) + p.guided.shape))["params"]
      for i, p in enumerate(pairs)
      if p.regressor is not None
    }
    return {"student": params, **regressors}, {"student": stats}

  def labels(params):
    return {
      k: features.prefix_labels(v, trained) if k == "student" else jax.tree.map(lambda _: "train", v)
      for k, v in params.items()
    }

  def loss(params, batch_stats, teacher_vars, batch, rng, step):
    x = batch["image"]
    _, s_feats, stats = forward(student, params["student"], batch_stats["student"], x, True, rng, capture=guided_names)
    t_feats = teacher_features(ctx, teacher_vars, batch, by_teacher)
    terms = [
      hints.pair_loss(p, t_feats[p.teacher][p.hint.name], s_feats[p.guided.name], params.get(f"regressor{i}"), options)
      for i, p in enumerate(pairs)
    ]
    value = sum(terms)
    scalars = {"hint": value}
    if len(pairs) > 1:
      scalars.update({f"hint_{p.guided.name}": t for p, t in zip(pairs, terms)})
    stats = features.merge_prefix(stats, batch_stats["student"], trained)
    return value, (scalars, {"student": stats})

  limit = float(ctx.config.hint.regressor_max_norm)
  limits = {f"regressor{i}": limit for i, p in enumerate(pairs) if p.regressor is not None}
  return ctx.student_stage(
    name, "hint", loss, regressor_limits=limits, init=init, labels=labels, evaluate=False, teacher_layers=by_teacher
  )


def hint_stages(ctx):
  """One `hint` stage (one pair, or several jointly), or `hint1`, `hint2`, … (progressive)."""
  pairs = hints.pairs(ctx.config, ctx.student, ctx.teachers)
  if len(pairs) == 1 or ctx.config.hint.order == "joint":
    return [hint_stage(ctx, "hint", pairs)]
  hints.progressive_order_ok(pairs, ctx.student)
  return [hint_stage(ctx, f"hint{i + 1}", [p]) for i, p in enumerate(pairs)]


METHOD = Method(
  name="fitnets",
  stages=lambda ctx: hint_stages(ctx) + [kd.kd_stage(ctx)],
  teachers="one",
  defaults=defaults,
  uses_hint_pairs=lambda config: True,
)

"""`at`: attention transfer (Zagoruyko & Komodakis 2017), trained with the labels in one stage.

Stage `at`: L = H(y, P_S) + Σ_pairs w·β·mean((Q_S − Q_T)²) over the configured hint pairs
(`hint` or `hints`, every one of kind 'attention'), with Q = vec(mean_c A²)/‖·‖₂ (eq. 2–3;
β = `attention.beta`, 1000 as in the authors' `cifar.py`). The authors' code adds β·mean per group
(`attention.form='authors'`, the default); `attention.form='paper'` halves it (eq. 3's β/2). Maps of
unequal size are compared after average-pooling the larger side's features (`attention.pool=
'features'`, as RepDistiller and mdistiller) or its attention map ('map'); docs/conventions.md
gives every factor. The `attention` section is shared (`fitnets_jax.methods.shared`). The teacher
runs in inference mode. To add attention to a KD or FitNets student instead, set `kd.attention=True`.
"""

from fitnets_jax.errors import check
from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method


def at_stage(ctx):
  from fitnets_jax import hints, losses, teachers
  from fitnets_jax.network import forward

  pairs = hints.pairs(ctx.config, ctx.student, ctx.teachers)
  wrong = [p.key for p in pairs if p.kind != "attention"]
  check(
    not wrong,
    f"method='at' trains on attention pairs, but {', '.join(wrong)} has kind 'regression'; set "
    "hint.kind=attention (or kind in each `hints` entry).",
  )
  by_teacher, guided_names = shared.hint_captures(pairs)
  student, options = ctx.student, hints.loss_options(ctx.config)

  def loss(params, batch_stats, teaching, batch, rng, step):
    x, y = batch["image"], batch["label"]
    logits, s_feats, stats = forward(
      student, params["student"], batch_stats["student"], x, True, rng, capture=guided_names
    )
    t_feats = teachers.features(ctx, teaching, batch, by_teacher)
    attention = sum(
      hints.pair_loss(p, t_feats[p.teacher][p.hint.name], s_feats[p.guided.name], None, options) for p in pairs
    )
    ce = losses.cross_entropy(logits, y)
    return ce + attention, (
      {"ce": ce, "attention": attention, "accuracy": losses.accuracy(logits, y)},
      {"student": stats},
    )

  return ctx.student_stage("at", "student", loss, teacher_layers=by_teacher)


METHOD = Method(name="at", stages=lambda ctx: [at_stage(ctx)], teachers="one", uses_hint_pairs=lambda config: True)

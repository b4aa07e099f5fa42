"""`ab`: knowledge transfer via distillation of activation boundaries (Heo et al., AAAI 2019), two stages
the way FitNets runs: an initialisation stage on the boundaries, then the student on its outputs.

Stage `ab` (configured by `stages.hint`): the student, up to its deepest level, learns where the
teacher's neurons switch on. At the end of every section, the student's pre-ReLU map (through a
connector, 1×1 conv + BN, where the channel counts differ) s and the teacher's pre-ReLU map t meet in
the alternative loss of eq. 8 with margin μ:

  Σ (s + μ)²·[s > −μ and t ≤ 0] + (s − μ)²·[s ≤ μ and t > 0],

summed over positions and channels, divided by the batch, the deepest level weighted 1 and each
shallower one half the next, times 3/1000 (`ab.weight`). Nothing past the deepest level is computed
or trained; the classifier is frozen. Stage `kd` (or `ce`, `stages.student`): the whole student trains
from there on the KD loss (`kd.*`), as the authors' `train_KD`, or with `ab.kd=False` on the labels
alone, as RepDistiller's second stage.

As the authors' CIFAR code (bhheo/AB_distillation `cifar10_AB_distillation.py`,
`models/distillation_module.py`): μ = 1, the 3/1000 and the level weights, connectors N(0, 2 / C_T) with
BN at 1 and 0 only where the channels differ, the teacher in training mode during the initialisation
(`d_net.t_net.train()`: its BN uses the batch's statistics; `ab.teacher_mode`). RepDistiller's `ABLoss`
is the same sum. Levels are each section's pre-activation (the last block's `preact`, RepDistiller's
`preact=True` on its ResNets); the authors' WRN takes each group's output through the next BN.
The connectors are left behind after the first stage.
"""

import ml_collections

from fitnets_jax.errors import check, one_of
from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

TEACHER_MODES = ("train", "inference")


def defaults():
  return {
    "ab": ml_collections.ConfigDict(
      dict(
        weight=3e-3,  # the authors' loss_alter / 1000 * 3 (RepDistiller ABLoss)
        margin=1.0,  # μ of the alternative loss (the authors' margin = 1.0)
        # The levels, shallow to deep; []: each section's pre-activation (its last block's `preact`).
        student_layers=[],
        teacher_layers=[],
        teacher_mode="train",  # train: the teacher's BN with the batch's statistics, as the authors | inference
        kd=True,  # stage 2: KD (kd.*), as the authors' train_KD; False: cross-entropy (RepDistiller)
      )
    )
  }


def alternative_l2(student, teacher, margin):
  """Heo et al. eq. 8 summed over positions and channels, ÷ batch: (s + μ)² where s > −μ but the teacher's
  neuron is off (t ≤ 0), (s − μ)² where s ≤ μ but it is on."""
  import jax
  import jax.numpy as jnp

  s = student.astype(jnp.float32)
  on = jax.lax.stop_gradient(teacher) > 0
  loss = jnp.where(~on & (s > -margin), jnp.square(s + margin), 0.0) + jnp.where(
    on & (s <= margin), jnp.square(s - margin), 0.0
  )
  return jnp.sum(loss) / s.shape[0]


def boundary_loss(student_maps, teacher_maps, connectors, margin):
  """Σ_i 2^−(n−1−i)·alternative_l2(C_i(s_i), t_i): the deepest level weighted 1 (the authors' /2, /4)."""
  total, n = 0.0, len(student_maps)
  for i, (s, t) in enumerate(zip(student_maps, teacher_maps)):
    c = connectors.get(f"connector{i}")
    total = total + alternative_l2(shared.connect(c, s) if c is not None else s, t, margin) / 2 ** (n - 1 - i)
  return total


def levels(config, student, teacher):
  return shared.level_pairs(student, teacher, "ab", config.ab, "AB")


def ab_stage(ctx, cfg):
  import jax

  from fitnets_jax import features, teachers
  from fitnets_jax.network import forward

  student = ctx.student
  pairs = levels(ctx.config, student, ctx.teacher)
  s_levels, t_levels = [s.name for s, _ in pairs], [t.name for _, t in pairs]
  for s, t in pairs:
    check(
      len(s.shape) == 3 and s.shape[:2] == t.shape[:2],
      f"AB compares maps position by position, but the student's {s.name!r} is {s.shape} and the teacher's "
      f"{t.name!r} is {t.shape}; pick levels of the same size (ab.student_layers, ab.teacher_layers).",
    )
  deepest = max(s_levels, key=lambda name: [l.name for l in student.layers].index(name))
  trained = features.prefix_paths(student.layers, deepest)
  train_teacher = cfg.teacher_mode == "train"

  def init(rng, carry):
    params, stats = shared.fresh_or_carried(student, rng, carry)
    connectors = {
      f"connector{i}": shared.connector_init(jax.random.fold_in(rng, i + 1), s.shape[-1], t.shape[-1])
      for i, (s, t) in enumerate(pairs)
      if s.shape[-1] != t.shape[-1]
    }
    return {"student": params, "distiller": connectors}, {"student": stats}

  def labels(params):
    return {
      "student": features.prefix_labels(params["student"], trained),
      "distiller": jax.tree.map(lambda _: "train", params["distiller"]),
    }

  def loss(params, batch_stats, teaching, batch, rng, step):
    _, s_feats, stats = forward(
      student, params["student"], batch_stats["student"], batch["image"], True, rng, capture=tuple(s_levels)
    )
    t_rng = jax.random.fold_in(rng, 1)
    t_feats = teachers.features(ctx, teaching, batch, {"teacher": tuple(t_levels)}, train_teacher, t_rng)["teacher"]
    s_maps, t_maps = [s_feats[n] for n in s_levels], [t_feats[n] for n in t_levels]
    value = cfg.weight * boundary_loss(s_maps, t_maps, params["distiller"], cfg.margin)
    stats = features.merge_prefix(stats, batch_stats["student"], trained)
    return value, ({"ab": value}, {"student": stats})

  cached = {} if train_teacher else {"teacher": tuple(t_levels)}  # the cache holds inference-mode outputs
  return ctx.student_stage("ab", "hint", loss, init=init, labels=labels, evaluate=False, teacher_layers=cached)


def stages(ctx):
  cfg = ctx.config.ab
  one_of("ab.teacher_mode", cfg.teacher_mode, TEACHER_MODES)
  check(cfg.weight > 0, f"ab.weight={cfg.weight!r} must be > 0.")
  check(cfg.margin > 0, f"ab.margin={cfg.margin!r} must be > 0 (the authors' 1).")
  return [ab_stage(ctx, cfg), shared.whole_student_stage(ctx, cfg.kd)]


METHOD = Method(
  name="ab",
  stages=stages,
  teachers="one",
  defaults=defaults,
  uses_hint_pairs=lambda config: bool(config.ab.kd and config.kd.attention),
  first_stages=("ab",),
  levels=levels,
)

"""`fsp`: the flow of solution procedure (Yim et al. 2017, "A Gift from Knowledge Distillation").

Stage `fsp`: the student, up to the output of its last section, minimises
(1/N) Σ_x Σ_i λ_i ‖G_i^T(x) − G_i^S(x)‖² (eq. 2), where G_i is the FSP matrix between section i's
input and output (eq. 1; the larger map max-pooled to the smaller, float32). The teacher is
frozen; the classifier is frozen and not computed. Teacher and student need the same number of
sections and the same channel counts at each section's input and output.
Stage `ce`: the whole student trains on cross-entropy from the stage-1 weights — or on the KD
loss with `fsp.kd=True` (stage `kd`).
"""

import ml_collections

from fitnets_jax.errors import check
from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method


def defaults():
  return {
    "fsp": ml_collections.ConfigDict(
      dict(
        weight=1.0,  # λ_i, equal for every section (Yim et al.)
        kd=False,  # stage 2: the KD loss (kd.*) instead of plain cross-entropy
      )
    )
  }


def section_points(net, role):
  """[(input Layer, output Layer)] of every section of `net`."""
  check(
    net.sections,
    f"{role}.model={net.name!r} has no sections; FSP compares section inputs and outputs, "
    "so use a model with named sections (resnetD, resnetDxW, wrn_D_K, digits_resnetD).",
  )
  by_name = {l.name: l for l in net.layers}
  return [(by_name[a], by_name[b]) for a, b in net.sections]


def check_pairable(teacher_points, student_points, teacher, student):
  check(
    len(teacher_points) == len(student_points),
    f"FSP pairs sections one to one, but teacher.model={teacher.name!r} has {len(teacher_points)} sections and "
    f"student.model={student.name!r} has {len(student_points)}.",
  )
  for i, ((t_in, t_out), (s_in, s_out)) in enumerate(zip(teacher_points, student_points), start=1):
    t_shape, s_shape = (t_in.shape[-1], t_out.shape[-1]), (s_in.shape[-1], s_out.shape[-1])
    check(
      t_shape == s_shape,
      f"FSP section {i} ({s_in.name} → {s_out.name}) gives {s_shape[0]}×{s_shape[1]} matrices in the student "
      f"but {t_shape[0]}×{t_shape[1]} in the teacher ({t_in.name} → {t_out.name}); FSP needs equal channel "
      "counts at each section's input and output. Use models of the same width (e.g. resnet26 → resnet8).",
    )
    for a, b in ((t_in, t_out), (s_in, s_out)):
      big, small = (a, b) if a.shape[0] >= b.shape[0] else (b, a)
      check(
        big.shape[0] % small.shape[0] == 0 and big.shape[1] % small.shape[1] == 0,
        f"FSP section {i}: {big.name!r} ({big.shape[0]}×{big.shape[1]}) cannot be max-pooled onto "
        f"{small.name!r} ({small.shape[0]}×{small.shape[1]}); the sizes must divide.",
      )


def fsp_stage(ctx):
  from fitnets_jax import features, losses, teachers
  from fitnets_jax.network import forward

  student, teacher = ctx.student, ctx.teacher
  s_points, t_points = section_points(student, "student"), section_points(teacher, "teacher")
  check_pairable(t_points, s_points, teacher, student)
  check(ctx.config.fsp.weight > 0, f"fsp.weight={ctx.config.fsp.weight!r} must be > 0.")
  weights = [ctx.config.fsp.weight] * len(s_points)
  s_names = tuple(dict.fromkeys(l.name for point in s_points for l in point))
  t_names = tuple(dict.fromkeys(l.name for point in t_points for l in point))
  trained = features.prefix_paths(student.layers, s_points[-1][1].name)

  def labels(params):
    return {"student": features.prefix_labels(params["student"], trained)}

  def loss(params, batch_stats, teaching, batch, rng, step):
    x = batch["image"]
    _, s_feats, stats = forward(student, params["student"], batch_stats["student"], x, True, rng, capture=s_names)
    t_feats = teachers.features(ctx, teaching, batch, {"teacher": t_names})["teacher"]
    g_s = [losses.fsp_matrix(s_feats[a.name], s_feats[b.name]) for a, b in s_points]
    g_t = [losses.fsp_matrix(t_feats[a.name], t_feats[b.name]) for a, b in t_points]
    value = losses.fsp_loss(g_t, g_s, weights)
    stats = features.merge_prefix(stats, batch_stats["student"], trained)
    return value, ({"fsp": value}, {"student": stats})

  return ctx.student_stage("fsp", "hint", loss, labels=labels, evaluate=False, teacher_layers={"teacher": t_names})


def stages(ctx):
  return [fsp_stage(ctx), shared.whole_student_stage(ctx, ctx.config.fsp.kd)]


METHOD = Method(
  name="fsp",
  stages=stages,
  teachers="one",
  defaults=defaults,
  uses_hint_pairs=lambda config: bool(config.fsp.kd and config.kd.attention),
  first_stages=("fsp",),
)

"""`scratch`: the student trained on labels only — the baseline FitNets compares against."""

from fitnets_jax.methods.base import supervised_stage

USES_TEACHER = False


def stages(ctx):
  return [supervised_stage(ctx, "scratch", ctx.student, "student", trains="student")]

"""`scratch`: the student trained on labels only — the baseline FitNets compares against."""

from fitnets_jax.methods.base import Method, supervised_stage

METHOD = Method(
  name="scratch", stages=lambda ctx: [supervised_stage(ctx, "scratch", ctx.student, "student", "student")]
)

"""`scratch`: the student trained on labels only — the baseline FitNets compares against."""

from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

METHOD = Method(
  name="scratch", stages=lambda ctx: [shared.supervised_stage(ctx, "scratch", ctx.student, "student", "student")]
)

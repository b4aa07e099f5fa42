"""`multi_teacher`: KD from several teachers (docs/methods.md, *Multi-teacher KD*).

The soft target is the μ-weighted average of the teachers' softened outputs,
q^τ = Σ_i μ_i·p_i^τ / Σ_i μ_i, used in the configured KD loss (`kd.loss`, λ schedule, τ). Teachers
come from `config.teachers` (each its own architecture, and a checkpoint or a training recipe).
Weights (`multi_teacher.weights`): `uniform`; `explicit` (`multi_teacher.mu`); or `accuracy` —
each teacher's accuracy on the validation split (`dataset.validation_examples` held out of
training), measured once the teachers are ready and recorded in summary.json. With
`multi_teacher.hint_stage=True` the FitNets hint stage(s) (`fitnets_jax.methods.shared`) run
first; each hint pair names its teacher by index (`teacher` in a `hints` entry, 0 by default), as
do the attention pairs of `kd.attention`.
"""

import ml_collections

from fitnets_jax.errors import check, one_of
from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

WEIGHTS = ("uniform", "explicit", "accuracy")


def defaults():
  return {
    # A list of dicts, each {model, checkpoint, dropout, epochs, steps, optimizer}; the training recipe
    # defaults to stages.teacher (optimizer: overrides of its keys).
    "teachers": [],
    "multi_teacher": ml_collections.ConfigDict(
      dict(
        weights="uniform",  # uniform | explicit (mu) | accuracy (validation accuracy, normalised)
        mu=[],  # explicit: one weight ≥ 0 per teacher, not all zero
        hint_stage=False,  # run the FitNets hint stage(s) first (pairs name their teacher)
      )
    ),
  }


def check_weights(config, num_teachers):
  """Validates `multi_teacher` at setup (before any teacher is trained)."""
  cfg = config.multi_teacher
  one_of("multi_teacher.weights", cfg.weights, WEIGHTS)
  if cfg.weights == "explicit":
    mu = list(cfg.mu)
    check(len(mu) == num_teachers, f"multi_teacher.mu={mu} must hold one weight per teacher ({num_teachers}).")
    check(
      all(isinstance(m, (int, float)) and m >= 0 for m in mu) and sum(mu) > 0,
      f"multi_teacher.mu={mu}: weights must be ≥ 0 and not all zero (they are normalised to sum to 1).",
    )
  if cfg.weights == "accuracy":
    check(
      config.dataset.validation_examples > 0,
      "multi_teacher.weights='accuracy' weighs teachers by their validation accuracy, which needs a validation "
      "split held out of training: set dataset.validation_examples (e.g. 200).",
    )


def teacher_weights(config, roles, validation_accuracy):
  """(μ normalised to sum 1, {role: validation accuracy or None}); `validation_accuracy(role)` measures one."""
  import numpy as np

  cfg = config.multi_teacher
  accuracies = {r: None for r in roles}
  if cfg.weights == "uniform":
    mu = np.ones(len(roles))
  elif cfg.weights == "explicit":
    mu = np.asarray(cfg.mu, np.float64)
  else:
    accuracies = {r: validation_accuracy(r) for r in roles}
    mu = np.asarray([accuracies[r] for r in roles], np.float64)
    check(
      mu.sum() > 0,
      f"multi_teacher.weights='accuracy': every teacher scored 0 on the validation split "
      f"({accuracies}); train them longer or use weights='uniform'.",
    )
  return (mu / mu.sum()).tolist(), accuracies


def stages(ctx):
  check_weights(ctx.config, len(ctx.teachers))
  hint_stages = shared.hint_stages(ctx) if ctx.config.multi_teacher.hint_stage else []
  return hint_stages + [shared.kd_stage(ctx)]


METHOD = Method(
  name="multi_teacher",
  stages=stages,
  teachers="list",
  teacher_weights=teacher_weights,
  defaults=defaults,
  uses_hint_pairs=lambda config: bool(config.multi_teacher.hint_stage or config.kd.attention),
)

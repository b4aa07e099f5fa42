"""Hint pairs: a teacher layer that guides a student layer, by regression or by attention.

`config.hints` lists pairs (teacher_layer, student_layer, kind, weight, teacher); when it is
empty the single pair in `config.hint` is used, so one-hint FitNets configs keep working.
- kind `regression` (FitNets, Romero et al. 2015 eq. 3): ½(u_h − r(v_g))² through a
  convolutional regressor r sized k = N_g − N_h + 1, reduced as `hint.reduction` says (the authors'
  `HintCost` by default: `losses.hint_loss`).
- kind `attention` (Zagoruyko & Komodakis 2017): β·mean((Q_S − Q_T)²) as the authors' code
  (`attention.form`); no regressor, channel counts may differ; spatial sizes must match or one must
  be an integer multiple of the other (the larger side is average-pooled, `attention.pool`).
Everything here is checked at setup and names the offending pair.
"""

import dataclasses
from typing import Any, Optional

import jax

from fitnets_jax import features, losses
from fitnets_jax.errors import FitnetsError, check, one_of
from fitnets_jax.models.regressor import Regressor

KINDS = ("regression", "attention")
ORDERS = ("progressive", "joint")
ENTRY_KEYS = ("teacher_layer", "student_layer", "kind", "weight", "teacher")


@dataclasses.dataclass(frozen=True)
class LossOptions:
  """How every pair's loss is reduced: `hint.reduction`, `attention.beta/form/pool`."""

  reduction: str = "authors"
  beta: float = 1000.0
  attention_form: str = "authors"
  attention_pool: str = "features"


def loss_options(config):
  """The pairs' `LossOptions` from the config, checked."""
  check(config.attention.beta > 0, f"attention.beta={config.attention.beta!r} must be > 0.")
  return LossOptions(
    one_of("hint.reduction", config.hint.reduction, losses.HINT_REDUCTIONS),
    float(config.attention.beta),
    one_of("attention.form", config.attention.form, losses.ATTENTION_FORMS),
    one_of("attention.pool", config.attention.pool, losses.ATTENTION_POOLS),
  )


@dataclasses.dataclass(frozen=True)
class HintPair:
  key: str  # "hint" or "hints[i]": where it came from, for messages
  teacher: str  # role of the teacher network ("teacher", "teacher2", …)
  hint: features.Layer  # the teacher's layer
  guided: features.Layer  # the student's layer
  kind: str
  weight: float
  regressor: Optional[Any] = None

  @property
  def name(self):
    return f"{self.teacher}.{self.hint.name}→{self.guided.name}"


def _entries(config):
  if len(config.hints):
    return [(f"hints[{i}]", dict(entry)) for i, entry in enumerate(config.hints)]
  return [("hint", {k: config.hint[k] for k in ("teacher_layer", "student_layer", "kind", "weight")})]


def _attention_size_ok(a, b):
  (ha, wa), (hb, wb) = a[:2], b[:2]
  big, small = ((ha, wa), (hb, wb)) if ha >= hb else ((hb, wb), (ha, wa))
  return big[0] % small[0] == 0 and big[1] % small[1] == 0 and big[0] // small[0] == big[1] // small[1]


def pairs(config, student, teachers, maps_for=None):
  """The configured hint pairs, validated; `teachers` maps role → Network, in config order.

  `maps_for`: the name of a method that compares the pairs' feature maps with its own loss (NST, VID):
  each pair's `kind` is not read, no regressor is built, and the maps must pass attention's size rule.
  """
  roles = list(teachers)
  result = []
  for key, entry in _entries(config):
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    check(not unknown, f"{key} has unknown keys {unknown}; a hint pair takes {', '.join(ENTRY_KEYS)}.")
    for needed in ("teacher_layer", "student_layer"):
      check(
        isinstance(entry.get(needed), str),
        f"{key}.{needed}={entry.get(needed)!r} must be a layer name "
        "(python -m fitnets_jax.tools.layers --config … lists them).",
      )
    kind = maps_for or one_of(f"{key}.kind", entry.get("kind", "regression"), KINDS)
    weight = entry.get("weight", 1.0)
    check(isinstance(weight, (int, float)) and weight > 0, f"{key}.weight={weight!r} must be a number > 0.")
    index = entry.get("teacher", 0)
    check(
      isinstance(index, int) and 0 <= index < len(roles),
      f"{key}.teacher={index!r} must index the {len(roles)} configured teacher(s): 0..{len(roles) - 1}.",
    )
    teacher = teachers[roles[index]]
    hint = features.find_layer(teacher.layers, entry["teacher_layer"], f"{key}.teacher_layer", teacher.name)
    guided = features.find_layer(student.layers, entry["student_layer"], f"{key}.student_layer", student.name)
    regressor = None
    if kind == "regression" and not maps_for:
      regressor = Regressor(
        hint.shape[-1],
        features.regressor_kernel(guided, hint),
        hint.nonlinearity,
        hint.pieces,
        config.hint.regressor_init,
        None if hint.tied_bias else hint.shape[:2],
      )
    else:
      check(
        len(hint.shape) == 3 and len(guided.shape) == 3,
        f"{key}: {maps_for or 'attention transfer'} needs two feature maps (H, W, C); {hint.name!r} gives "
        f"{hint.shape} and {guided.name!r} gives {guided.shape}.",
      )
      check(
        _attention_size_ok(hint.shape, guided.shape),
        f"{key}: {'the' if maps_for else 'attention'} maps of {entry['teacher_layer']!r} "
        f"({hint.shape[0]}×{hint.shape[1]}) and "
        f"{entry['student_layer']!r} ({guided.shape[0]}×{guided.shape[1]}) cannot be compared: the sizes must "
        "be equal, or one an integer multiple of the other (the larger is average-pooled). Pick layers at "
        "the same resolution.",
      )
    result.append(HintPair(key, roles[index], hint, guided, kind, float(weight), regressor))
  one_of("hint.order", config.hint.order, ORDERS)
  loss_options(config)
  check(
    config.hint.regressor_max_norm >= 0,
    f"hint.regressor_max_norm={config.hint.regressor_max_norm!r} must be ≥ 0 (0: no max-norm on the regressors).",
  )
  return result


def progressive_order_ok(pairs, student):
  """Progressive training needs guided layers listed from shallow to deep."""
  names = [l.name for l in student.layers]
  depth = [names.index(p.guided.name) for p in pairs]
  if depth != sorted(depth) or len(set(depth)) != len(depth):
    raise FitnetsError(
      "hint.order='progressive' trains one phase per pair, each up to its guided layer, so `hints` must "
      f"list distinct student layers from shallow to deep; got {[p.guided.name for p in pairs]}. Reorder them "
      "or set hint.order='joint'."
    )


def pair_loss(pair, teacher_feature, student_feature, regressor_params, options):
  """This pair's weighted loss (see the module docstring); `options` a `LossOptions`."""
  if pair.kind == "regression":
    # The regressor computes in the guided feature's dtype (bf16 under config.dtype=bfloat16).
    params = jax.tree.map(lambda p: p.astype(student_feature.dtype), regressor_params)
    regressed = pair.regressor.apply({"params": params}, student_feature)
    return pair.weight * losses.hint_loss(teacher_feature, regressed, options.reduction)
  return pair.weight * losses.attention_loss(
    teacher_feature, student_feature, options.beta, options.attention_form, options.attention_pool
  )

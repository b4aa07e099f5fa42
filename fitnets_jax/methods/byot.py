"""`byot`: Be Your Own Teacher (Zhang et al., ICCV 2019) — self-distillation through early exits.

The student's sections each end in an exit. The deepest exit is the network's own classifier;
each shallower section gets an `ExitHead` (a depthwise-separable bottleneck to the deepest
section's channels and resolution, average pooling, a classifier). One stage trains the network
and its heads on `losses.self_distillation_loss`: per shallow exit (1−α)·CE + α·KL(q_C^τ ‖ q_i^τ)
+ λ·d(A_i(F_i), F_C), plus CE for the deepest, whose outputs and pooled features are the targets.

Defaults follow the authors' released code (pytorch-self-distillation-final, train.py and
resnet.py): α = 0.3, τ = 3, λ = 0.03; d one L2 norm over the whole batch (`torch.dist`); A_i a
learned linear adapter (`byot.adapter`); no feature term for the shallow exit just before the
deepest (`byot.feature_on_last_shallow=False`); and an attention mask on each section output
before its exit's bottleneck (`byot.attention`). The paper's form (Zhang et al. 2019, eq. 3):
`byot.feature=squared byot.adapter=False byot.attention=False byot.feature_on_last_shallow=True`.
`byot.feature=off` drops the term.

Evaluation: every exit's accuracy and the ensemble's (mean of the exits' logits). summary.json
lists each exit with the parameters and MACs needed to classify there (the network up to that
section plus its head): the accuracy/cost trade-off of exiting early. The stage hands on the
plain network (the deepest exit); the heads stay in the stage's checkpoint.
"""

import ml_collections

from fitnets_jax.errors import check, one_of
from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

FEATURE_TERMS = ("l2", "squared", "off")


def defaults():
  return {
    "byot": ml_collections.ConfigDict(
      dict(
        alpha=0.3,  # (1−α)·CE + α·KL(q_C^τ ‖ q_i^τ) per shallow exit (authors' code: 0.3)
        temperature=3.0,  # authors' code: 3
        feature="l2",  # d(F_i, F_C): l2 (code: one norm over the batch) | squared (paper, per example) | off
        feature_weight=0.03,  # λ (authors' code: 0.03)
        adapter=True,  # code: a learned linear layer A_i on F_i before d | False: F_i itself (paper)
        feature_on_last_shallow=False,  # code skips d for the shallow exit just before the deepest
        attention=True,  # code: sigmoid attention mask before each exit's bottleneck | False (paper)
        attention_norm=True,  # BN + ReLU after the mask's SepConv (the authors' resnet.py) | False (its rev. 307141b)
      )
    )
  }


def exit_blocks(shapes, outputs, i):
  """(channels, stride) of the separable blocks that take section output `outputs[i]` to the
  deepest section's shape: one block per later section, with that section's channels and
  resolution."""
  blocks = []
  for before, after in zip(outputs[i:-1], outputs[i + 1 :]):
    ratio = shapes[before][0] // shapes[after][0]
    check(
      ratio >= 1 and shapes[before][0] == ratio * shapes[after][0] and shapes[before][1] == ratio * shapes[after][1],
      f"BYOT needs each section to shrink the map by an integer factor; {before} {shapes[before]} → "
      f"{after} {shapes[after]} does not.",
    )
    blocks.append((shapes[after][-1], ratio))
  return tuple(blocks)


def section_outputs(student):
  """The output layer of each section, shallow → deep: where the exits are."""
  return [output for _, output in student.sections]


def exit_heads(student, num_classes, attention=True, attention_norm=True):
  """{"exit1": Network, …}: the head after each section of `student` but the last."""
  from fitnets_jax.models.exits import ExitHead
  from fitnets_jax.network import network

  outputs = section_outputs(student)
  shapes = {l.name: l.shape for l in student.layers}
  return {
    f"exit{i + 1}": network(
      f"exit head after {name}",
      ExitHead(exit_blocks(shapes, outputs, i), num_classes, attention, attention_norm),
      shapes[name],
      student.dtype,
    )
    for i, name in enumerate(outputs[:-1])
  }


def feature_exits(cfg, shallow):
  """Indices of the shallow exits (of `shallow`) that get the feature term."""
  if cfg.feature == "off" or not cfg.feature_weight:
    return []
  return list(range(shallow if cfg.feature_on_last_shallow else shallow - 1))


def cost_to_exit(student, heads, outputs, i):
  """(params, MACs per example) of classifying at exit i: the network up to section i plus its head."""
  if i == len(outputs) - 1:
    return student.params, student.macs
  top = {l.name: l for l in student.layers if len(l.path) == 1}
  prefix = [top[name] for name in [student.sections[0][0]] + outputs[: i + 1]]  # stem, section1 … section i
  head = heads[f"exit{i + 1}"]
  return sum(l.params for l in prefix) + head.params, sum(l.macs for l in prefix) + head.macs


def byot_stage(ctx):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from fitnets_jax import losses
  from fitnets_jax.network import forward

  cfg, student = ctx.config.byot, ctx.student
  check(
    len(student.sections) >= 2,
    f"method='byot' puts an exit after each section of the student, but student.model={student.name!r} has no "
    "named sections; use a ResNet (e.g. resnet18, resnet32, digits_resnet18, digits_resnet10).",
  )
  check(0.0 <= cfg.alpha <= 1.0, f"byot.alpha={cfg.alpha!r} must be in [0, 1].")
  check(cfg.temperature > 0, f"byot.temperature={cfg.temperature!r} must be > 0.")
  one_of("byot.feature", cfg.feature, FEATURE_TERMS)
  check(cfg.feature_weight >= 0, f"byot.feature_weight={cfg.feature_weight!r} must be ≥ 0.")
  outputs = section_outputs(student)
  heads = exit_heads(student, ctx.num_classes, cfg.attention, cfg.attention_norm)
  distilled = feature_exits(cfg, len(heads))
  width = dict((l.name, l.shape) for l in student.layers)[outputs[-1]][-1]
  adapter = nn.Dense(width)  # A_i: F_i → the deepest feature's width (nn.Linear in the authors' code)
  adapters = [f"adapter{i + 1}" for i in distilled] if cfg.adapter else []

  def init(rng, carry):
    params, stats = shared.fresh_or_carried(student, rng, carry)
    fresh = {name: head.init(jax.random.fold_in(rng, i + 1)) for i, (name, head) in enumerate(heads.items())}
    fresh.update(
      {
        name: (adapter.init(jax.random.fold_in(rng, 100 + i), jnp.zeros((1, width)))["params"], {})
        for i, name in enumerate(adapters)
      }
    )
    return (
      {"student": params, **{n: p for n, (p, _) in fresh.items()}},
      {"student": stats, **{n: s for n, (_, s) in fresh.items()}},
    )

  def distilled_features(params, all_features):
    """Each exit's feature for the feature term: A_i(F_i) (or F_i) where it applies, else None; F_C last."""
    shallow = [
      (adapter.apply({"params": params[f"adapter{i + 1}"]}, f) if cfg.adapter else f) if i in distilled else None
      for i, f in enumerate(all_features[:-1])
    ]
    return shallow + all_features[-1:]

  def exits(params, batch_stats, x, train, rng=None):
    """([logits per exit, shallow → deep], [pooled feature per exit], batch_stats after the call)."""
    logits, feats, stats = forward(
      student, params["student"], batch_stats["student"], x, train, rng, capture=tuple(outputs)
    )
    all_logits, all_features, new_stats = [], [], {"student": stats}
    for name, output in zip(heads, outputs):
      (z, f), _, new_stats[name] = forward(heads[name], params[name], batch_stats[name], feats[output], train)
      all_logits.append(z)
      all_features.append(f)
    return all_logits + [logits], all_features + [jnp.mean(feats[outputs[-1]], axis=(1, 2))], new_stats

  def loss(params, batch_stats, teaching, batch, rng, step):
    y = batch["label"]
    all_logits, all_features, stats = exits(params, batch_stats, batch["image"], True, rng)
    stats.update({name: {} for name in adapters})
    features = distilled_features(params, all_features)
    total, parts = losses.self_distillation_loss(
      all_logits, features, y, cfg.alpha, cfg.temperature, cfg.feature_weight, cfg.feature
    )
    parts.update({f"exit{i + 1}_accuracy": losses.accuracy(z, y) for i, z in enumerate(all_logits)})
    parts["accuracy"] = parts[f"exit{len(all_logits)}_accuracy"]
    return total, (parts, stats)

  def evaluation(state_vars, images, labels):
    all_logits, _, _ = exits(state_vars["params"], state_vars["batch_stats"], images, False)
    values = {f"exit{i + 1}_accuracy": jnp.argmax(z, -1) == labels for i, z in enumerate(all_logits)}
    ensemble = jnp.mean(jnp.stack([z.astype(jnp.float32) for z in all_logits]), axis=0)
    return {
      "accuracy": values[f"exit{len(all_logits)}_accuracy"],
      **values,
      "ensemble_accuracy": jnp.argmax(ensemble, -1) == labels,
    }

  def summarize(test):
    rows = []
    for i, output in enumerate(outputs):
      params, macs = cost_to_exit(student, heads, outputs, i)
      rows.append(
        {
          "exit": f"exit{i + 1}",
          "after": output,
          "params": params,
          "macs": macs,
          "test_accuracy": test.get(f"exit{i + 1}_accuracy"),
        }
      )
    return {"exits": rows, "ensemble_accuracy": test.get("ensemble_accuracy")}

  return ctx.student_stage(
    "byot",
    "student",
    loss,
    init=init,
    uses_teacher=False,
    evaluation=evaluation,
    summarize=summarize,
    heads={name: (after, head.module) for (name, head), after in zip(heads.items(), outputs)},
  )


def report_heads(config, student, num_classes):
  """The exit heads the layers report lists (none for a student without sections: setup refuses it)."""
  byot = config.byot
  return exit_heads(student, num_classes, byot.attention, byot.attention_norm) if len(student.sections) > 1 else {}


METHOD = Method(name="byot", stages=lambda ctx: [byot_stage(ctx)], defaults=defaults, extra_networks=report_heads)

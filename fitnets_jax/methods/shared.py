"""What the methods share: the stage records, the config sections several methods read, and the stages
several methods run (supervised, hint, KD).

Stages: each names the network it trains, its length, its optimizer, which parameters it trains (the
rest is frozen), and a pure loss. The trainer (`fitnets_jax.train`) runs any list of stages; a
method never touches data. Sections: `kd` (read by kd, fitnets, fsp and multi_teacher), `hint` and
`hints` (the hint pairs: fitnets, at, multi_teacher, kd.attention) and `attention` (at, and every
attention pair).

Like every module of this folder it imports JAX only inside the functions that build stages, so that
loading a config (which reads `defaults()`) stays JAX-free (`fitnets_jax.methods.registry`).
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import ml_collections

from fitnets_jax.errors import check, one_of

KD_LOSSES = ("fitnets", "hinton")


def defaults():
  """The sections several methods read."""
  return {
    "kd": ml_collections.ConfigDict(
      dict(
        loss="fitnets",  # fitnets: H(y,P_S) + λ·H(P_T^τ,P_S^τ) | hinton: α·τ²·KL + (1−α)·CE
        temperature=3.0,
        lambda_start=4.0,  # fitnets: λ annealed linearly start → end
        lambda_end=1.0,
        lambda_decay_begin_epochs=0.0,
        lambda_decay_epochs=-1.0,  # -1: until the end of the stage
        alpha=0.9,  # hinton only
        attention=False,  # add the attention pairs' loss (hint kind 'attention') to the KD loss
      )
    ),
    "hint": ml_collections.ConfigDict(
      dict(
        teacher_layer="conv2",  # hint layer (python -m fitnets_jax.tools.layers lists them)
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
    "attention": ml_collections.ConfigDict(
      dict(
        beta=1000.0,  # β of the attention-transfer loss β·mean((Q_S − Q_T)²) (the authors' cifar.py)
        form="authors",  # authors: β·mean per pair (their code) | paper: β/2·mean (eq. 3's ½)
        pool="features",  # unequal sizes: average-pool the larger features (RepDistiller, mdistiller) | map
      )
    ),
  }


def network_entry(entry, key, allowed, stage):
  """A list entry naming a network ({"model": …, "dropout": …, …}, e.g. `teachers[1]`), checked,
  and the stage config it trains with: a copy of `stage` with the entry's epochs, steps and
  optimizer overrides. Returns (entry as a dict, stage config)."""
  check(
    isinstance(entry, (dict, ml_collections.ConfigDict)),
    f"{key}={entry!r} must be a dict with keys {', '.join(allowed)} (model required).",
  )
  entry = dict(entry)
  unknown = sorted(set(entry) - set(allowed))
  check(not unknown, f"{key} has unknown keys {unknown}; valid: {', '.join(allowed)}.")
  check(isinstance(entry.get("model"), str), f"{key}.model={entry.get('model')!r} must name a model.")
  for field, kind in (("epochs", (int, float)), ("steps", int), ("dropout", (int, float))):
    value = entry.get(field, 0)
    check(
      isinstance(value, kind) and not isinstance(value, bool),
      f"{key}.{field}={value!r} has the wrong type; it must be a number.",
    )
  stage = ml_collections.ConfigDict(stage.to_dict())
  stage.epochs = float(entry.get("epochs", stage.epochs))
  stage.steps = int(entry.get("steps", stage.steps))
  overrides = entry.get("optimizer", {})
  check(
    isinstance(overrides, (dict, ml_collections.ConfigDict)),
    f"{key}.optimizer={overrides!r} must be a dict of optimizer keys ({', '.join(stage.optimizer)}).",
  )
  for field, value in dict(overrides).items():
    check(
      field in stage.optimizer, f"{key}.optimizer.{field} is not an optimizer key; valid: {', '.join(stage.optimizer)}."
    )
    stage.optimizer[field] = value
  return entry, stage


class Update(NamedTuple):
  """What one training step of a stage gives back (a stage's own `update` returns one)."""

  params: Any
  batch_stats: Any
  opt_state: Any
  loss: Any
  metrics: dict  # scalars logged as the step's means
  grads: Any  # checked for NaN/Inf: a non-finite step is not applied


@dataclasses.dataclass(kw_only=True)
class Stage:
  """One stage of a method: the trainer runs the stages in order, each to its end.

  `init(rng, carry)` gives (params, batch_stats) trees keyed by network role; `carry` is the previous
  stage's trained (params, batch_stats), or None. `loss(params, batch_stats, teaching, batch, rng,
  step)` gives (loss, (metrics, new batch_stats)), the form `jax.value_and_grad(has_aux=True)` takes.
  """

  name: str
  trains: str  # the role ("teacher", "student", …) whose variables this stage hands on
  num_steps: int
  tx: Any  # optax transformation for the leaves labelled 'train'
  init: Callable
  loss: Optional[Callable] = None
  labels: Optional[Callable] = None  # params -> tree of 'train' / 'freeze'; None: all 'train'
  uses_teacher: bool = False
  evaluate: bool = True  # evaluate the trained network on the test split at the end
  # Stages that train several networks together (mutual learning) or with extra heads (BYOT):
  # update — (params, batch_stats, opt_state, teaching, batch, rng, step) -> Update replaces "one
  #   gradient step of `loss` with `tx`";
  # evaluation — ({"params", "batch_stats"} of the stage, images, labels) -> {metric: per-example
  #   values}, with an "accuracy" entry, replaces the trained network's accuracy on the test split;
  # summarize — {metric: test value} -> entries added to summary.json.
  update: Optional[Callable] = None
  learning_rate: Optional[Callable] = None  # stage step -> the rate, logged as `learning_rate`; None: not logged
  evaluation: Optional[Callable] = None
  summarize: Optional[Callable] = None
  # {role: layers of it the loss reads in inference mode}: what the teacher cache may hold.
  teacher_layers: dict = dataclasses.field(default_factory=dict)
  # What a run saves when this stage is its last (`fitnets_jax.saved`): networks — {role: Network} it
  # trains (empty: the student as `trains`); heads — {name: (the layer it follows, its module)} saved
  # with the `trains` network (BYOT's exits).
  networks: dict = dataclasses.field(default_factory=dict)
  heads: dict = dataclasses.field(default_factory=dict)

  def output(self, params, batch_stats):
    """(params, batch_stats) of the trained network, handed to the next stage."""
    return params[self.trains], batch_stats[self.trains]

  def param_labels(self, params):
    import jax

    return self.labels(params) if self.labels else jax.tree.map(lambda _: "train", params)


@dataclasses.dataclass
class Context:
  """What methods may read: the config, the networks, and the epoch length.

  `teachers` maps a role to its Network: {"teacher": …} for one teacher, {"teacher1": …,
  "teacher2": …} for `config.teachers`. Inside a step the teachers' variables arrive as
  {role: {"params", "batch_stats"}, "mu": weights}.
  """

  config: Any
  student: Any  # fitnets_jax.network.Network
  teachers: dict
  steps_per_epoch: int
  stage_configs: dict = dataclasses.field(default_factory=dict)  # role → its training stage config
  num_classes: int = 0
  # () -> the label of every training example by its id (int32, all hosts'), read at setup by a
  # method that samples examples by class (CRD's negatives); a batch carries its ids as "index".
  train_labels: Optional[Callable] = None

  @property
  def teacher(self):
    return next(iter(self.teachers.values()), None)

  def stage_config(self, stage_key):
    return self.stage_configs.get(stage_key) or self.config.stages[stage_key]

  def steps(self, stage_key):
    """A stage's length in steps: `stages.<key>.steps` if > 0, else epochs × steps per epoch."""
    cfg = self.stage_config(stage_key)
    check(
      cfg.steps >= 0 and cfg.epochs >= 0,
      f"stages.{stage_key}: steps={cfg.steps!r} and epochs={cfg.epochs!r} must be ≥ 0.",
    )
    n = cfg.steps or int(round(cfg.epochs * self.steps_per_epoch))
    check(n > 0, f"stages.{stage_key} would run 0 steps; set stages.{stage_key}.epochs or .steps > 0.")
    check(
      n < 2**31,
      f"stages.{stage_key} would run {n:.3g} steps (steps={cfg.steps!r}, epochs={cfg.epochs!r}); a stage's steps "
      "are counted in int32, so at most 2147483647.",
    )
    return n

  def optimizer(self, stage_key, num_steps, regressor_limits=None):
    """`stages.<stage_key>.optimizer` as an optax transformation (`regressor_limits`: `optim.optimizer`)."""
    from fitnets_jax import optim

    key = f"stages.{stage_key}.optimizer"
    return optim.optimizer(
      self.stage_config(stage_key).optimizer, num_steps, self.steps_per_epoch, key, regressor_limits
    )

  def learning_rate(self, stage_key, num_steps):
    """`stages.<stage_key>.optimizer`'s learning-rate schedule (a function of the stage step)."""
    from fitnets_jax import optim

    key = f"stages.{stage_key}.optimizer"
    return optim.learning_rate(self.stage_config(stage_key).optimizer, num_steps, self.steps_per_epoch, key)

  def student_stage(self, name, stage_key, loss, regressor_limits=None, **fields):
    """A stage that trains the student with the teachers' help: its length and optimizer from
    `stages.<stage_key>`, its init the student's carried (or fresh) variables unless `fields` gives
    another; `regressor_limits` names the hint regressors trained beside it (`optim.optimizer`);
    `fields` sets any other Stage field."""
    num_steps = self.steps(stage_key)
    fields = {
      "init": network_init(self.student, "student"),
      "uses_teacher": True,
      "learning_rate": self.learning_rate(stage_key, num_steps),
      **fields,
    }
    tx = self.optimizer(stage_key, num_steps, regressor_limits)
    return Stage(name=name, trains="student", num_steps=num_steps, tx=tx, loss=loss, **fields)


def hint_captures(pairs):
  """{teacher role: its hint layer names} and the student's guided layer names, for `forward`."""
  by_teacher = {}
  for p in pairs:
    by_teacher.setdefault(p.teacher, []).append(p.hint.name)
  return by_teacher, tuple(dict.fromkeys(p.guided.name for p in pairs))


def fresh_or_carried(net, rng, carry):
  """`net`'s (params, batch_stats): the previous stage's `carry`, or fresh ones."""
  return carry if carry is not None else net.init(rng)


def network_init(net, role):
  """The `init` of a stage that trains `net` alone, under `role`."""

  def init(rng, carry):
    params, stats = fresh_or_carried(net, rng, carry)
    return {role: params}, {role: stats}

  return init


def supervised_stage(ctx, name, net, stage_key, trains):
  """Cross-entropy on the labels only: a teacher's training, or the 'scratch' student baseline."""
  from fitnets_jax import losses
  from fitnets_jax.network import forward

  num_steps = ctx.steps(stage_key)

  def loss(params, batch_stats, teaching, batch, rng, step):
    logits, _, stats = forward(net, params[trains], batch_stats[trains], batch["image"], True, rng)
    ce = losses.cross_entropy(logits, batch["label"])
    return ce, ({"ce": ce, "accuracy": losses.accuracy(logits, batch["label"])}, {trains: stats})

  return Stage(
    name=name,
    trains=trains,
    num_steps=num_steps,
    tx=ctx.optimizer(stage_key, num_steps),
    init=network_init(net, trains),
    loss=loss,
    learning_rate=ctx.learning_rate(stage_key, num_steps),
  )


def linear_anneal(start, end, begin, length):
  """λ(step): `start` until `begin`, then linear to `end` over `length` steps, then `end`."""
  import optax

  return optax.linear_schedule(start, end, max(1, length), begin)


def lambda_schedule(cfg, num_steps, steps_per_epoch):
  """λ(step) of the FitNets KD loss: `lambda_start` → `lambda_end`, linear (Romero et al. 2015, §2.2;
  the authors' released yamls: 4 → 1 from epoch 5 for CIFAR-10, 4 → 0 over epochs 5 → 150 for MNIST)."""
  check(
    cfg.lambda_start >= cfg.lambda_end >= 0,
    f"kd.lambda_start={cfg.lambda_start!r} → kd.lambda_end={cfg.lambda_end!r}: FitNets anneals λ "
    "downwards (the teacher's weight falls as the student learns), so 0 ≤ lambda_end ≤ lambda_start.",
  )
  check(
    cfg.lambda_decay_begin_epochs >= 0, f"kd.lambda_decay_begin_epochs={cfg.lambda_decay_begin_epochs!r} must be ≥ 0."
  )
  check(
    cfg.lambda_decay_epochs == -1 or cfg.lambda_decay_epochs > 0,
    f"kd.lambda_decay_epochs={cfg.lambda_decay_epochs!r} must be > 0, or -1 for 'until the stage ends'.",
  )
  begin = int(round(cfg.lambda_decay_begin_epochs * steps_per_epoch))
  length = num_steps - begin if cfg.lambda_decay_epochs < 0 else int(round(cfg.lambda_decay_epochs * steps_per_epoch))
  return linear_anneal(cfg.lambda_start, cfg.lambda_end, begin, length)


def kd_stage(ctx, name="kd"):
  """The KD stage; with several teachers the soft target is their μ-weighted average
  (`losses.soft_target`), and with `kd.attention` the attention pairs' loss (`fitnets_jax.hints`) is
  added."""
  from fitnets_jax import hints, losses, teachers
  from fitnets_jax.network import forward

  cfg = ctx.config.kd
  one_of("kd.loss", cfg.loss, KD_LOSSES)
  check(cfg.temperature > 0, f"kd.temperature={cfg.temperature!r} must be > 0.")
  check(0.0 <= cfg.alpha <= 1.0, f"kd.alpha={cfg.alpha!r} must be in [0, 1].")
  num_steps = ctx.steps("student")
  lam = lambda_schedule(cfg, num_steps, ctx.steps_per_epoch)
  student, roles = ctx.student, list(ctx.teachers)
  pairs = []
  if cfg.attention:
    pairs = [p for p in hints.pairs(ctx.config, student, ctx.teachers) if p.kind == "attention"]
    check(
      pairs,
      "kd.attention=True adds the attention pairs' loss, but no hint pair has kind='attention'; set "
      "hint.kind=attention (or list pairs in `hints`).",
    )
  by_teacher, guided_names = hint_captures(pairs)
  options = hints.loss_options(ctx.config)

  def loss(params, batch_stats, teaching, batch, rng, step):
    x, y = batch["image"], batch["label"]
    t_logits = [teachers.logits(ctx, teaching, batch, r) for r in roles]
    s_logits, s_feats, stats = forward(
      student, params["student"], batch_stats["student"], x, True, rng, capture=guided_names
    )
    if cfg.loss == "fitnets":
      weight = lam(step)
      total, parts = losses.fitnets_kd_loss(s_logits, t_logits, y, weight, cfg.temperature, teaching["mu"])
      parts["lambda"] = weight
    else:
      total, parts = losses.hinton_kd_loss(s_logits, t_logits, y, cfg.alpha, cfg.temperature, teaching["mu"])
    if pairs:
      t_feats = teachers.features(ctx, teaching, batch, by_teacher)
      parts["attention"] = sum(
        hints.pair_loss(p, t_feats[p.teacher][p.hint.name], s_feats[p.guided.name], None, options) for p in pairs
      )
      total = total + parts["attention"]
    parts["accuracy"] = losses.accuracy(s_logits, y)
    return total, (parts, {"student": stats})

  return ctx.student_stage(name, "student", loss, teacher_layers=by_teacher)


def whole_student_stage(ctx, kd):
  """The stage that trains the whole student after a first stage on part of it (FSP, AB): the KD loss
  (`kd_stage`, stage `kd`) with `kd`, else cross-entropy on the labels alone (stage `ce`)."""
  return kd_stage(ctx) if kd else supervised_stage(ctx, "ce", ctx.student, "student", "student")


def hint_stage(ctx, name, pairs):
  """Trains the student up to the deepest guided layer of `pairs` (and their regressors) on their losses."""
  import jax
  import jax.numpy as jnp

  from fitnets_jax import features, hints, teachers
  from fitnets_jax.network import forward

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

  def loss(params, batch_stats, teaching, batch, rng, step):
    x = batch["image"]
    _, s_feats, stats = forward(student, params["student"], batch_stats["student"], x, True, rng, capture=guided_names)
    t_feats = teachers.features(ctx, teaching, batch, by_teacher)
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
  from fitnets_jax import hints

  pairs = hints.pairs(ctx.config, ctx.student, ctx.teachers)
  if len(pairs) == 1 or ctx.config.hint.order == "joint":
    return [hint_stage(ctx, "hint", pairs)]
  hints.progressive_order_ok(pairs, ctx.student)
  return [hint_stage(ctx, f"hint{i + 1}", [p]) for i, p in enumerate(pairs)]


def safe_norm(x, axis, floor=0.0):
  """max(‖x‖₂ along `axis`, floor), whose gradient is 0 (not NaN) where x is all zeros: a dead ReLU
  feature or an example's difference with itself leaves the step finite."""
  import jax.numpy as jnp

  squared = jnp.sum(x * x, axis=axis, keepdims=True)
  positive = squared > 0
  norm = jnp.sqrt(jnp.where(positive, squared, 1.0)) * positive
  return jnp.maximum(norm, floor)


def classifier_input(net):
  """The name of the layer `net`'s classifier reads: its last top-level layer before the logits (a
  ResNet's last section, a maxout net's last fully connected layer) — RepDistiller's `feat[-2]` and
  mdistiller's `feats[-1]` on their networks."""
  top = [l for l in net.layers if len(l.path) == 1]
  return top[-2].name


def section_levels(net, role, key, layers, preact):
  """The layer names of a multi-level method's levels in `net`, shallow to deep: `layers` (the config's
  list at `key`, checked), or each section's output — its pre-activation with `preact`
  (`features.preactivation`: RepDistiller's and mdistiller's `preact=True`). ReviewKD, OFD and AB."""
  from fitnets_jax import features

  if layers:
    return [features.find_layer(net.layers, n, key, net.name).name for n in layers]
  check(
    net.sections,
    f"{role}.model={net.name!r} has no sections; {key.split('.')[0]} reads each section's output, so use a model "
    f"with named sections (resnetD, resnetDxW, wrn_D_K, digits_resnetD) or list the levels in {key}.",
  )
  outputs = [b for _, b in net.sections]
  return [features.preactivation(net.layers, o, net.name) for o in outputs] if preact else outputs


def level_pairs(student, teacher, section, cfg, title, student_preact=True):
  """[(student Layer, teacher Layer)] of a multi-level method, shallow to deep: `cfg.student_layers` and
  `cfg.teacher_layers` of config section `section`, or each section's output, the teacher's before its
  ReLU (the student's too with `student_preact`), as many of each. A method's `Method.levels`."""
  s_levels = section_levels(student, "student", f"{section}.student_layers", cfg.student_layers, student_preact)
  t_levels = section_levels(teacher, "teacher", f"{section}.teacher_layers", cfg.teacher_layers, preact=True)
  check(
    len(s_levels) == len(t_levels),
    f"{title} pairs levels one to one, but the student has {len(s_levels)} ({', '.join(s_levels)}) and the teacher "
    f"{len(t_levels)} ({', '.join(t_levels)}); list as many in {section}.student_layers as in "
    f"{section}.teacher_layers.",
  )
  s_layers, t_layers = {l.name: l for l in student.layers}, {l.name: l for l in teacher.layers}
  return [(s_layers[s], t_layers[t]) for s, t in zip(s_levels, t_levels)]


def torch_uniform(fan_in):
  """torch.nn.Linear's and Conv2d's default initialiser, U(±1/√fan_in) for the weight (kaiming_uniform
  with a = √5) and the bias alike, as a flax initialiser: the distillers' heads in RepDistiller and
  mdistiller start from it."""
  import jax
  import jax.numpy as jnp

  bound = float(fan_in) ** -0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def linear_init(rng, features_in, features_out):
  """A linear layer's {"kernel", "bias"} as torch.nn.Linear starts them (`torch_uniform`): the embedding
  heads of CC and CRD."""
  import jax

  k, b = jax.random.split(rng)
  init = torch_uniform(features_in)
  return {"kernel": init(k, (features_in, features_out)), "bias": init(b, (features_out,))}


def epoch_warmup(step, steps_per_epoch, warmup_epochs, first_epoch):
  """min(epoch / warm-up, 1) at stage step `step`, constant within an epoch, epochs numbered from
  `first_epoch`: 1 as mdistiller's trainer (DKD: the first epoch already has 1 / warm-up), 0 as ReviewKD's
  train.py (its first epoch has no feature term)."""
  import jax.numpy as jnp

  epoch = step // steps_per_epoch + first_epoch
  return jnp.minimum(epoch / warmup_epochs, 1.0).astype(jnp.float32)


def conv_same(x, kernel):
  """Stride-1 convolution with torch's padding k // 2 ('same'), NHWC with an HWIO kernel, no bias: the
  distillers' heads (ReviewKD's ABF, OFD's connectors)."""
  import jax

  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def batch_norm_train(x, params, epsilon=1e-5):
  """torch's BatchNorm2d in training mode: the batch's mean and biased variance over batch and positions
  (the global batch under data parallelism), then `params["scale"]` and `params["bias"]`. The distillers'
  heads use it: they train with the student and never run in inference mode, so they keep no running
  statistics."""
  import jax.numpy as jnp

  mean = jnp.mean(x, axis=(0, 1, 2))
  variance = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  return (x - mean) / jnp.sqrt(variance + epsilon) * params["scale"] + params["bias"]


def batch_norm_params(channels):
  """A BN layer's {"scale": 1, "bias": 0}, as torch starts them."""
  import jax.numpy as jnp

  return {"scale": jnp.ones(channels, jnp.float32), "bias": jnp.zeros(channels, jnp.float32)}


def connector_init(rng, student_channels, teacher_channels):
  """A connector from the student's channels to the teacher's: a 1×1 conv (no bias) N(0, 2 / C_T) and a BN
  at 1 and 0 (OFD's `build_feature_connector`, AB's connection layers)."""
  import math

  import jax

  std = math.sqrt(2.0 / teacher_channels)
  kernel = std * jax.random.normal(rng, (1, 1, student_channels, teacher_channels))
  return {"conv": kernel, "bn": batch_norm_params(teacher_channels)}


def connect(params, x):
  """A connector (`connector_init`) applied to the student's map, its BN in training mode."""
  return batch_norm_train(conv_same(x.astype(params["conv"].dtype), params["conv"]), params["bn"])


def distiller_stage(
  ctx, name, cfg, captures, term, heads=None, warmup=None, teachers_train=False, pass_teaching=False, **fields
):
  """One stage of H(y, P_S) + `cfg.weight`·term(student features, teacher features, head params), the
  term scaled by `warmup(step)` when given (logged as `warmup`).

  `captures` is (student layer names, {teacher role: its layer names}); `term` receives the captured
  dicts. `heads(rng)`, when given, initialises the trained modules beside the student (CC's
  embeddings, VID's regressors: mdistiller's "extra parameters"), kept under params["distiller"],
  trained by the stage's optimizer and left behind at its end. The teachers run in inference mode, or
  with `teachers_train` in training mode (OFD's authors); with `pass_teaching` `term` also receives the
  teachers' variables as `teaching=` (OFD's margins). `fields` sets other Stage fields (FT's `init` and
  `labels`, which carry its trained paraphraser in)."""
  from fitnets_jax import losses, teachers
  from fitnets_jax.network import forward

  check(cfg.weight >= 0, f"{name}.weight={cfg.weight!r} must be ≥ 0.")
  student, (student_layers, teacher_layers) = ctx.student, captures

  def init(rng, carry):
    import jax

    params, stats = fresh_or_carried(student, rng, carry)
    extra = {"distiller": heads(jax.random.fold_in(rng, 1))} if heads else {}
    return {"student": params, **extra}, {"student": stats}

  def loss(params, batch_stats, teaching, batch, rng, step):
    x, y = batch["image"], batch["label"]
    logits, s_feats, stats = forward(
      student, params["student"], batch_stats["student"], x, True, rng, capture=student_layers
    )
    if teachers_train:
      import jax

      t_feats = teachers.features(ctx, teaching, batch, teacher_layers, train=True, rng=jax.random.fold_in(rng, 1))
    else:
      t_feats = teachers.features(ctx, teaching, batch, teacher_layers)
    extra = {"teaching": teaching} if pass_teaching else {}
    value = term(s_feats, t_feats, params.get("distiller"), **extra)
    ce = losses.cross_entropy(logits, y)
    metrics = {"ce": ce, name: value, "accuracy": losses.accuracy(logits, y)}
    weight = cfg.weight
    if warmup is not None:
      metrics["warmup"] = warmup(step)
      weight = weight * metrics["warmup"]
    return ce + weight * value, (metrics, {"student": stats})

  # The teacher cache holds inference-mode outputs: a teacher in training mode reads none of them.
  cached = {} if teachers_train else teacher_layers
  return ctx.student_stage(name, "student", loss, **{"init": init, "teacher_layers": cached, **fields})


def feature_pair_stage(ctx, name, cfg, relation, pool=False, heads=None):
  """One stage of H(y, P_S) + `cfg.weight`·relation(f_S, f_T), with f the output of `cfg.student_layer`
  and `cfg.teacher_layer` ("": the layer each classifier reads, `classifier_input`), averaged over its
  spatial positions first when `pool` (a pooled embedding, as mdistiller's `pooled_feat`). With
  `heads(rng, student shape, teacher shape)` the relation is relation(f_S, f_T, their params)
  (`distiller_stage`). The relation losses of SP, PKT, RKD and CC use it."""
  import jax.numpy as jnp

  layers = {}
  for role, net, key in (("student", ctx.student, "student_layer"), ("teacher", ctx.teacher, "teacher_layer")):
    names = [l.name for l in net.layers]
    layers[role] = cfg[key] or classifier_input(net)
    check(
      layers[role] in names,
      f"{name}.{key}={cfg[key]!r} is not a layer of {role}.model={net.name!r}; valid: {', '.join(names[:12])}"
      f"{', …' if len(names) > 12 else ''} (`python -m fitnets_jax.tools.layers` lists them), or '' for the layer "
      "its classifier reads.",
    )
  embed = lambda f: jnp.mean(f, axis=tuple(range(1, f.ndim - 1))) if pool and f.ndim > 2 else f
  shapes = [
    next(l.shape for l in net.layers if l.name == layers[role])
    for role, net in (("student", ctx.student), ("teacher", ctx.teacher))
  ]
  shapes = [(s[-1],) if pool and len(s) > 1 else s for s in shapes]

  def term(s_feats, t_feats, head_params):
    pair = (embed(s_feats[layers["student"]]), embed(t_feats["teacher"][layers["teacher"]]))
    return relation(*pair, head_params) if heads else relation(*pair)

  captures = ((layers["student"],), {"teacher": (layers["teacher"],)})
  init_heads = (lambda rng: heads(rng, *shapes)) if heads else None
  return distiller_stage(ctx, name, cfg, captures, term, init_heads)


def map_pairs_stage(ctx, name, cfg, pair_term, heads=None):
  """One stage of H(y, P_S) + `cfg.weight`·Σ_pairs w·pair_term(F_S, F_T) over the hint pairs' feature maps
  (`hint` or `hints`; their `kind` is not read), the larger map average-pooled to the smaller's size
  first (RepDistiller's and mdistiller's `adaptive_avg_pool2d`). With `heads(rng, pair)` each pair has
  trained parameters and the term is pair_term(F_S, F_T, its params). NST and VID use it."""
  import jax

  from fitnets_jax import hints, losses

  pairs = hints.pairs(ctx.config, ctx.student, ctx.teachers, maps_for=name)
  by_teacher, guided_names = hint_captures(pairs)

  def term(s_feats, t_feats, head_params):
    total = 0.0
    for i, p in enumerate(pairs):
      s, t = s_feats[p.guided.name], t_feats[p.teacher][p.hint.name]
      size = min(s.shape[1], t.shape[1]), min(s.shape[2], t.shape[2])
      s, t = losses.average_pool(s, size), losses.average_pool(t, size)
      value = pair_term(s, t, head_params[f"pair{i}"]) if heads else pair_term(s, t)
      total = total + p.weight * value
    return total

  init_heads = (
    (lambda rng: {f"pair{i}": heads(jax.random.fold_in(rng, i), p) for i, p in enumerate(pairs)}) if heads else None
  )
  return distiller_stage(ctx, name, cfg, (guided_names, by_teacher), term, init_heads)

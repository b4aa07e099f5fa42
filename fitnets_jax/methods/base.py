"""What a method is made of: one `Method` record, networks, a context, and a sequence of stages.

A method module defines `METHOD = Method(...)`: its name, its stages (`stages(ctx) -> list[Stage]`),
the teachers it needs, the networks it trains and its own config defaults; `fitnets_jax.methods`
finds it. Each stage names the network it trains, its length, its optimizer, which parameters it
trains (the rest is frozen), and a pure loss. The trainer (`fitnets_jax.train`) runs any list of
stages; a method never touches data.
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from fitnets_jax import compiler, features, losses, models, optim
from fitnets_jax.errors import check


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


COMPUTE_DTYPES = ("float32", "bfloat16")  # config.dtype: the activations' dtype
TEACHERS = ("none", "one", "list")  # Method.teachers


def _no_defaults():
  return {}


def _no_hint_pairs(config):
  return False


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
  """Everything the rest of the library reads of a method; every hook but `name` and `stages` has a
  default that fits a one-student method.

  name: `config.method`'s value.
  stages: (Context) -> [Stage], in order; a teacher trained in the run gets its own stage first.
  teachers: "none"; "one" (`config.teacher`); or "list" (`config.teachers`, roles teacher1, …).
  networks: (config) -> [(role, config key, {model, dropout})] of the networks trained from scratch,
    the first being the summary's student; None: the one student of `config.student`.
  teacher_weights: (config, roles, validation_accuracy(role)) -> (μ, {role: accuracy or None}) for
    several teachers; None: uniform.
  defaults: () -> {config section: default}, merged into `config.base_config()`.
  uses_hint_pairs: (config) -> whether its stages read the hint pairs (`config.hint`/`hints`), which
    `python -m fitnets_jax.layers` then lists.
  extra_networks: (config, student Network, classes) -> {name: Network} trained beside the student (BYOT's
    exit heads), for the layers report.
  """

  name: str
  stages: Callable
  teachers: str = "none"
  networks: Optional[Callable] = None
  teacher_weights: Optional[Callable] = None
  defaults: Callable = _no_defaults
  uses_hint_pairs: Callable = _no_hint_pairs
  extra_networks: Optional[Callable] = None

  def __post_init__(self):
    assert self.teachers in TEACHERS, self.teachers

  @property
  def uses_teacher(self):
    return self.teachers != "none"


@dataclasses.dataclass
class Network:
  """A model with its layer table (names, shapes, params, MACs)."""

  name: str
  module: Any
  input_shape: tuple
  layers: list
  params: int
  macs: int
  sections: tuple = ()  # ((input layer, output layer), …) of models with named sections
  dtype: str = "float32"  # activations' dtype (config.dtype); parameters stay float32
  depth: int = 0  # weight layers (conv and dense) on the main path, as papers count layers
  paper_params: int = 0  # the FitNets paper's count (features.paper_params)

  def abstract_variables(self):
    """Shapes and dtypes of all variables (no computation)."""
    return jax.eval_shape(
      lambda: self.module.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1,) + self.input_shape), train=False)
    )

  def init(self, rng):
    """Fresh (params, batch_stats); batch_stats is {} for models without batch norm. One program
    compiled for a single run (`compiler.RUN_ONCE_OPTIONS`), with the values op-by-op execution gives;
    inside a traced function (a stage's initial state), part of that function's program."""
    variables = compiler.run_once(self._init_variables, rng)
    return variables["params"], variables.get("batch_stats", {})

  def _init_variables(self, rng):
    return self.module.init({"params": rng, "dropout": rng}, jnp.zeros((1,) + self.input_shape), train=False)

  def describe(self):
    return {
      "model": self.name,
      "layers": self.depth,
      "params": self.params,
      "paper_params": self.paper_params,
      "macs": self.macs,
    }


def network(name, module, input_shape, dtype="float32"):
  """A Network with its layer table, traced from shapes only."""
  net = Network(name, module, tuple(input_shape), [], 0, 0, tuple(getattr(module, "sections", ())), dtype)
  abstract = net.abstract_variables()
  net.layers = features.describe(module, abstract, input_shape)
  net.params, net.macs = features.count_params(abstract["params"]), features.total_macs(net.layers)
  net.depth = features.depth(net.layers)
  net.paper_params = features.paper_params(net.layers, abstract["params"])
  return net


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
  stage's trained (params, batch_stats), or None. `loss(params, batch_stats, teacher, batch, rng,
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
  # update — (params, batch_stats, opt_state, teacher, batch, rng, step) -> Update replaces "one
  #   gradient step of `loss` with `tx`";
  # evaluation — ({"params", "batch_stats"} of the stage, images, labels) -> {metric: per-example
  #   values}, with an "accuracy" entry, replaces the trained network's accuracy on the test split;
  # summarize — {metric: test value} -> entries added to summary.json.
  update: Optional[Callable] = None
  evaluation: Optional[Callable] = None
  summarize: Optional[Callable] = None
  teacher_layers: dict = dataclasses.field(default_factory=dict)  # {role: layers of it the loss reads}
  # What a run saves when this stage is its last (`fitnets_jax.saved`): networks — {role: Network} it
  # trains (empty: the student as `trains`); heads — {name: (the layer it follows, its module)} saved
  # with the `trains` network (BYOT's exits).
  networks: dict = dataclasses.field(default_factory=dict)
  heads: dict = dataclasses.field(default_factory=dict)

  def output(self, params, batch_stats):
    """(params, batch_stats) of the trained network, handed to the next stage."""
    return params[self.trains], batch_stats[self.trains]

  def param_labels(self, params):
    return self.labels(params) if self.labels else jax.tree.map(lambda _: "train", params)


@dataclasses.dataclass
class Context:
  """What methods may read: the config, the networks, and the epoch length.

  `teachers` maps a role to its Network: {"teacher": …} for one teacher, {"teacher1": …,
  "teacher2": …} for `config.teachers`. Inside a step the teachers' variables arrive as
  {role: {"params", "batch_stats"}, "mu": weights}.
  """

  config: Any
  student: Network
  teachers: dict
  steps_per_epoch: int
  stage_configs: dict = dataclasses.field(default_factory=dict)  # role → its training stage config
  num_classes: int = 0

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
    key = f"stages.{stage_key}.optimizer"
    return optim.optimizer(
      self.stage_config(stage_key).optimizer, num_steps, self.steps_per_epoch, key, regressor_limits
    )

  def student_stage(self, name, stage_key, loss, regressor_limits=None, **fields):
    """A stage that trains the student with the teachers' help: its length and optimizer from
    `stages.<stage_key>`, its init the student's carried (or fresh) variables unless `fields` gives
    another; `regressor_limits` names the hint regressors trained beside it (`optim.optimizer`);
    `fields` sets any other Stage field."""
    num_steps = self.steps(stage_key)
    fields = {"init": network_init(self.student, "student"), "uses_teacher": True, **fields}
    tx = self.optimizer(stage_key, num_steps, regressor_limits)
    return Stage(name=name, trains="student", num_steps=num_steps, tx=tx, loss=loss, **fields)


def build_network(key, cfg, num_classes, image_shape, dtype="float32"):
  """The Network of `cfg.model` (dropout `cfg.dropout`), with the sections `cfg.sections` declares
  ([[input layer, output layer], …], for models of your own) instead of the model's; `key` names the
  config entry in errors."""
  net = network(
    cfg.model,
    models.get_model(
      cfg.model, num_classes, cfg.dropout, key=f"{key}.model", input_dropout=tuple(cfg.get("input_dropout", ()))
    ),
    image_shape,
    dtype,
  )
  declared = [tuple(pair) if isinstance(pair, (list, tuple)) else pair for pair in cfg.get("sections", ())]
  if declared:
    names = [l.name for l in net.layers]
    check(
      all(isinstance(p, tuple) and len(p) == 2 and all(n in names for n in p) for p in declared),
      f"{key}.sections={[list(p) if isinstance(p, tuple) else p for p in declared]!r}: each section is "
      f"[input layer, output layer], both layers of {cfg.model!r} ({', '.join(names[:12])}"
      f"{', …' if len(names) > 12 else ''}; `python -m fitnets_jax.layers` lists them all).",
    )
    net.sections = tuple(declared)
  return net


def variables(params, batch_stats):
  """Flax variables of a network: its params, and its batch_stats when it has batch norm."""
  return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def cast_floats(tree, dtype):
  """`tree` with its floating-point leaves cast to `dtype` (integer leaves untouched)."""
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def forward(net, params, batch_stats, x, train, rng=None, capture=()):
  """(logits, captured features, batch_stats after the call) of `net`.

  With `net.dtype` bfloat16 the parameters and the input are cast to bf16 for the call, so every
  activation (and captured feature) is bf16, while the float32 parameters receive float32 gradients
  through the cast. Batch statistics stay float32 (flax reduces them in float32), and the logits
  come back as float32 for the losses.
  """
  if net.dtype != "float32":
    params, x = cast_floats(params, net.dtype), x.astype(net.dtype)
  logits, feats, new_stats = features.apply(
    net.module, variables(params, batch_stats), x, train, capture, rngs={"dropout": rng} if rng is not None else None
  )
  return cast_floats(logits, jnp.float32), feats, new_stats if new_stats is not None else batch_stats


def predict(net, network_variables, images):
  """`net`'s float32 logits in inference mode from its flax variables {"params", ["batch_stats"]}."""
  return forward(net, network_variables["params"], network_variables.get("batch_stats", {}), images, False)[0]


def hint_captures(pairs):
  """{teacher role: its hint layer names} and the student's guided layer names, for `forward`."""
  by_teacher = {}
  for p in pairs:
    by_teacher.setdefault(p.teacher, []).append(p.hint.name)
  return by_teacher, tuple(dict.fromkeys(p.guided.name for p in pairs))


def teacher_logits(ctx, teacher_vars, batch, role):
  """Teacher `role`'s logits on the batch: looked up in the teacher cache by example id when there is
  one (`fitnets_jax.teacher_cache`), else its forward pass in inference mode."""
  cached = teacher_vars.get("cache", {}).get(role)
  if cached is not None:
    return cached["logits"][batch["index"]]
  t = teacher_vars[role]
  return forward(ctx.teachers[role], t["params"], t["batch_stats"], batch["image"], False)[0]


def teacher_features(ctx, teacher_vars, batch, by_teacher):
  """The named layers' outputs of each teacher, in inference mode: {role: {layer: array}}; from the
  teacher cache when it holds all of a teacher's layers."""
  found = {}
  for role, names in by_teacher.items():
    names = tuple(dict.fromkeys(names))
    cached = teacher_vars.get("cache", {}).get(role, {}).get("features", {})
    if all(n in cached for n in names):
      found[role] = {n: cached[n][batch["index"]] for n in names}
    else:
      t = teacher_vars[role]
      found[role] = forward(ctx.teachers[role], t["params"], t["batch_stats"], batch["image"], False, capture=names)[1]
  return found


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
  num_steps = ctx.steps(stage_key)

  def loss(params, batch_stats, teacher, batch, rng, step):
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
  )


def linear_anneal(start, end, begin, length):
  """λ(step): `start` until `begin`, then linear to `end` over `length` steps, then `end`."""
  return optax.linear_schedule(start, end, max(1, length), begin)

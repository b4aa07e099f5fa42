"""The teachers, in one home: which a method has (`specs`), a reused one's checkpoint (`load_teacher`),
their variables made ready once per run (carried from this run's teacher stage, loaded from
`teacher.checkpoint`, or, after a resume, read back from workdir/<role>) with their test accuracy and
weights μ (multi-teacher KD, You et al. 2017 §3), their outputs inside a step (`logits`, `features`),
the teacher cache, those saved at a teacher stage's end, and `{seed}` in their checkpoints (`for_seed`).

What a step receives of them — `teaching` — is {role: {"params", "batch_stats"}, "mu": the weights,
and "cache": the cache's tables when `teacher.cache`}.

The cache (`teacher.cache=True`): a frozen teacher in inference mode gives an example the same
outputs every epoch, as long as the input pipeline draws no random augmentation. The cache computes
each teacher's logits, and the hint features its stages read while they fit in
`teacher.cache_budget_mb`, over the whole training split once, keyed by the example's id
(`batch["index"]`). Stages then look them up (`logits`, `features`) instead of running the teacher:
the KD stage never runs it. Features over the budget are computed live, as without the cache. The
tables live on every device (replicated). Every host computes the whole table from the whole
training split, so each host's lookup needs nothing from the others.
"""

import copy
import math
import sys
import time

import jax
import ml_collections
import numpy as np

from fitnets_jax import compiler, files, saved, train_step
from fitnets_jax import data as data_lib
from fitnets_jax.errors import FitnetsError, check
from fitnets_jax.methods.shared import network_entry
from fitnets_jax.network import forward
from fitnets_jax.parallel import replicate

TEACHER_DIR = "teacher"  # a run's one teacher: workdir/teacher (teacher1/, … for several)
TEACHER_ENTRY_KEYS = ("model", "checkpoint", "dropout", "input_dropout", "epochs", "steps", "optimizer")


def specs(config, method):
  """[(role, config key, ConfigDict with model/checkpoint/dropout, its training stage config)] of the
  teachers of `method` (a `Method`); the key ("teacher", "teachers[0]", …) is what error messages name."""
  if method.teachers == "none":
    check(not len(config.teachers), f"config.teachers is set, but method={config.method!r} uses no teacher.")
    return []
  if method.teachers == "one":
    check(
      not len(config.teachers),
      f"config.teachers lists several teachers, but method={config.method!r} uses "
      "the one in config.teacher; use method=multi_teacher, or clear teachers.",
    )
    return [("teacher", "teacher", config.teacher, config.stages.teacher)]
  check(
    len(config.teachers) > 0,
    f"method={config.method!r} needs config.teachers: a non-empty list of dicts "
    f"with keys {', '.join(TEACHER_ENTRY_KEYS)} (model required).",
  )
  specs = []
  for i, entry in enumerate(config.teachers):
    entry, stage = network_entry(entry, f"teachers[{i}]", TEACHER_ENTRY_KEYS, config.stages.teacher)
    role_cfg = ml_collections.ConfigDict(
      dict(
        model=entry["model"],
        checkpoint=entry.get("checkpoint", ""),
        dropout=float(entry.get("dropout", 0.0)),
        input_dropout=list(entry.get("input_dropout", [])),
      )
    )
    specs.append((f"teacher{i + 1}", f"teachers[{i}]", role_cfg, stage))
  return specs


def reused(key, role_cfg, teacher):
  """Host variables of a teacher checkpoint, checked against the configured teacher model."""
  info = teacher_info(role_cfg.checkpoint, f"{key}.checkpoint")
  check(
    info.get("model") == teacher.name,
    f"{key}.checkpoint={role_cfg.checkpoint!r} holds a {info.get('model')!r} teacher but "
    f"{key}.model={teacher.name!r}; set --config.{key}.model={info.get('model')}.",
  )
  return load_teacher(role_cfg.checkpoint, teacher.abstract_variables(), f"{key}.checkpoint")


def teacher_dir(path):
  """The teacher folder for `teacher.checkpoint=path`: a run's workdir or its teacher/ folder."""
  for candidate in (files.join(path, TEACHER_DIR), path):
    if saved.info_file(candidate):
      return files.absolute(candidate)
  raise FitnetsError(
    f"teacher.checkpoint={path!r} holds no saved teacher: expected {TEACHER_DIR}/{saved.NETWORK_INFO} (a run's "
    f"workdir) or {saved.NETWORK_INFO} (its teacher/ folder) there. Train one with method=fitnets or kd and "
    "an empty teacher.checkpoint, then point at that run's workdir."
  )


def teacher_info(path, key="teacher.checkpoint"):
  return saved.read_info(teacher_dir(path), f"{key}={path!r}")


def load_teacher(path, abstract_variables, key="teacher.checkpoint"):
  """Restores teacher variables (`read_network`); a parameter missing or of another shape is a clear error."""
  restored = saved.read_network(teacher_dir(path), f"{key}={path!r}")
  want = {jax.tree_util.keystr(p): l.shape for p, l in jax.tree_util.tree_leaves_with_path(abstract_variables)}
  have = {jax.tree_util.keystr(p): l.shape for p, l in jax.tree_util.tree_leaves_with_path(restored)}
  for name in sorted(set(want) | set(have)):
    if want.get(name) != have.get(name):
      raise FitnetsError(
        f"{key}={path!r} does not fit the configured teacher: parameter {name} has shape "
        f"{have.get(name, 'missing')} in the checkpoint but {want.get(name, 'missing')} in the model. "
        f"Set teacher.model to the architecture that was saved (see its {saved.NETWORK_INFO})."
      )
  return restored


def prepare(exp, workdir, results, evaluator, checkpoints, carried):
  """{role: replicated variables, "mu": weights, and "cache" when configured} of every teacher.
  `carried` holds the (params, batch_stats) of teachers trained earlier in this process; the
  accuracies, weights and cache statistics are recorded in `results`."""
  config, variables = exp.config, {}
  for role, net in exp.teachers.items():
    if role in carried:
      params, stats = carried[role]
      v = {"params": params, "batch_stats": stats}
    else:
      v = exp.teacher_variables.get(role) or own_teacher(exp, workdir, results, checkpoints, role)
      v = {"params": v["params"], "batch_stats": v.get("batch_stats", {})}
    variables[role] = replicate(v, exp.mesh)
    record = results["teachers"].setdefault(role, {})
    if record.get("test_accuracy") is None:
      record["test_accuracy"] = evaluator.accuracy(net, variables[role]["params"], variables[role]["batch_stats"])
  variables["mu"] = replicate(np.asarray(weights(exp, results, evaluator, variables), np.float32), exp.mesh)
  if config.teacher.cache:
    tables, info = build_cache(
      exp.teachers,
      variables,
      cached_layers(exp.stages),
      exp.data,
      config.eval_batch_size,
      config.teacher.cache_budget_mb,
    )
    variables["cache"] = replicate(tables, exp.mesh)
    results["teacher_cache"] = info
    if jax.process_index() == 0:
      left_out = f"; over the budget, computed live: {', '.join(info['left_out'])}" if info["left_out"] else ""
      print(
        f"Teacher cache: {info['examples']:,} examples, {info['bytes'] / 2**20:.1f} MiB "
        f"(logits, features {info['layers']}) in {info['seconds']:.1f} s{left_out}",
        flush=True,
      )
  return variables


def weights(exp, results, evaluator, variables):
  """The teachers' weights μ: equal, the ones a resumed run recorded, or the method's own (measured
  on the validation split, and recorded)."""
  roles = list(exp.teachers)
  if exp.teacher_weights is None:
    return [1.0 / len(roles)] * len(roles)
  if "weight" in results["teachers"][roles[0]]:
    return [results["teachers"][r]["weight"] for r in roles]
  mu, accuracies = exp.teacher_weights(
    exp.config,
    roles,
    lambda r: evaluator.accuracy(
      exp.teachers[r], variables[r]["params"], variables[r]["batch_stats"], split="validation"
    ),
  )
  for r, m in zip(roles, mu):
    results["teachers"][r].update(weight=m, validation_accuracy=accuracies[r])
  return mu


def own_teacher(exp, workdir, results, checkpoints, role):
  """The variables of a teacher this run trained, after a resume: from workdir/<role>, or, when that
  folder is gone or damaged, from the teacher stage's last checkpoint (always kept), saved again."""
  folder = files.join(workdir, role)
  try:
    return load_teacher(folder, exp.teachers[role].abstract_variables())
  except FitnetsError:
    problem = "damaged" if files.isfile(files.join(folder, saved.NETWORK_INFO)) else "missing"
  index = next(i for i, s in enumerate(exp.stages) if s.trains == role)
  at = train_step.stage_offsets(exp.stages)[index + 1]
  stage, rng, _, tx = train_step.stage_setup(exp, index)
  try:
    state = checkpoints.restore(at, train_step.abstract_state(stage, tx, rng, exp.mesh), checkpoints.meta(at))
  except Exception as e:  # noqa: BLE001
    raise FitnetsError(
      f"The {role} this run trained is lost: {folder} is {problem}, and the {stage.name!r} stage's last checkpoint "
      f"(global step {at} in {checkpoints.directory}), which also holds it, cannot be read "
      f"({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}). Nothing was changed; restore "
      f"{folder} from a copy, or start over in a new --workdir."
    ) from None
  variables = save(exp, workdir, results, stage, state)
  print(
    f"warning: {folder} was {problem}; the {role} was recovered from the {stage.name!r} stage's last "
    f"checkpoint (global step {at}) and saved there again.",
    file=sys.stderr,
    flush=True,
  )
  return variables


def save(exp, workdir, results, stage, state):
  """Saves the teacher that `stage` trained, from its final `state`, to workdir/<role> with its
  network.json (model, sizes, test accuracy, data, preprocessing); returns its variables as host arrays."""
  params, stats = stage.output(state.params, state.batch_stats)
  variables = jax.device_get({"params": params, "batch_stats": stats})
  accuracy = results["stages"][stage.name]["test_accuracy"]
  saved.save(workdir, stage.trains, exp.teachers[stage.trains], variables, exp.data, accuracy)
  return variables


def logits(ctx, teaching, batch, role):
  """Teacher `role`'s logits on the batch: looked up in the teacher cache by example id when there is
  one (the teacher cache, below), else its forward pass in inference mode."""
  cached = teaching.get("cache", {}).get(role)
  if cached is not None:
    return cached["logits"][batch["index"]]
  t = teaching[role]
  with jax.named_scope(role):  # the teacher's ops under its role's name in profiles
    return forward(ctx.teachers[role], t["params"], t["batch_stats"], batch["image"], False)[0]


def features(ctx, teaching, batch, by_teacher, train=False, rng=None):
  """The named layers' outputs of each teacher, in inference mode: {role: {layer: array}}; from the
  teacher cache when it holds all of a teacher's layers. With `train` the teachers run in training
  mode instead (BN with the batch's statistics, dropout with `rng`; their statistics are not updated),
  as OFD's authors run theirs; never from the cache."""
  found = {}
  for role, names in by_teacher.items():
    names = tuple(dict.fromkeys(names))
    cached = teaching.get("cache", {}).get(role, {}).get("features", {})
    t = teaching[role]
    scope = jax.named_scope(role)  # the teacher's ops under its role's name in profiles
    if train:
      with scope:
        _, outputs, _ = forward(ctx.teachers[role], t["params"], t["batch_stats"], batch["image"], True, rng, names)
      found[role] = jax.lax.stop_gradient(outputs)
    elif all(n in cached for n in names):
      found[role] = {n: cached[n][batch["index"]] for n in names}
    else:
      with scope:
        _, found[role], _ = forward(
          ctx.teachers[role], t["params"], t["batch_stats"], batch["image"], False, None, names
        )
  return found


def for_seed(config, seed):
  """A copy of `config` for `seed`, with `{seed}` in every teacher checkpoint replaced by it (each seed of
  `--seeds` can load the teacher trained with its own seed)."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.seed = seed
    c.teacher.checkpoint = c.teacher.checkpoint.replace("{seed}", str(seed))
    c.teachers = [
      dict(t, checkpoint=t["checkpoint"].replace("{seed}", str(seed))) if "checkpoint" in t else t for t in c.teachers
    ]
  return c


def shared_across_seeds(config, method, seeds):
  """[(config key, path)] of the teacher checkpoints every one of `seeds` runs would load alike (no
  `{seed}` in the path)."""
  paths = [("teacher.checkpoint", config.teacher.checkpoint)] if method.teachers == "one" else []
  paths += [(f"teachers[{i}].checkpoint", t["checkpoint"]) for i, t in enumerate(config.teachers) if "checkpoint" in t]
  return [(key, path) for key, path in paths if seeds > 1 and path and "{seed}" not in path]


def check_cache_config(config, dataset, has_teacher):
  """Refuses a cache that could not be exact, before anything runs."""
  if not config.teacher.cache:
    return
  check(
    has_teacher,
    f"teacher.cache=True stores a teacher's outputs, but method={config.method!r} uses no teacher; "
    "set teacher.cache=False.",
  )
  check(
    not dataset.augmented,
    f"teacher.cache=True needs an input pipeline without random augmentation: a cached output belongs to one "
    f"fixed image, but dataset.flip={dataset.augment_flip}, dataset.shift={dataset.augment_shift} and "
    f"dataset.cutout={dataset.augment_cutout} change each "
    "image every epoch, so the teacher must see what the student sees. Set dataset.flip=False, "
    "dataset.shift=0 and dataset.cutout=0, or teacher.cache=False.",
  )
  check(
    config.teacher.cache_budget_mb >= 0,
    f"teacher.cache_budget_mb={config.teacher.cache_budget_mb!r} must be ≥ 0 (0: logits only).",
  )


def cached_layers(stages):
  """{teacher role: its layers some stage reads}, in first-use order."""
  layers = {}
  for stage in stages:
    for role, names in stage.teacher_layers.items():
      layers.setdefault(role, [])
      layers[role] += [n for n in names if n not in layers[role]]
  return layers


def cache_plan(teachers, layers, num_examples, num_classes, budget_bytes):
  """({role: layers to cache}, bytes, [layers left out]): logits always; features in order while
  the total stays within the budget."""
  used = len(teachers) * num_examples * num_classes * 4
  cached, skipped = {role: [] for role in teachers}, []
  for role, names in layers.items():
    shapes = {l.name: l.shape for l in teachers[role].layers}
    for name in names:
      size = num_examples * math.prod(shapes[name]) * 4
      if used + size <= budget_bytes:
        cached[role].append(name)
        used += size
      else:
        skipped.append(f"{role}/{name}")
  return cached, used, skipped


def build_cache(teachers, teaching, layers, dataset, batch_size, budget_mb):
  """Host tables {role: {"logits": (N, classes), "features": {layer: (N, …)}}} over the training
  split, and a summary {examples, bytes, layers, left_out, seconds}."""
  started = time.perf_counter()
  n = dataset.num_train
  cached, used, skipped = cache_plan(teachers, layers, n, dataset.num_classes, budget_mb * 2**20)
  host_vars = jax.device_get({role: teaching[role] for role in teachers})

  @compiler.jit
  def outputs(variables, images):
    return {
      role: forward(
        net, variables[role]["params"], variables[role]["batch_stats"], images, False, capture=tuple(cached[role])
      )[:2]
      for role, net in teachers.items()
    }

  shapes = {role: {l.name: l.shape for l in net.layers} for role, net in teachers.items()}
  tables = {
    role: {
      "logits": np.zeros((n, dataset.num_classes), np.float32),
      "features": {name: np.zeros((n,) + shapes[role][name], np.float32) for name in cached[role]},
    }
    for role in teachers
  }
  seen = np.zeros(n, bool)
  for batch in data_lib.training_examples(dataset, batch_size):
    keep = batch["mask"] > 0
    ids = batch["index"][keep]
    for role, (logits, feats) in jax.device_get(outputs(host_vars, batch["image"])).items():
      tables[role]["logits"][ids] = logits[keep]
      for name, value in feats.items():
        tables[role]["features"][name][ids] = value[keep]
    seen[ids] = True
  check(
    seen.all(),
    f"the teacher cache covered {int(seen.sum())} of {n} training examples; the dataset's example ids are not 0 … N−1.",
  )
  info = {
    "examples": n,
    "bytes": int(used),
    "layers": {role: names for role, names in cached.items()},
    "left_out": skipped,
    "seconds": round(time.perf_counter() - started, 3),
  }
  return tables, info

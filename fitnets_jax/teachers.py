"""The teachers a student stage learns from, made ready once per run: each teacher's replicated
variables (carried from this run's teacher stage, loaded from `teacher.checkpoint`, or, after a
resume, read back from workdir/<role>), its test accuracy, the weights μ of several teachers
(multi-teacher KD, You et al. 2017 §3), and the teacher cache of their outputs."""

import sys

import jax
import numpy as np

from fitnets_jax import checkpoint, files, saved, teacher_cache, train_step
from fitnets_jax.errors import FitnetsError
from fitnets_jax.parallel import replicate


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
    tables, info = teacher_cache.build(
      exp.teachers,
      variables,
      teacher_cache.needed_layers(exp.stages),
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
    return checkpoint.load_teacher(folder, exp.teachers[role].abstract_variables())
  except FitnetsError:
    problem = "damaged" if files.isfile(files.join(folder, checkpoint.NETWORK_INFO)) else "missing"
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

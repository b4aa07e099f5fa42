"""Inside a finished run, from Python: what the notebooks show, computed by the package.

`open_run(workdir)` rebuilds a run's experiment from its `config.json` (networks, stages and data;
nothing is trained or written) and reads its summary and metrics. From there:
- `stage_variables`: a stage's variables at its start (its deterministic initialisation, or the
  previous stage's result) and at its end (every stage's last checkpoint is kept);
- `hint_maps`: the teacher's hint maps next to the student's guided maps through the regressor,
  before and after the hint stage (Romero et al. 2015, eq. 3), with the hint loss of each;
- `frozen_check`: which variables a stage trained and how far each moved;
- `lambda_schedule`: λ of the FitNets KD loss at every step of its stage;
- `fsp_matrices`: the FSP matrices of teacher and student (Yim et al. 2017, eq. 1);
- `attention_maps`: the attention maps of each attention pair (Zagoruyko & Komodakis 2017, eq. 2);
- `series`: one metric over the run's global steps.
Features come out through the same `capture_intermediates` filters the losses use.
"""

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from fitnets_jax import checkpoint, data, experiment, files, hints, losses, metrics, teachers, train_step
from fitnets_jax import features as features_lib  # `features` below is this module's own function
from fitnets_jax.errors import check
from fitnets_jax.methods import fsp, shared
from fitnets_jax.network import forward
from fitnets_jax.tools import report


@dataclasses.dataclass
class Run:
  workdir: str
  config: Any
  experiment: Any
  summary: dict
  metrics: list  # metrics.jsonl records
  saved: dict = dataclasses.field(default_factory=dict, repr=False)  # (stage, when) → variables read once

  @property
  def stage_names(self):
    return [s.name for s in self.experiment.stages]

  def stage_index(self, name):
    check(
      name in self.stage_names,
      f"stage {name!r} is not a stage of the run in {self.workdir!r}; its stages: {', '.join(self.stage_names)}.",
    )
    return self.stage_names.index(name)


def open_run(workdir):
  """The finished run in `workdir` (summary.json, metrics.jsonl, config.json), with its experiment rebuilt;
  only read, so a read-only workdir (an archive, a mounted bucket) works too."""
  files = report.read_run(workdir)
  config = ml_collections.ConfigDict(files["config"])
  return Run(workdir, config, experiment.prepare(config, workdir, read_only=True), files["summary"], files["metrics"])


def test_batch(run, n=8):
  """The first `n` test examples, preprocessed as the run feeds them: {"image", "label"} (numpy)."""
  batch = next(data.eval_batches(run.experiment.data, n))
  return {"image": batch["image"], "label": batch["label"]}


def stage_variables(run, stage, when="end"):
  """{"params", "batch_stats"} of stage `stage` (trees keyed by network: "student", "regressor0", …)
  at its "start" or its "end"."""
  check(when in ("start", "end"), f"when={when!r}: choose 'start' or 'end'.")
  if (stage, when) not in run.saved:
    run.saved[stage, when] = _stage_variables(run, stage, when)
  return run.saved[stage, when]


def _stage_variables(run, stage, when):
  exp, index = run.experiment, run.stage_index(stage)
  st, rng, labels, tx = train_step.stage_setup(exp, index)
  if when == "start":
    previous = exp.stages[index - 1] if index else None
    carry = None
    if previous is not None and previous.trains not in exp.teachers:  # as the trainer hands stages on
      v = stage_variables(run, previous.name, "end")
      carry = previous.output(v["params"], v["batch_stats"])
    params, stats = st.init(rng, carry)
    return jax.device_get({"params": params, "batch_stats": stats})
  abstract = train_step.abstract_state(st, tx, rng, exp.mesh)
  end_step = train_step.stage_offsets(exp.stages)[index + 1]
  state = checkpoint.read_state(run.workdir, end_step, abstract)
  return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


def network_variables(stage_vars, name):
  """One network's flax variables out of a stage's variables."""
  return {"params": stage_vars["params"][name], "batch_stats": stage_vars["batch_stats"].get(name, {})}


def teacher_variables(run, role="teacher"):
  """Teacher `role`'s variables: loaded from the checkpoint the run used, or the one it trained."""
  exp = run.experiment
  check(
    role in exp.teachers,
    f"the run in {run.workdir!r} has no teacher {role!r}; its teachers: {', '.join(exp.teachers) or 'none'}.",
  )
  v = exp.teacher_variables.get(role) or teachers.load_teacher(
    files.join(run.workdir, role), exp.teachers[role].abstract_variables()
  )
  return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}


def features(net, variables, images, layers):
  """{layer: output} of `net` (a Network) in inference mode, as numpy."""
  _, feats, _ = forward(
    net, variables["params"], variables.get("batch_stats", {}), images, False, capture=tuple(layers)
  )
  return jax.device_get(feats)


def student_variables(run, when="end"):
  """The student's variables at the end of the run's last student stage (e.g. the KD stage)."""
  exp = run.experiment
  last = [s for s in exp.stages if s.trains not in exp.teachers][-1]
  return network_variables(stage_variables(run, last.name, when), last.trains)


def _hint_stage(run, pair):
  """(stage name, regressor key) of hint pair `pair`: one joint stage, or one stage per pair."""
  names = run.stage_names
  if "hint" in names:
    return "hint", f"regressor{pair}"
  return f"hint{pair + 1}", "regressor0"


def hint_maps(run, images, pair=0):
  """FitNets' hint stage seen through pair `pair`: ({label: maps}, {label: hint loss}).

  Maps: the teacher's hint (N, h, w, c), and the student's guided map through the regressor at the
  hint stage's start and end, r(v_g(x)); the loss is the run's hint loss (`hint.reduction`)."""
  exp = run.experiment
  pairs = hints.pairs(run.config, exp.student, exp.teachers)
  check(
    0 <= pair < len(pairs) and pairs[pair].regressor is not None,
    f"pair={pair}: the run has {len(pairs)} hint pair(s); pick one of kind 'regression'.",
  )
  p = pairs[pair]
  stage, key = _hint_stage(run, pair)
  hint = features(exp.teachers[p.teacher], teacher_variables(run, p.teacher), images, [p.hint.name])[p.hint.name]
  maps, loss = {f"teacher {p.hint.name}": hint}, {}
  for when, label in (("start", "before"), ("end", "after")):
    v = stage_variables(run, stage, when)
    guided = features(exp.student, network_variables(v, "student"), images, [p.guided.name])[p.guided.name]
    regressed = np.asarray(p.regressor.apply({"params": v["params"][key]}, guided))
    maps[f"student r({p.guided.name}), {label}"] = regressed
    loss[label] = float(losses.hint_loss(hint, regressed, hints.loss_options(run.config).reduction))
  return maps, loss


def frozen_check(run, stage="hint"):
  """[{variable, trained, max_change}] for every parameter and batch statistic of `stage`'s networks:
  whether the stage trains it (its parameter labels) and the largest change from start to end."""
  st = run.experiment.stages[run.stage_index(stage)]
  start, end = stage_variables(run, stage, "start"), stage_variables(run, stage, "end")
  labels = st.param_labels(start["params"])
  module_label = {features_lib.leaf_module(path): label for path, label in jax.tree_util.tree_leaves_with_path(labels)}
  order = {("student",) + l.path: i for i, l in enumerate(run.experiment.student.layers)}
  rows = []
  for kind in ("params", "batch_stats"):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(start[kind]), jax.tree.leaves(end[kind])):
      module = features_lib.leaf_module(path)
      rows.append(
        {
          "variable": f"{kind}/" + "/".join(str(k.key) for k in path),
          "trained": module_label.get(module) == "train",
          "max_change": float(np.max(np.abs(np.asarray(b, np.float64) - np.asarray(a, np.float64)))),
          "order": (kind != "params", order.get(module, len(order))),
        }
      )
  rows.sort(key=lambda r: r.pop("order"))  # in layer order, the regressors last
  return rows


def lambda_schedule(run, stage="kd"):
  """(steps, λ) of the FitNets KD loss over stage `stage` (`kd.lambda_*`), one value per step."""
  index = run.stage_index(stage)
  num_steps = run.experiment.stages[index].num_steps
  schedule = shared.lambda_schedule(run.config.kd, num_steps, run.experiment.steps_per_epoch)
  steps = np.arange(num_steps)
  return steps, np.asarray([float(schedule(s)) for s in steps])


def fsp_matrices(run, images, stage="fsp"):
  """{label: [G_i]}: the teacher's FSP matrices and the student's at the start and end of `stage`,
  one (m, n) matrix per section, averaged over `images` (Yim et al. eq. 1)."""
  exp = run.experiment
  t_points, s_points = fsp.section_points(exp.teacher, "teacher"), fsp.section_points(exp.student, "student")

  def matrices(net, variables, points):
    feats = features(net, variables, images, dict.fromkeys(l.name for point in points for l in point))
    return [np.asarray(losses.fsp_matrix(feats[a.name], feats[b.name]).mean(0)) for a, b in points]

  result = {"teacher": matrices(exp.teacher, teacher_variables(run), t_points)}
  for when, label in (("start", "student before"), ("end", "student after")):
    result[label] = matrices(exp.student, network_variables(stage_variables(run, stage, when), "student"), s_points)
  return result


def attention_maps(run, images, example=0):
  """{label: [(h, w) maps]}: the attention map Q of each attention pair's teacher layer and of the
  trained student's layer, for one example (Zagoruyko & Komodakis eq. 2), and the pairs' names."""
  exp = run.experiment
  pairs = [p for p in hints.pairs(run.config, exp.student, exp.teachers) if p.kind == "attention"]
  check(pairs, f"the run in {run.workdir!r} has no attention pair (hint kind 'attention').")
  x = images[example : example + 1]

  def maps(net, variables, layers):
    feats = features(net, variables, x, [l.name for l in layers])
    return [np.asarray(losses.attention_map(feats[l.name])).reshape(l.shape[:2]) for l in layers]

  by_teacher = {}
  for p in pairs:
    by_teacher.setdefault(p.teacher, []).append(p)
  result = {}
  for role, ps in by_teacher.items():
    result[role] = maps(exp.teachers[role], teacher_variables(run, role), [p.hint for p in ps])
  result["student"] = maps(exp.student, student_variables(run), [p.guided for p in pairs])
  return result, [p.name for p in pairs]


def series(run_or_records, key, split="test", stage=None):
  """[(step, value)] of metric `key` in the `split` records: global steps across stages, or, with
  `stage`, that stage's own steps."""
  records = run_or_records.metrics if isinstance(run_or_records, Run) else run_or_records
  return [
    (r["step"] if stage else step, r[key])
    for step, r in metrics.global_steps(records)
    if r.get("split") == split and key in r and stage in (None, r["stage"])
  ]

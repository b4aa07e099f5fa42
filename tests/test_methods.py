"""FSP, attention transfer, multi-teacher KD and several hint pairs: freezing, configs, resume."""

import os
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from fitnets_jax import FitnetsError, config, experiment, methods, parallel, train
from fitnets_jax.tools import explore, layers

from conftest import ROOT, load_config, tiny_digits, with_overrides
from helpers import (
  FIRST_STEP_RTOL,
  assert_same_numbers,
  assert_same_run,
  final_state,
  lower_every_stage,
  read_metrics,
  run_steps,
  without_timing,
)


def tiny(name, teacher=8, hint=4, student=8, **overrides):
  """configs/<name>.py shrunk to a few steps of batch 32 on the 4 test devices."""
  c = load_config(name)
  c.batch_size = 32
  c.log_every_steps = 4
  c.checkpoint_every_steps = 4
  c.keep_checkpoints = 100
  c.stages.teacher.steps, c.stages.hint.steps, c.stages.student.steps = teacher, hint, student
  return with_overrides(c, overrides)


def test_progressive_hints_train_each_phase_only_up_to_its_guided_layer(tmp_path):
  exp = experiment.prepare(tiny("multi_hint_digits"), str(tmp_path))
  assert [s.name for s in exp.stages] == ["teacher", "hint1", "hint2", "kd"]
  params, stats = exp.teacher.init(jax.random.PRNGKey(7))
  teacher = jax.device_put(
    {"teacher": {"params": params, "batch_stats": stats}, "mu": np.ones(1, np.float32)}, parallel.replicated(exp.mesh)
  )
  for stage, guided in zip(exp.stages[1:3], (3, 5)):
    before, after, _ = run_steps(exp, stage, teacher, 3)
    assert set(after.params) == {"student", "regressor0"}  # one regressor per phase
    for name, leaf in before.params["student"].items():
      same = jax.tree.all(jax.tree.map(np.array_equal, leaf, after.params["student"][name]))
      trained = name.startswith("conv") and int(name[4:]) <= guided
      assert same != trained, (stage.name, name)  # later layers untouched, bit for bit


def test_joint_hints_train_one_stage_on_the_weighted_sum(tmp_path):
  exp = experiment.prepare(tiny("multi_hint_digits", **{"hint.order": "joint"}), str(tmp_path))
  assert [s.name for s in exp.stages] == ["teacher", "hint", "kd"]
  state = exp.stages[1].init(jax.random.PRNGKey(0), None)[0]
  assert set(state) == {"student", "regressor0", "regressor1"}


def test_fsp_with_kd_swaps_the_second_stage(tmp_path):
  exp = experiment.prepare(tiny("fsp_digits", **{"fsp.kd": True}), str(tmp_path))
  assert [s.name for s in exp.stages] == ["teacher", "fsp", "kd"]


# The digits ResNet-14 teacher stands in for the configs' ResNet-20 here: same sections and
# channels, less compile time.
@pytest.mark.parametrize(
  "name,stages,overrides",
  [
    ("fsp_digits", ["teacher", "fsp", "ce"], {"teacher.model": "digits_resnet14"}),
    ("at_digits", ["teacher", "at"], {"teacher.model": "digits_resnet14"}),
    ("multi_hint_digits", ["teacher", "hint1", "hint2", "kd"], {}),
    (
      "digits",
      ["teacher", "hint", "kd"],
      {"hint.kind": "attention", "hint.student_layer": "conv5", "kd.attention": True},
    ),
  ],
)
def test_method_configs_run_data_parallel_on_digits(name, stages, overrides, tmp_path):
  summary = train.run(tiny(name, **overrides), str(tmp_path))
  assert list(summary["stages"]) == stages and summary["devices"] == 4
  assert summary["method"] == load_config(name).method
  assert np.isfinite(summary["stages"][stages[-1]]["final_train_loss"])
  records = read_metrics(str(tmp_path))
  assert {"fsp", "attention", "hint"} & set().union(*records)  # the method's own loss term is logged


def test_multi_teacher_weighs_by_validation_accuracy_and_names_every_teacher(tmp_path):
  config = tiny("multi_teacher_digits", **{"multi_teacher.weights": "accuracy", "dataset.validation_examples": 200})
  config.teachers[1]["model"] = "digits_resnet8"
  summary = train.run(config, str(tmp_path))
  assert list(summary["stages"]) == ["teacher1", "teacher2", "kd"]
  teachers = summary["teachers"]
  assert [t["model"] for t in teachers] == ["digits_teacher", "digits_resnet8"]
  accuracies = np.array([t["validation_accuracy"] for t in teachers])
  np.testing.assert_allclose([t["weight"] for t in teachers], accuracies / accuracies.sum(), rtol=1e-6)
  for t in teachers:
    assert os.path.isfile(os.path.join(t["checkpoint"], "network.json")) and t["test_accuracy"] is not None


def test_multi_teacher_hint_stage_takes_its_hint_from_the_named_teacher(tmp_path):
  config = tiny("multi_teacher_digits", **{"multi_teacher.hint_stage": True})
  config.teachers[1]["model"] = "digits_resnet8"
  config.hints = [dict(teacher_layer="section2", student_layer="conv5", teacher=1)]
  exp = experiment.prepare(config, str(tmp_path))
  assert [s.name for s in exp.stages] == ["teacher1", "teacher2", "hint", "kd"]
  params, stats = exp.teachers["teacher2"].init(jax.random.PRNGKey(7))
  teachers = {"teacher2": {"params": params, "batch_stats": stats}, "mu": np.ones(2, np.float32)}
  before, after, _ = run_steps(exp, exp.stages[2], jax.device_put(teachers, parallel.replicated(exp.mesh)), 2)
  assert after.params["regressor0"]["conv"]["kernel"].shape == (1, 1, 6, 16)  # 4×4×6 → section2's 4×4×16
  assert not np.array_equal(
    before.params["student"]["conv5"]["conv"]["kernel"], after.params["student"]["conv5"]["conv"]["kernel"]
  )


def test_multi_teacher_resumes_in_the_kd_stage_with_both_teachers_from_disk(tmp_path):
  def config():
    c = tiny(
      "multi_teacher_digits",
      teacher=8,
      student=12,
      num_devices=1,
      **{"multi_teacher.weights": "explicit", "multi_teacher.mu": [3.0, 1.0]},
    )
    c.teachers[1]["model"] = "digits_resnet8"
    return c

  full = str(tmp_path / "full")
  expected = train.run(config(), full)
  assert [t["weight"] for t in expected["teachers"]] == [0.75, 0.25]
  work = str(tmp_path / "resumed")
  shutil.copytree(full, work)
  for d in os.listdir(os.path.join(work, "checkpoints")):
    if d.isdigit() and int(d) > 20:  # keep kd step 4 (global 16 + 4)
      shutil.rmtree(os.path.join(work, "checkpoints", d))
  os.remove(os.path.join(work, "summary.json"))
  resumed = train.run(config(), work)
  (_, want), (_, got) = final_state(full), final_state(work)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  assert resumed["student"]["test_accuracy"] == expected["student"]["test_accuracy"]
  assert without_timing(read_metrics(work)) == without_timing(read_metrics(full))


PAPER_METHOD_STAGES = {
  "fsp_cifar10": ["teacher", "fsp", "ce"],
  "multi_teacher_svhn": ["teacher1", "teacher2", "kd"],
  "dml_cifar100": ["dml"],
  "byot_cifar100": ["byot"],
  "resnet_cifar": ["scratch"],
}


@pytest.mark.parametrize("name", list(PAPER_METHOD_STAGES))
def test_paper_method_configs_build_and_lower_every_stage(name, tmp_path):
  """The papers' networks (ResNet-26 → ResNet-8, WRNs, ResNet-18 with BYOT's exits, …), recipes and
  data pipelines under mock data, every stage lowered (helpers.lower_every_stage says why)."""
  config = tiny(
    name, teacher=2, hint=2, student=2, num_devices=1, batch_size=8, eval_batch_size=8, **{"dataset.stats_examples": 16}
  )
  if name == "multi_teacher_svhn":
    config.dataset.validation_examples = 8
  with tfds.testing.mock_data(num_examples=24):
    outputs = lower_every_stage(config, str(tmp_path))
  assert list(outputs) == PAPER_METHOD_STAGES[name]
  for loss, metrics in outputs.values():
    assert loss.shape == () and loss.dtype == np.float32 and "accuracy" in metrics


TOY_METHOD = """
    import ml_collections

    from fitnets_jax import methods
    from fitnets_jax.methods import shared

    def defaults():
      return {"toy": ml_collections.ConfigDict(dict(smoothing=0.1))}

    def toy_stage(ctx):
      import jax
      from fitnets_jax import losses
      from fitnets_jax.network import forward

      net, eps = ctx.student, ctx.config.toy.smoothing

      def loss(params, batch_stats, teacher, batch, rng, step):
        logits, _, stats = forward(net, params["student"], batch_stats["student"], batch["image"], True, rng)
        ce = (1 - eps) * losses.cross_entropy(logits, batch["label"]) - eps * jax.nn.log_softmax(logits).mean()
        return ce, ({"ce": ce, "accuracy": losses.accuracy(logits, batch["label"])}, {"student": stats})

      steps = ctx.steps("student")
      return shared.Stage(name="toy", trains="student", num_steps=steps, tx=ctx.optimizer("student", steps),
                          init=shared.network_init(net, "student"), loss=loss)

    METHOD = methods.Method(name="toy", stages=lambda ctx: [toy_stage(ctx)], defaults=defaults)
    {register}
"""


@pytest.fixture
def own_methods(monkeypatch, request):
  """The registry as it was before the test: methods registered or modules found in it are forgotten."""
  from fitnets_jax.methods import registry

  monkeypatch.setattr(registry, "_REGISTERED", {})
  monkeypatch.setattr(registry, "_BUILT_IN", {})
  request.addfinalizer(lambda: [sys.modules.pop(m, None) for m in ("toy_method", "fitnets_jax.methods.toy")])
  return registry


def test_a_method_registered_from_outside_the_package_trains_from_its_config(tmp_path, monkeypatch, own_methods):
  """One `register` call in a module of the user's own (no fork): the method is listed, its config
  section joins base_config (so --config.toy.smoothing works), and it trains."""
  (tmp_path / "toy_method.py").write_text(textwrap.dedent(TOY_METHOD).replace("{register}", "methods.register(METHOD)"))
  monkeypatch.syspath_prepend(str(tmp_path))
  import toy_method  # noqa: F401

  assert methods.names() == tuple(sorted([*own_methods._built_in(), "toy"]))
  assert config.base_config().toy.smoothing == 0.1
  c = tiny_digits(method="toy", student=4)
  assert "student: digits_student" in layers.report(c) and "hint" not in layers.report(c)
  summary = train.run(c, str(tmp_path / "toy"))
  assert list(summary["stages"]) == ["toy"] and summary["teacher"] is None
  assert {r["stage"] for r in read_metrics(str(tmp_path / "toy"))} == {"toy"}


def test_a_module_in_the_methods_folder_is_a_method_by_its_record_alone(tmp_path, monkeypatch, own_methods):
  folder = tmp_path / "more_methods"
  folder.mkdir()
  (folder / "toy.py").write_text(textwrap.dedent(TOY_METHOD).replace("{register}", ""))
  monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(folder)])
  assert "toy" in methods.names() and config.base_config().toy.smoothing == 0.1


@pytest.mark.parametrize(
  "record,message",
  [
    (dict(name="kd"), r"'kd' is a built-in method; choose another name"),
    (dict(name="my kd"), r"name='my kd'.*must be a Python identifier"),
    (dict(name="mine", teachers="two"), r"Method\(name='mine'\).teachers='two' is not valid"),
    (
      dict(name="mine", defaults=lambda: {"kd": {}, "byot": {}}),
      r"section\(s\) byot, kd already belong to byot, shared",
    ),
  ],
)
def test_a_method_that_would_clash_is_refused_when_registered(record, message, own_methods):
  with pytest.raises(FitnetsError, match=message):
    methods.register(methods.Method(stages=lambda ctx: [], **record))
  assert methods.names() == tuple(sorted(own_methods._built_in()))


def test_loading_a_config_and_every_method_never_imports_jax():
  """A mistake in a config is reported before JAX (or TensorFlow) loads: the config, the registry and
  every method module import neither (fitnets_jax.methods.registry says how a method keeps it so)."""
  script = (
    "import sys; from fitnets_jax import config, methods\n"
    "config.load('configs/digits.py'); [methods.get(n).defaults() for n in methods.names()]\n"
    "try: config.load('configs/digits.py', {'method': 'nope'})\n"
    "except Exception as e: print(type(e).__name__)\n"
    "print(sorted(m for m in ('jax', 'flax', 'optax', 'numpy', 'tensorflow', 'orbax') if m in sys.modules))"
  )
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True).stdout
  assert out.split() == ["FitnetsError", "[]"], out


def test_the_docs_method_of_your_own_registers_and_trains(tmp_path, own_methods):
  page = open(os.path.join(ROOT, "docs", "methods.md")).read()
  snippet = next(b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "methods.register" in b)
  exec(compile(snippet, "docs/methods.md", "exec"), {})
  summary = train.run(tiny_digits(method="ce_only", student=2), str(tmp_path))
  assert list(summary["stages"]) == ["ce"] and np.isfinite(summary["stages"]["ce"]["final_train_loss"])


def test_a_method_named_by_its_module_on_the_command_line_brings_its_sections(tmp_path, monkeypatch, own_methods):
  """--config.method=package.module:ATTRIBUTE: the record is imported and registered, its own config
  section joins the config before the other overrides (so --config.toy.smoothing=… works), and it trains."""
  (tmp_path / "toy_cli.py").write_text(textwrap.dedent(TOY_METHOD).replace("{register}", ""))
  monkeypatch.syspath_prepend(str(tmp_path))
  overrides = [("method", "toy_cli:METHOD"), ("toy.smoothing", "0.25"), ("num_devices", "1")]
  overrides += [("stages.student.steps", "2"), ("batch_size", "32")]
  c = config.from_command_line("configs/digits.py", overrides)
  assert c.toy.smoothing == 0.25 and "toy" in methods.names()
  summary = train.run(c, str(tmp_path / "run"))
  assert summary["method"] == "toy_cli:METHOD" and list(summary["stages"]) == ["toy"]
  with pytest.raises(FitnetsError, match=r"method='toy_cli:NOPE': AttributeError.*'package.module:ATTRIBUTE'"):
    config.load("configs/digits.py", {"method": "toy_cli:NOPE"})


CATALOGUE_TERMS = {  # each catalogue method and the terms it logs
  "dkd": ("tckd", "nckd"),
  "sp": ("sp",),
  "pkt": ("pkt",),
  "rkd": ("rkd",),
  "nst": ("nst",),
  "vid": ("vid",),
  "cc": ("cc",),
  "ft": ("ft",),
  "crd": ("crd",),
  "reviewkd": ("reviewkd",),
  "ofd": ("ofd",),
  "ab": ("ab",),
  "kdsvd": ("kdsvd",),
}
STAGES = {"ft": ["paraphraser", "ft"], "ab": ["ab", "kd"]}  # the two-stage methods; the others train one stage


@pytest.mark.parametrize("method", list(CATALOGUE_TERMS))
def test_catalogue_methods_give_the_same_numbers_on_one_and_four_devices_and_resume(method, tmp_path, capsys):
  """Each catalogue method (its loss against NumPy in test_conventions.py) trains on digits from one saved
  teacher: on 1 and 4 devices alike (float sums reassociate across devices: helpers.assert_same_numbers
  states the tolerances), logging its own terms; and the 1-device run, rolled back to a checkpoint two
  steps before its end as a run killed there leaves it, resumes, the method's own trained heads (VID's
  regressors, CC's embeddings, CRD's memory banks) included, to the uninterrupted run's parameters and
  metrics bit for bit (same device count, same compiled step). The real SIGKILL of the command line is
  test_faults.py's: the checkpoint layer does not depend on the method."""
  from fitnets_jax import saved

  config = load_config(f"{method}_digits")
  teacher = experiment.build_network("teacher", config.teacher, 10, (8, 8, 1))  # every run distils from it
  params, stats = teacher.init(jax.random.PRNGKey(3))
  saved.save_network(str(tmp_path), "teacher", {"params": params, "batch_stats": stats}, teacher.describe())

  def run(n, name):
    config = load_config(f"{method}_digits")
    overrides = {"num_devices": n, "batch_size": 32, "log_every_steps": 1, "teacher.checkpoint": str(tmp_path)}
    if method == "reviewkd":  # mdistiller's 1-based epochs: the authors' first epoch has no review term
      overrides["reviewkd.first_epoch"] = 1
    with_overrides(
      config, {**overrides, "stages.hint.steps": 3, "stages.student.steps": 6, "checkpoint_every_steps": 2}
    )
    return train.run(config, str(tmp_path / name))

  runs = {}
  for n in (1, 4):
    assert list(run(n, f"d{n}")["stages"]) == STAGES.get(method, [method])
    runs[n] = read_metrics(str(tmp_path / f"d{n}"))
  # NST's MMD² is k(t,t) + k(s,s) − 2·k(s,t): three kernel means (0.61, 0.69 and 0.59 on these nets at
  # initialisation: maxout patterns are positive, so nearly aligned) whose difference is 0.11. The
  # cancellation multiplies the features' relative last-bit differences (XLA's convolutions block a
  # per-device batch of 8 and one of 32 differently) by about (0.61 + 0.69 + 1.19) / 0.11 ≈ 22
  # (measured: 2e-5 at the first step).
  # AB's and OFD's losses switch at a teacher pre-activation of exactly 0 ((s + μ)² against (s − μ)²;
  # (s − t)² counted or not). Their teacher runs in training mode, so its batch statistics, and every
  # feature, differ across device counts by reassociated sums (≈ 1e-7): an element that close to 0 flips
  # its term, a jump of ≈ 4e-4 of AB's loss and ≈ 1e-5 of OFD's. With ~29k teacher values a step the
  # chance is ≈ 0.2 % a run (none seen here), so their first step holds to 1e-3; later steps to 1e-2.
  first_step_rtol = {"nst": 1e-4, "ab": 1e-3, "ofd": 1e-3}.get(method, FIRST_STEP_RTOL)
  assert_same_numbers(runs[1], runs[4], first_step_rtol=first_step_rtol)
  train_records = [r for r in runs[1] if r["split"] == "train" and r["stage"] == method]
  terms = CATALOGUE_TERMS[method]
  logged = 3 if STAGES.get(method, [None])[0] == method else 6  # AB's first stage runs stages.hint's 3 steps
  assert len(train_records) == logged and all(np.isfinite(r[t]) for r in train_records for t in terms)
  if method != "vid":  # VID's term is a negative log-likelihood up to a constant: it may go below 0
    assert all(r[t] >= 0 for r in train_records for t in terms)
  for one, four in zip(runs[1], runs[4]):
    for t in terms:
      if t in one:
        assert four[t] == pytest.approx(one[t], rel=1e-2, abs=1e-6), (t, one, four)
  if method in ("dkd", "reviewkd"):
    assert all(r["warmup"] == pytest.approx(1 / 2.0) for r in train_records)  # epoch 1 of a 2-epoch warm-up

  if method == "ft":  # the paraphraser trained in its stage, then stayed frozen through the student's
    run_1 = explore.open_run(str(tmp_path / "d1"))
    trained = explore.stage_variables(run_1, "paraphraser")["params"]["paraphraser"]
    kept = explore.stage_variables(run_1, "ft")["params"]["distiller"]["paraphraser"]
    start = explore.stage_variables(run_1, "paraphraser", "start")["params"]["paraphraser"]
    jax.tree.map(np.testing.assert_array_equal, kept, trained)
    assert not np.array_equal(trained["conv1"]["kernel"], start["conv1"]["kernel"])

  if method == "ab":  # the classifier stayed frozen (and uncomputed) through the boundaries' stage
    run_1 = explore.open_run(str(tmp_path / "d1"))
    start, end = (explore.stage_variables(run_1, "ab", *at)["params"]["student"] for at in (("start",), ()))
    np.testing.assert_array_equal(end["logits"]["kernel"], start["logits"]["kernel"])
    deepest = lambda tree: tree["section3"]["block1"]["conv2"]["kernel"]
    assert not np.array_equal(deepest(end), deepest(start))

  work = tmp_path / "resumed"
  shutil.copytree(tmp_path / "d1", work)
  steps = sorted(int(d) for d in os.listdir(work / "checkpoints") if d.isdigit())
  for step in steps:
    if step > steps[-1] - 2:  # two steps before the end: mid-stage (the second stage's, for FT and AB)
      shutil.rmtree(work / "checkpoints" / str(step))
  os.remove(work / "summary.json")
  capsys.readouterr()
  run(1, "resumed")
  assert f"Resuming from {work}: stage {STAGES.get(method, [method])[-1]!r} at step 4/6" in capsys.readouterr().out
  assert_same_run(str(work), str(tmp_path / "d1"))

"""Bad input: a FitnetsError naming the key or file and what is valid, before any training step,
with nothing written to the workdir; and the command line prints it without a traceback."""

import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from fitnets_jax import FitnetsError, experiment, methods, saved, train

from conftest import ROOT, tiny_digits
from helpers import write_npz


class Npz:
  """A malformed .npz the test writes: helpers.write_npz with these arrays replaced (None: dropped)."""

  def __init__(self, **arrays):
    self.arrays = arrays


class Raw:
  """A value of the wrong type, as a config built from a plain dict (not through ConfigDict's typed
  assignment) would carry it."""

  def __init__(self, value):
    self.value = value


NPZ = {"dataset.name": "npz", "eval_batch_size": 10}
CASES = [
  # layers and shapes
  (
    {"hint.student_layer": "conv99"},
    r"hint.student_layer='conv99' is not a layer of model 'digits_student'.*Valid names",
  ),
  ({"hint.teacher_layer": "fc/dens"}, r"hint.teacher_layer='fc/dens' is not a layer of model 'digits_teacher'"),
  ({"hint.student_layer": "conv10"}, r"hint.student_layer='conv10' gives a 2×2 map, smaller than the 4×4 map"),
  ({"hint.student_layer": "fc"}, r"needs two feature maps"),
  (
    {"method": "sp", "sp.student_layer": "conv99"},
    r"sp.student_layer='conv99' is not a layer of student.model='digits_student'; valid: .*or '' for the layer",
  ),
  ({"method": "dkd", "dkd.warmup_epochs": 0.0}, r"dkd.warmup_epochs=0.0 must be > 0"),
  ({"method": "kdsvd"}, r"kdsvd relates consecutive guided layers, so it needs at least two hint pairs; 1 configured"),
  ({"method": "crd", "crd.momentum": 1.0}, r"crd.momentum=1.0 must be in \[0, 1\)"),
  (
    {"method": "reviewkd"},
    r"student.model='digits_student' has no sections; reviewkd reads each section's output.*reviewkd.student_layers",
  ),
  (
    {
      "method": "ofd",
      "teacher.model": "digits_resnet20",
      "student.model": "digits_resnet8",
      "ofd.teacher_layers": ["section1", "section2", "section3"],
    },
    r"OFD's level 'section1' of teacher.model='digits_resnet20' is not a post-activation block's `preact` after a BN",
  ),
  ({"method": "ab", "ab.teacher_mode": "eval"}, r"ab.teacher_mode='eval'.*'train'.*'inference'"),
  # names
  ({"teacher.checkpoint": "/nonexistent/run"}, r"teacher.checkpoint='/nonexistent/run' holds no saved teacher"),
  (
    {"dataset.name": "imagenet"},
    r"dataset.name='imagenet' is neither one of 'digits', 'npz', 'arrays' nor a TFDS dataset",
  ),
  (
    {"method": "distill"},
    r"method='distill' is not valid; choose one of: " + re.escape(", ".join(map(repr, methods.names()))),
  ),
  ({"student.model": "vgg17"}, r"student.model='vgg17' is not a known model"),
  ({"teacher.model": "vgg"}, r"teacher.model='vgg' is not a known model"),
  ({"stages.teacher.optimizer.name": "lion"}, r"stages.teacher.optimizer.name='lion' is not valid"),
  ({"stages.student.optimizer.schedule": "step"}, r"stages.student.optimizer.schedule='step' is not valid"),
  (
    {"stages.student.optimizer.schedule": "linear"},
    r"boundaries_epochs=\[0.0\]: schedule='linear' takes \[begin, end\] epochs",
  ),
  (
    {"stages.teacher.optimizer.momentum_final": 0.7},
    r"the momentum ramp is for name='sgd' \(got 'adam'\)",
  ),
  ({"kd.loss": "mse"}, r"kd.loss='mse' is not valid; choose one of: 'fitnets', 'hinton'"),
  ({"dataset.preprocess": "pca"}, r"dataset.preprocess='pca' is not valid"),
  ({"on_nan": "ignore"}, r"on_nan='ignore' is not valid; choose one of: 'stop', 'skip_step'"),
  # types
  ({"batch_size": Raw("64")}, r"batch_size='64' has the wrong type; it must be an integer \(the default is 128\)"),
  ({"seed": None}, r"seed=None has the wrong type; it must be an integer"),
  # ranges that used to fail late: after config.json was written, or after a whole stage
  ({"seed": -1}, r"seed=-1 must be an integer in 0 … 2147483647"),
  ({"eval_batch_size": 10**9}, r"eval_batch_size=1000000000: one batch of \(8, 8, 1\) float32 images takes 238.4 GiB"),
  ({"stages.student.steps": 10**19}, r"stages.student would run 1e\+19 steps .* at most 2147483647"),
  (
    {"stages.student.optimizer.learning_rate": Raw("0.1")},
    r"learning_rate='0.1' has the wrong type; it must be a number",
  ),
  ({"stages.hint.epochs": None}, r"stages.hint.epochs=None has the wrong type; it must be a number"),
  ({"dataset.flip": Raw("yes")}, r"dataset.flip='yes' has the wrong type; it must be a boolean"),
  ({"hint.student_layer": Raw(5)}, r"hint.student_layer=5 has the wrong type; it must be a string"),
  # ranges
  ({"teacher.dropout": 1.5}, r"teacher.dropout=1.5 must be in \[0, 1\)"),
  (
    {"batch_size": 30, "num_devices": 4},
    r"batch_size=30 cannot be split evenly over the 4 devices .* such as "
    r"28 or 32, or set num_devices",
  ),
  ({"batch_size": 2, "num_devices": 4}, r"batch_size=2 cannot be split .* a multiple of 4, such as 4, or"),
  ({"num_devices": 64}, r"num_devices=64 but JAX sees only 4 device"),
  ({"num_devices": -1}, r"num_devices=-1 must be ≥ 0"),
  ({"batch_size": 0}, r"batch_size=0 must be a positive integer"),
  ({"batch_size": -32}, r"batch_size=-32 must be a positive integer"),
  ({"eval_batch_size": 0}, r"eval_batch_size=0 must be a positive integer"),
  ({"log_every_steps": 0}, r"log_every_steps=0 must be a positive integer"),
  ({"checkpoint_every_steps": -1}, r"checkpoint_every_steps=-1 must be a positive integer"),
  ({"keep_checkpoints": 0}, r"keep_checkpoints=0 must be a positive integer"),
  ({"eval_every_steps": -5}, r"eval_every_steps=-5 must be ≥ 0"),
  ({"batch_size": 5000}, r"batch_size=5000 is larger than the 1437 training examples"),
  ({"stages.hint.steps": 0, "stages.hint.epochs": 0.0}, r"stages.hint would run 0 steps"),
  ({"stages.student.steps": -3}, r"stages.student: steps=-3"),
  ({"stages.teacher.steps": 0, "stages.teacher.epochs": -2.0}, r"stages.teacher: steps=0 and epochs=-2.0 must be ≥ 0"),
  ({"stages.student.optimizer.learning_rate": 0.0}, r"stages.student.optimizer.learning_rate=0.0 must be > 0"),
  ({"stages.hint.optimizer.learning_rate": -0.01}, r"stages.hint.optimizer.learning_rate=-0.01 must be > 0"),
  ({"stages.student.optimizer.weight_decay": -1e-4}, r"stages.student.optimizer.weight_decay=-0.0001 must be ≥ 0"),
  ({"kd.lambda_start": 1.0, "kd.lambda_end": 4.0}, r"kd.lambda_start=1.0 → kd.lambda_end=4.0.*anneals λ downwards"),
  ({"kd.lambda_end": -1.0}, r"kd.lambda_start=4.0 → kd.lambda_end=-1.0"),
  ({"kd.temperature": 0.0}, r"kd.temperature=0.0 must be > 0"),
  ({"kd.alpha": 1.5}, r"kd.alpha=1.5 must be in \[0, 1\]"),
  ({"dataset.shift": -2}, r"dataset.shift=-2 must be an integer ≥ 0"),
  ({"dataset.stats_examples": -1}, r"dataset.stats_examples=-1 must be an integer ≥ 0"),
  (
    {"dataset.mean": [0.5, 0.5, 0.5], "dataset.std": [0.2, 0.2, 0.2]},
    r"dataset.mean=\[0.5, 0.5, 0.5\].*per channel \(1\)",
  ),
  # datasets
  ({"dataset.name": "npz", "dataset.path": ""}, r"dataset.name='npz' needs dataset.path"),
  ({**NPZ, "dataset.path": "MISSING"}, r"dataset.path=.*missing.npz' does not exist"),
  ({**NPZ, "dataset.path": "JUNK"}, r"dataset.path=.*could not be read as an .npz"),
  ({**NPZ, "dataset.path": Npz(test_labels=None)}, r"dataset.path=.* lacks test_labels"),
  ({**NPZ, "dataset.path": Npz(train_images=np.zeros((40, 6, 6), np.uint8))}, r"train_images in .* must be NHWC"),
  (
    {**NPZ, "dataset.path": Npz(train_images=np.zeros((40, 6, 6, 3), np.float32))},
    r"has dtype float32; it must be uint8",
  ),
  (
    {**NPZ, "dataset.path": Npz(test_labels=np.full(10, 7))},
    r"test_labels .* range over 7..7; labels must lie in 0..3",
  ),
  ({**NPZ, "dataset.path": Npz(train_labels=np.full(40, -1))}, r"train_labels .* range over -1"),
  (
    {**NPZ, "dataset.path": Npz(test_images=np.zeros((0, 6, 6, 3), np.uint8), test_labels=np.zeros(0, int))},
    r"test_images .* is empty",
  ),
  ({**NPZ, "dataset.path": Npz(train_labels=np.zeros(39, int))}, r"39 labels for 40 images"),
  ({**NPZ, "dataset.path": Npz(test_images=np.zeros((10, 5, 5, 3), np.uint8))}, r"same image shape"),
  ({**NPZ, "dataset.path": Npz(train_labels=np.zeros(40, np.float32))}, r"must be a 1-D integer array"),
  ({"workdir": "UNWRITABLE"}, r"--workdir=.* cannot be written \(NotADirectoryError"),
  ({"dataset.validation_examples": -5}, r"dataset.validation_examples=-5 must be ≥ 0"),
  # FSP, attention, several hints and teachers
  (
    {"method": "fsp", "teacher.model": "digits_resnet20", "student.model": "digits_resnet8x2"},
    r"FSP section 1 \(stem → section1\) gives 8×16 matrices in the student but 8×8 in the teacher",
  ),
  ({"method": "fsp"}, r"student.model='digits_student' has no sections; FSP compares"),
  ({"hint.kind": "attention", "hint.student_layer": "fc"}, r"hint: attention transfer needs two feature maps"),
  (
    {**NPZ, "dataset.path": Npz(), "hint.kind": "attention", "hint.student_layer": "conv10"},
    r"hint: attention maps of 'conv2' \(3×3\) and 'conv10' \(2×2\) cannot be compared",
  ),
  ({"method": "at"}, r"method='at' trains on attention pairs, but hint has kind 'regression'"),
  ({"kd.attention": True}, r"kd.attention=True adds the attention pairs' loss, but no hint pair has kind='attention'"),
  (
    {"hints": [dict(teacher_layer="conv2", student_layer="conv5"), dict(teacher_layer="conv1", student_layer="conv3")]},
    r"hint.order='progressive' .* from shallow to deep; got \['conv5', 'conv3'\]",
  ),
  (
    {"hints": [dict(teacher_layer="conv2", student_layer="conv5", depth=3)]},
    r"hints\[0\] has unknown keys \['depth'\]",
  ),
  ({"hints": [dict(teacher_layer="conv2", student_layer="conv5", teacher=1)]}, r"hints\[0\].teacher=1 must index"),
  ({"hints": [dict(teacher_layer="conv2", student_layer="conv5", weight=-1.0)]}, r"hints\[0\].weight=-1.0 must be"),
  ({"method": "multi_teacher"}, r"method='multi_teacher' needs config.teachers: a non-empty list"),
  ({"method": "kd", "teachers": [dict(model="digits_teacher")]}, r"config.teachers lists several teachers, but"),
  (
    {
      "method": "multi_teacher",
      "teachers": [dict(model="digits_teacher"), dict(model="digits_resnet8")],
      "multi_teacher.weights": "explicit",
      "multi_teacher.mu": [-1.0, 2.0],
    },
    r"weights must be ≥ 0 and not all zero",
  ),
  (
    {
      "method": "multi_teacher",
      "teachers": [dict(model="digits_teacher"), dict(model="digits_resnet8")],
      "multi_teacher.weights": "explicit",
      "multi_teacher.mu": [0.0, 0.0],
    },
    r"mu=\[0.0, 0.0\]: weights must be ≥ 0 and not all",
  ),
  (
    {
      "method": "multi_teacher",
      "teachers": [dict(model="digits_teacher")],
      "multi_teacher.weights": "explicit",
      "multi_teacher.mu": [1.0, 1.0],
    },
    r"must hold one weight per teacher \(1\)",
  ),
  (
    {"method": "multi_teacher", "teachers": [dict(model="digits_teacher")], "multi_teacher.weights": "accuracy"},
    r"needs a validation split held out of training: set dataset.validation_examples",
  ),
  (
    {"method": "multi_teacher", "teachers": [dict(model="digits_teacher", lr=0.1)]},
    r"teachers\[0\] has unknown keys \['lr'\]",
  ),
  ({"method": "multi_teacher", "teachers": [dict(model="vgg17")]}, r"teachers\[0\].model='vgg17' is not a known model"),
  (
    {"method": "multi_teacher", "teachers": [dict(model="digits_teacher", epochs="ten")]},
    r"teachers\[0\].epochs='ten' has the wrong type",
  ),
  # mutual learning and self-distillation
  ({"method": "dml"}, r"method='dml' trains a cohort of K ≥ 2 networks, but config.cohort lists 0"),
  ({"method": "dml", "cohort": [dict(model="digits_resnet8")]}, r"config.cohort lists 1; give at least two"),
  (
    {"method": "dml", "cohort": [dict(model="digits_resnet8"), dict(model="mobilenet")]},
    r"cohort\[1\].model='mobilenet' is not a known model",
  ),
  (
    {"method": "dml", "cohort": [dict(model="digits_resnet8"), dict(model="digits_resnet8", lr=0.1)]},
    r"cohort\[1\] has unknown keys \['lr'\]; valid: model, dropout, optimizer",
  ),
  (
    {"method": "dml", "cohort": [dict(model="digits_resnet8"), "digits_resnet8"]},
    r"cohort\[1\]='digits_resnet8' must be a dict",
  ),
  (
    {"method": "dml", "cohort": [dict(model="digits_resnet8"), dict(model="digits_resnet8", optimizer=dict(lr=1))]},
    r"cohort\[1\].optimizer.lr is not an optimizer key",
  ),
  (
    {"method": "dml", "cohort": [dict(model="digits_resnet8")] * 2, "dml.order": "random"},
    r"dml.order='random' is not valid",
  ),
  ({"method": "kd", "cohort": [dict(model="digits_resnet8")] * 2}, r"config.cohort is set, but method='kd'"),
  (
    {"method": "byot"},
    r"method='byot' puts an exit after each section of the student, but student.model='digits_student' has no",
  ),
  (
    {"method": "byot", "student.model": "digits_resnet8", "byot.feature": "cosine"},
    r"byot.feature='cosine' is not valid",
  ),
  ({"method": "byot", "student.model": "digits_resnet8", "byot.alpha": 1.5}, r"byot.alpha=1.5 must be in \[0, 1\]"),
  (
    {"dataset.shift": 8, "dataset.pad_mode": "reflect"},
    r"dataset.shift=8 with pad_mode='reflect' needs a shift smaller",
  ),
  # speed options
  (
    {"teacher.cache": True, "dataset.shift": 1},
    r"teacher.cache=True needs an input pipeline without random "
    r"augmentation.*dataset.shift=1.*Set dataset.flip=False",
  ),
  ({"teacher.cache": True, "dataset.flip": True}, r"teacher.cache=True needs .* dataset.flip=True"),
  (
    {"teacher.cache": True, "method": "scratch"},
    r"teacher.cache=True stores a teacher's outputs, but "
    r"method='scratch' uses no teacher",
  ),
  ({"teacher.cache": True, "teacher.cache_budget_mb": -1.0}, r"teacher.cache_budget_mb=-1.0 must be ≥ 0"),
  ({"dtype": "float16"}, r"dtype='float16' is not valid"),
]


def materialize(value, tmp_path):
  if isinstance(value, Npz):
    return write_npz(tmp_path / "bad.npz", **value.arrays)
  if value in ("MISSING", "JUNK"):
    (tmp_path / "junk.npz").write_text("not a zip archive")
    return str(tmp_path / ("missing.npz" if value == "MISSING" else "junk.npz"))
  return value


def bad_config(overrides, tmp_path):
  """The tiny digits config with `overrides`; a Raw value goes in through a plain dict."""
  typed = {k: materialize(v, tmp_path) for k, v in overrides.items() if not isinstance(v, Raw) and k != "workdir"}
  config = tiny_digits(**typed)
  raw = {k: v.value for k, v in overrides.items() if isinstance(v, Raw)}
  if raw:
    tree = config.to_dict()
    for key, value in raw.items():
      *parents, leaf = key.split(".")
      node = tree
      for p in parents:
        node = node[p]
      node[leaf] = value
    config = ml_collections.ConfigDict(tree)
  return config


def case_id(case):
  key, value = next(iter(case[0].items())) if "dataset.path" not in case[0] else ("npz", case[0]["dataset.path"])
  if key in ("hints", "teachers", "method", "cohort", "dataset.shift") and len(case[0]) > 1:
    key, value = "+".join(case[0]), len(case[0])
  if isinstance(value, Npz):
    value = ",".join(f"{k}={'dropped' if v is None else getattr(v, 'shape', v)}" for k, v in value.arrays.items())
  return f"{key}={getattr(value, 'value', value)}"


@pytest.mark.parametrize("overrides,message", CASES, ids=[case_id(c) for c in CASES])
def test_bad_input_is_a_clear_error_before_anything_is_written(overrides, message, tmp_path):
  config = bad_config(overrides, tmp_path)
  workdir = tmp_path / "run"
  if overrides.get("workdir") == "UNWRITABLE":
    (tmp_path / "a_file").write_text("")
    workdir = tmp_path / "a_file" / "run"
  with pytest.raises(FitnetsError, match=message) as info:
    train.run(config, str(workdir))
  assert "\n" not in str(info.value).strip()  # one paragraph
  assert "Traceback" not in str(info.value)
  assert not workdir.exists()  # nothing written, no step taken


def test_the_table_is_wide():
  assert len(CASES) >= 30


def test_teacher_checkpoint_of_another_architecture(tmp_path):
  teacher_run = str(tmp_path / "teacher")  # a saved digits_teacher, as a run's teacher stage leaves it
  teacher = experiment.build_network("teacher", tiny_digits().teacher, 10, (8, 8, 1))
  params, stats = teacher.init(jax.random.PRNGKey(0))
  saved.save_network(teacher_run, "teacher", {"params": params, "batch_stats": stats}, teacher.describe())
  with pytest.raises(FitnetsError, match=r"holds a 'digits_teacher' teacher but teacher.model='digits_student'"):
    experiment.prepare(
      tiny_digits("kd", **{"teacher.checkpoint": teacher_run, "teacher.model": "digits_student"}), str(tmp_path / "x")
    )
  # Same architecture name, other class count: the first mismatched parameter is named with both shapes.
  npz = tmp_path / "three.npz"
  rng = np.random.default_rng(0)
  np.savez(
    npz,
    train_images=rng.integers(0, 255, (64, 8, 8, 1), dtype=np.uint8),
    train_labels=np.arange(64) % 3,
    test_images=rng.integers(0, 255, (8, 8, 8, 1), dtype=np.uint8),
    test_labels=np.arange(8) % 3,
  )
  with pytest.raises(
    FitnetsError,
    match=r"parameter \['params'\]\['logits'\]\['bias'\] has shape \(10,\) in the "
    r"checkpoint but \(3,\) in the model",
  ):
    experiment.prepare(
      tiny_digits(
        **{"teacher.checkpoint": teacher_run, "dataset.name": "npz", "dataset.path": str(npz), "eval_batch_size": 8}
      ),
      str(tmp_path / "y"),
    )


def run_cli(*args, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "fitnets_jax.main", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
  )


def assert_one_paragraph(result, *fragments):
  """Exit status 2, one `error:` line holding every fragment, and no traceback."""
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]
  assert "Traceback" not in result.stderr


def test_cli_prints_one_error_paragraph_and_exits_2(tmp_path):
  result = run_cli(
    "--config", "configs/digits.py", "--workdir", str(tmp_path / "w"), "--config.hint.student_layer=conv99"
  )
  assert_one_paragraph(result, "hint.student_layer='conv99' is not a layer")
  assert not (tmp_path / "w").exists()


CONFIG_FILES = {
  "empty.py": "",
  "raises.py": "def get_config():\n  return {}['batch_size']\n",
  "returns_none.py": "def get_config():\n  pass\n",
  "syntax.py": "def get_config(:\n",
}

# Each a one-paragraph error with exit 2 before JAX, TensorFlow or the data are loaded (a config file's
# own failure names the file and, where there is one, its line).
CLI_CASES = [
  (["--config.batchsize=32"], ["'batchsize' is not a key", "did you mean 'batch_size'?"]),
  (["--config.stages.studnet.epochs=1"], ["'stages.studnet' is not a key", "did you mean 'student'?"]),
  (["--config.hint.studnet_layer=conv3"], ["did you mean 'student_layer'?"]),
  (["--config.batch_size=many"], ["--config.batch_size=many: batch_size is an integer"]),
  (["--config.dataset.flip=maybe"], ["dataset.flip is a boolean; write true or false"]),
  (["--config.stages.hint.epochs"], ["--config.stages.hint.epochs needs a value"]),
  (["--config=configs/no_such.py"], ["config file", "no_such.py' does not exist"]),
  (["--config=FILE:empty.py"], ["empty.py' defines no get_config()"]),
  (["--config=FILE:raises.py"], ["raises.py' failed at line 2 while running get_config (KeyError: 'batch_size')"]),
  (["--config=FILE:returns_none.py"], ["returns_none.py': get_config() returned NoneType, not an ml_collections"]),
  (["--config=FILE:syntax.py"], ["syntax.py' failed", "while loading (SyntaxError"]),
  (["--seeds=-1"], ["--seeds=-1 must be ≥ 0"]),
  (["--config.method=nope"], ["method='nope' is not valid; choose one of: 'ab', 'at'"]),
  (["--config.stages.kd.steps=3"], ["'stages.kd' is not a key", "configured as stages.student"]),
  (["--config.stages.fsp.epochs=3"], ["'stages.fsp' is not a key", "configured as stages.hint"]),
  (["stray"], ["unexpected argument(s) 'stray'", "--help lists them"]),
  (["--config="], ["--config is required, e.g. --config configs/digits.py"]),
]


@pytest.mark.parametrize("args,fragments", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_errors_are_one_paragraph_before_any_loading(args, fragments, tmp_path):
  for name, text in CONFIG_FILES.items():
    (tmp_path / name).write_text(text)
  args = [a.replace("FILE:", str(tmp_path) + "/") for a in args]
  if not any(a.startswith("--config=") for a in args):  # "--config=" alone: as if not given
    args = ["--config=configs/digits.py", *args]
  result = run_cli(*args, "--workdir", str(tmp_path / "w"))
  assert_one_paragraph(result, *fragments)
  assert not (tmp_path / "w").exists()
  assert "JAX" not in result.stdout, result.stdout  # refused before JAX started (it prints its backend)


COMMANDS = [
  "main",
  "tools.layers",
  "tools.export",
  "tools.benchmark",
  "tools.depth_sweep",
  "tools.report",
  "tools.install",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_prints_its_help_and_flags_with_exit_0(command):
  result = subprocess.run(
    [sys.executable, "-m", f"fitnets_jax.{command}", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-2000:]
  flags = re.findall(r"^\s*(?:-\w, )?(--[a-z_]+)", result.stdout, flags=re.M)
  assert flags, result.stdout
  if command in ("main", "tools.layers", "tools.benchmark", "tools.depth_sweep"):
    assert "--config" in flags and "--config.KEY=VALUE" in result.stdout


def test_a_missing_workdir_is_refused_before_the_config_is_even_loaded():
  result = run_cli("--config=configs/digits.py", "--config.batch_size=16")
  assert_one_paragraph(result, "--workdir is required")
  assert "JAX" not in result.stdout


def test_images_with_nothing_to_learn_are_named_at_start(tmp_path, capsys):
  from fitnets_jax import data

  rng = np.random.default_rng(0)
  cases = {
    "constant": (np.full((40, 6, 6, 3), 128, np.uint8), "every training image is the same"),
    "one pixel": (rng.integers(0, 256, (40, 1, 1, 3), dtype=np.uint8), "the images are 1×1 pixels"),
    "fine": (rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8), None),
  }
  for name, (images, warning) in cases.items():
    path = write_npz(tmp_path / f"{name.replace(' ', '_')}.npz", train_images=images, test_images=images[:10])
    capsys.readouterr()
    data.load(tiny_digits(**{"dataset.name": "npz", "dataset.path": path}).dataset)
    err = capsys.readouterr().err
    if warning:
      assert err.startswith("warning: dataset 'npz': ") and warning in err and "Expect chance accuracy" in err, err
    else:
      assert "warning" not in err, err

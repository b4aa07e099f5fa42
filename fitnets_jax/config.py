"""Every config key the trainer reads, with defaults; `configs/*.py` start from `base_config()`.

A run is described by one locked `ml_collections.ConfigDict`, so `--config.key=value` can
override anything and a typo fails with a "did you mean" suggestion.
"""

import ast
import difflib
import importlib.resources
import importlib.util
import json
import os
import sys
import traceback

import ml_collections

from fitnets_jax import files
from fitnets_jax.errors import FitnetsError

# Max-norm limits of the maxout and FitNets papers' pylearn2 configs (conv / dense / softmax).
PAPER_MAX_NORM = dict(max_norm_conv=0.9, max_norm_dense=1.9, max_norm_logits=1.9365)
# The FitNets yamls' learning rule: pylearn2's RMSProp, decay 0.9, max_scaling 1e5 (the RMS floored at 1e-5).
PYLEARN2_RMSPROP = dict(name="rmsprop", decay=0.9, rms_floor=1e-5)


def optimizer_config(name="rmsprop", learning_rate=0.005, **overrides):
  """One stage's optimizer. RMSProp, lr 0.005, decay 0.9 is FitNets' recipe (Romero et al. 2015, §4)."""
  cfg = ml_collections.ConfigDict(
    dict(
      name=name,  # rmsprop | sgd | adam | adamw
      learning_rate=learning_rate,
      schedule="constant",  # constant | cosine | piecewise | linear | exponential
      boundaries_epochs=[0.0],  # piecewise: epochs at which lr is multiplied by decay_factor; linear: [begin, end]
      decay_factor=0.1,  # piecewise: per boundary; linear: the final fraction; exponential: per step
      min_learning_rate=0.0,  # exponential: the floor
      warmup_epochs=0.0,
      decay=0.9,  # rmsprop: moving-average decay of squared gradients
      eps=1e-8,
      rms_floor=0.0,  # rmsprop: > 0 divides by max(√ν, rms_floor) as pylearn2 (1/max_scaling: 1e-5), not √ν + eps
      momentum=0.0,  # rmsprop / sgd momentum
      momentum_final=0.0,  # sgd: ramp momentum linearly to this (pylearn2's MomentumAdjustor); 0: constant
      momentum_ramp_epochs=[1.0, 250.0],  # the ramp's [begin, end] epochs
      conv_lr_scale=1.0,  # learning-rate multiplier of every convolution (pylearn2's W_lr_scale: 0.05)
      nesterov=False,
      weight_decay=0.0,  # decoupled, applied to trained parameters only
      grad_clip_norm=0.0,  # 0: off
      # Max-norm constraints (FitNets/maxout: conv 0.9, dense 1.9, softmax 1.9365); 0: off.
      max_norm_conv=0.0,
      max_norm_dense=0.0,
      max_norm_logits=0.0,
      max_norm_layers={},  # per layer, overriding the three above: {"conv1": 0.9, "fc": 1.9, …}
    )
  )
  cfg.update(overrides)
  return cfg


# Max-norm per layer of Goodfellow et al.'s maxout yamls (max_kernel_norm / max_col_norm): conv1 0.9, the
# other convs and the softmax 1.9365, the maxout dense layer 1.9.
MAXOUT_MAX_NORMS = {"conv1": 0.9, "conv2": 1.9365, "conv3": 1.9365, "fc": 1.9, "logits": 1.9365}


def maxout_teacher_stage(epochs, learning_rate, momentum_final, conv_lr_scale=0.05, **schedule):
  """A maxout teacher's stage as Goodfellow et al.'s pylearn2 yamls train it (maxout/{mnist,cifar10,svhn}.yaml):
  SGD with momentum 0.5 ramped to `momentum_final` over epochs 1 → 250, the convolutions' learning
  rate scaled by `conv_lr_scale`, max-norm per layer; `schedule` sets the learning-rate decay."""
  return stage_config(
    epochs,
    name="sgd",
    learning_rate=learning_rate,
    momentum=0.5,
    momentum_final=momentum_final,
    momentum_ramp_epochs=[1.0, 250.0],
    conv_lr_scale=conv_lr_scale,
    max_norm_layers=MAXOUT_MAX_NORMS,
    **schedule,
  )


# Per-channel (mean, std) on [0, 1] pixels that code bases normalise their inputs with: a teacher
# trained there expects them (`dataset.mean`, `dataset.std`; the import's `--dataset`).
NORMALISATIONS = {
  "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),  # RepDistiller, mdistiller, CRD
  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision
}


def stage_config(epochs, steps=0, **optimizer):
  """A training stage: its length (`steps` wins when > 0) and its own optimizer."""
  return ml_collections.ConfigDict(dict(epochs=float(epochs), steps=steps, optimizer=optimizer_config(**optimizer)))


def base_config():
  """Defaults shared by every config file, with every method's own sections (docs/configuration.md)."""
  c = ml_collections.ConfigDict()
  c.method = "fitnets"  # a method's name (docs/methods.md), one you registered, or "package.module:ATTRIBUTE"
  c.seed = 0
  c.num_devices = 0  # data-parallel devices; 0: every device JAX sees
  c.distributed = False  # jax.distributed.initialize() first: several hosts (TPU pod slices, SLURM, …)
  c.cluster = ml_collections.ConfigDict(
    dict(  # distributed=True on a cluster JAX does not detect by itself
      coordinator_address="",  # host:port of process 0, the same on every process
      num_processes=0,  # 0: detected
      process_id=-1,  # this process, 0…num_processes−1; −1: detected
      timeout_s=300,  # how long to wait for every process to join
      heartbeat_timeout_s=100,  # how long a host that dies or hangs is waited for before the others abort
    )
  )
  c.batch_size = 128  # global batch, split over devices and hosts
  c.eval_batch_size = 500
  c.log_every_steps = 50
  c.eval_every_steps = 0  # 0: evaluate at each stage end only
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.on_nan = "stop"  # stop | skip_step: what a NaN/Inf loss or gradient does
  c.resume_with_changed_inputs = False  # resume although the data or a reused teacher changed since the checkpoint
  c.bring_back_set_aside = False  # move checkpoints_damaged/ back into checkpoints/ first, each checked again
  c.dtype = "float32"  # float32 | bfloat16: activations' dtype (params, optimizer, losses stay float32)
  # JAX's persistent compilation cache: local (~/.cache/fitnets_jax, or $JAX_COMPILATION_CACHE_DIR) |
  # workdir (<workdir>/compilation_cache, a bucket too) | off | a folder of your own
  c.compilation_cache = "local"

  c.dataset = ml_collections.ConfigDict(
    dict(
      name="digits",  # digits | npz | svhn_cropped | cifar10 | cifar100 | mnist
      path="",  # npz: the .npz file
      num_classes=0,  # npz: 0 infers max(train_labels) + 1
      data_dir="",  # TFDS data_dir (local or gs://); "" = TFDS default
      download=False,  # TFDS: never download unless asked
      resize=[],  # TFDS: [height, width] to resize every image to (datasets of varying image sizes)
      crop="resize",  # how images reach `resize`: resize (bilinear) | imagenet (random-resized crop; test: centre crop)
      streaming=False,  # TFDS in ArrayRecord files: read the training split by index, never held in memory
      train_split="train",  # e.g. "train+extra" for SVHN
      test_split="test",
      preprocess="standardize",  # standardize | gcn_zca | gcn_lcn | none
      mean=[],  # standardize: per-channel means on [0, 1] pixels instead of fitted ones (a code base's constants)
      std=[],  # standardize: per-channel standard deviations, with `mean`
      stats_examples=10000,  # training examples used to fit mean/std or ZCA; 0: all (pylearn2 fits ZCA on all)
      gcn_scale=55.0,
      zca_epsilon=0.1,
      lcn_all_channels=True,  # gcn_lcn: LCN of every channel, as pylearn2 in May 2013 | False: the first only
      flip=False,  # random horizontal flips
      shift=0,  # random shifts of up to this many pixels (pad, then crop)
      cutout=0,  # Cutout: one square hole of this side per image, after flips and shifts (BYOT's code: 16); 0: none
      pad_mode="constant",  # shift padding: constant (zeros) | reflect
      shuffle_buffer=50000,
      validation_examples=0,  # hold out the last N training examples as a validation split
    )
  )
  c.teacher = ml_collections.ConfigDict(
    dict(
      model="digits_teacher",
      checkpoint="",  # a run's workdir (or its teacher/ folder) to reuse
      dropout=0.0,
      input_dropout=[],  # maxout models: include probability of each weight layer's input (pylearn2's Dropout)
      sections=[],  # [[input layer, output layer], …]: a model of your own's sections (FSP, BYOT)
      cache=False,  # compute every teacher's outputs on the training set once (no augmentation)
      cache_budget_mb=1024.0,  # cache: memory for hint features (logits are always cached)
    )
  )
  c.student = ml_collections.ConfigDict(dict(model="digits_student", dropout=0.0, input_dropout=[], sections=[]))
  c.stages = ml_collections.ConfigDict(
    dict(
      teacher=stage_config(epochs=100),  # trains the teacher unless teacher.checkpoint is set
      hint=stage_config(epochs=100),  # FitNets stage 1
      student=stage_config(epochs=100),  # KD stage (fitnets, kd) or labels only (scratch)
    )
  )
  # The sections several methods read (fitnets_jax/methods/shared.py) and each method's own, defined in
  # its module (docs/configuration.md lists every key). No method module imports JAX at import time.
  from fitnets_jax import methods

  for key, value in methods.config_defaults().items():
    c[key] = value
  return c


# Keys a run may change when it resumes in an existing workdir: they decide how often to log,
# evaluate and save, how many checkpoints to keep, how the fixed global batch is spread over
# devices and hosts (they compute the same numbers, to the order of float sums), where the data lies,
# how the hosts find each other, and what a NaN does.
# Any other difference means another experiment, and the run refuses to resume.
SAFE_TO_CHANGE = (
  "compilation_cache",
  "resume_with_changed_inputs",
  "bring_back_set_aside",
  "log_every_steps",
  "eval_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "num_devices",
  "distributed",
  "eval_batch_size",
  "on_nan",
  "dataset.data_dir",
  "dataset.download",
  "cluster.coordinator_address",
  "cluster.num_processes",
  "cluster.process_id",
  "cluster.timeout_s",
  "cluster.heartbeat_timeout_s",
)


def flatten(tree, prefix=""):
  """{'a': {'b': 1}} → {'a.b': 1} for nested dicts (a ConfigDict's to_dict()); an empty dict is a leaf."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _type_name(value):
  return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a dict"}[
    type(value)
  ]


def check_types(config):
  """Every key `base_config()` defines holds a value of the default's type (an int where a float is
  expected is fine), so a None or a string never reaches arithmetic deep inside the run."""
  reference = flatten(base_config().to_dict())
  for key, value in flatten(config.to_dict()).items():
    if key not in reference:
      continue
    want = reference[key]
    if isinstance(want, bool) or not isinstance(want, (int, float)):
      ok = isinstance(value, (list, tuple)) if isinstance(want, list) else isinstance(value, type(want))
    else:
      ok = isinstance(value, (int, float) if isinstance(want, float) else int) and not isinstance(value, bool)
    if not ok:
      raise FitnetsError(
        f"{key}={value!r} has the wrong type; it must be {_type_name(want)} (the default is {want!r})."
      )


def check(config):
  """What is checked of a config as soon as it is loaded, before JAX starts: each key's type, and that
  `method` names a method (built-in or registered)."""
  from fitnets_jax import methods

  check_types(config)
  methods.get(config.method)


def changed_keys(saved, config):
  """[(key, saved value, value now)] for keys outside SAFE_TO_CHANGE that differ between a saved
  config.json (a dict) and `config`. A key the saved config lacks counts as its default there: a key
  that a later version added changes nothing for a run resumed at its default value."""
  now = flatten(json.loads(config.to_json_best_effort()))
  defaults = flatten(json.loads(base_config().to_json_best_effort()))
  before = {**{k: v for k, v in defaults.items() if k in now}, **flatten(saved)}
  return [
    (k, before.get(k, "unset"), now.get(k, "unset"))
    for k in sorted(set(before) | set(now))
    if k not in SAFE_TO_CHANGE and before.get(k, "unset") != now.get(k, "unset")
  ]


def packaged(path):
  """`path` as given, or, when it is a relative `configs/NAME.py[:arg]` that the current folder lacks,
  the same file shipped inside the installed package: the configs work from any folder."""
  file, sep, arg = path.partition(".py:")
  file = file + ".py" if sep else file
  if (
    os.path.isabs(file)
    or files.is_remote(file)
    or files.isfile(file)
    or os.path.dirname(os.path.normpath(file)) != "configs"
  ):
    return path
  shipped = importlib.resources.files("fitnets_jax.configs") / os.path.basename(file)
  return (str(shipped) + (f":{arg}" if sep else "")) if shipped.is_file() else path


COMMAND_LINE_OVERRIDES = []  # (key, text) of the command line's --config.key=value, taken out of sys.argv


def define_config_flag():
  """Every command line's `--config file.py[:arg]` flag (a relative configs/NAME.py is found in the package
  when the current folder has none). The `--config.key=value` overrides are taken out of `sys.argv`
  here, before the flags are parsed, and applied by `from_command_line` with this project's one-paragraph
  errors (a misspelt key names the key it resembles)."""
  from absl import flags

  argv, kept = sys.argv, sys.argv[:1]
  i = 1
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      key, sep, text = arg[len("--config.") :].partition("=")
      if not sep:
        if i + 1 == len(argv) or argv[i + 1].startswith("--"):
          print(f"error: --config.{key} needs a value: --config.{key}=VALUE.", file=sys.stderr)
          sys.exit(2)
        i, text = i + 1, argv[i + 1]
      COMMAND_LINE_OVERRIDES.append((key, text))
    elif arg.startswith("--config="):
      kept.append("--config=" + packaged(arg[len("--config=") :]))
    elif arg == "--config" and i + 1 < len(argv):
      kept += [arg, packaged(argv[i + 1])]
      i += 1
    else:
      kept.append(arg)
    i += 1
  sys.argv[:] = kept
  flags.DEFINE_string("config", None, "Experiment config file: configs/NAME.py[:arg] (required).")


def from_command_line(path, overrides=None):
  """The config of `--config=path` with the command line's `--config.key=value` overrides (`overrides`:
  [(key, text)], by default those of `define_config_flag`), each text read as the type of the value it
  replaces: `true`/`false` for booleans, numbers, a string as written, a Python literal for lists."""
  config = _load_file(path)
  overrides = COMMAND_LINE_OVERRIDES if overrides is None else overrides
  for key, text in overrides:  # the method first: a method of your own brings its own sections
    if key == "method":
      apply_overrides(config, {"method": text}, path)
  add_method_sections(config)
  typed = {}
  for key, text in overrides:
    node, leaf = _node(config, key, path, f"--config.{key}={text}")
    typed[key] = _parse(key, text, node[leaf])
  config = apply_overrides(config, typed, path)
  check(config)
  return config


def add_method_sections(config):
  """Adds the config sections of `config.method` that the config lacks: a method named as
  'package.module:ATTRIBUTE', or registered after `base_config()` ran, brings its own."""
  from fitnets_jax import methods

  missing = {k: v for k, v in methods.get(config.method).defaults().items() if k not in config}
  if missing:
    with config.unlocked():
      for key, value in missing.items():
        config[key] = value
  return config


def _parse(key, text, current):
  """The command-line `text` for `key`, as the type of its current value."""
  where = f"--config.{key}={text}"
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise FitnetsError(f"{where}: {key} is a boolean; write true or false.")
  if isinstance(current, (int, float)):
    try:
      return int(text) if isinstance(current, int) else float(text)
    except ValueError:
      raise FitnetsError(
        f"{where}: {key} is {'an integer' if isinstance(current, int) else 'a number'} (it is {current!r} now)."
      ) from None
  if isinstance(current, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise FitnetsError(
      f"{where}: {key} holds {type(current).__name__} values; write a Python literal, such as {current!r}."
    ) from None


def _load_file(path):
  """The locked ConfigDict that `get_config` in a config file returns; a file that is missing, fails to
  run, or returns something else is one FitnetsError paragraph."""
  file, sep, arg = packaged(path).partition(".py:")
  file = file + ".py" if sep else file
  if not (file.endswith(".py") and not files.is_remote(file) and files.isfile(file)):
    raise FitnetsError(
      f"config file {file!r} does not exist or is not a .py file; pass a file with get_config(), "
      "such as configs/digits.py (relative to the current folder, or absolute)."
    )
  spec = importlib.util.spec_from_file_location(f"fitnets_config_{os.path.basename(file)[:-3]}", file)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise FitnetsError(f"config file {file!r} defines no get_config(); every file in configs/ shows the form.")
    config = module.get_config(arg) if arg else module.get_config()
  except FitnetsError:
    raise
  except Exception as e:  # noqa: BLE001  (whatever the user's file raises)
    line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__)) if f.filename == file), None)
    raise FitnetsError(
      f"config file {file!r} failed{f' at line {line}' if line else ''} while "
      f"{'running get_config' if hasattr(module, 'get_config') else 'loading'} "
      f"({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}); fix the file, or "
      "start from one in configs/."
    ) from None
  if not isinstance(config, ml_collections.ConfigDict):
    called = f"get_config({arg!r})" if arg else "get_config()"
    raise FitnetsError(
      f"config file {file!r}: {called} returned {type(config).__name__}, "
      "not an ml_collections.ConfigDict; end it with `return config` (configs/digits.py shows the "
      "form)."
    )
  config.lock()
  return config


def stage_key(stage):
  """The `stages.<key>` that sets the length and optimizer of a stage named as the progress lines name
  it: teacher, teacher1 … → teacher; hint, hint1 … and a method's `first_stages` (fsp, paraphraser, …)
  → hint; every other (kd, scratch, at, ce, dml, byot, …) → student. (Teachers of `config.teachers`
  may override theirs in their entry.)"""
  from fitnets_jax import methods

  if stage.startswith("teacher"):
    return "teacher"
  first = {name for m in methods.methods().values() for name in m.first_stages}
  return "hint" if stage.startswith("hint") or stage in first else "student"


def _node(config, key, file, what):
  """(the ConfigDict holding dotted `key`'s last part, that part); a part that is not a key is one
  paragraph naming the closest valid key."""
  node, parts = config, key.split(".")
  for i, part in enumerate(parts):
    valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    if part not in valid:
      close = difflib.get_close_matches(part, valid, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      if i == 1 and parts[0] == "stages" and not close:
        hint = f" (the stage {part!r} of the progress lines is configured as stages.{stage_key(part)})"
      raise FitnetsError(
        f"{what}: {'.'.join(parts[: i + 1])!r} is not a key of the config in {file!r}{hint}; valid there: "
        f"{', '.join(valid) or 'none, it is a value'}."
      )
    if i < len(parts) - 1:
      node = node[part]
  return node, parts[-1]


def apply_overrides(config, overrides, file="the config"):
  """`config` with {dotted key: value} set, each key checked as `--config.key=value` would be."""
  for key, value in (overrides or {}).items():
    node, leaf = _node(config, key, file, f"override {key}={value!r}")
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise FitnetsError(f"override {key}={value!r} has the wrong type for the config in {file!r}: {e}.") from None
  return config


def load(path, overrides=None):
  """The config in a config file, as `--config=path` loads it (`path:arg` calls get_config(arg)), with
  `overrides` applied as `--config.key=value` would: {"method": "kd", "stages.student.epochs": 5}. The
  result is locked, so a misspelt key fails. For notebooks and scripts:
  `fitnets_jax.run(config.load("configs/digits.py"), workdir)`. Checked as `check` does."""
  config = _load_file(path)
  if overrides and "method" in overrides:  # the method first: a method of your own brings its own sections
    apply_overrides(config, {"method": overrides["method"]}, path)
  config = apply_overrides(add_method_sections(config), overrides, path)
  check(config)
  return config

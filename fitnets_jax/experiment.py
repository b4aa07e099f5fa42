"""Everything decided before the first training step: config checks, data, devices, networks,
the method's stages and a reused teacher. All bad input fails here with a FitnetsError, before
anything is written to the workdir.
"""

import dataclasses
import json
import math
import os
from typing import Any, Optional

import jax
from jax.sharding import AxisType

from fitnets_jax import checkpoint, compiler, data, files, methods, workdir_lock
from fitnets_jax import config as config_lib
from fitnets_jax import teachers as teachers_lib
from fitnets_jax.config import SAFE_TO_CHANGE, changed_keys
from fitnets_jax.errors import FitnetsError, check, one_of
from fitnets_jax.methods.shared import Context, supervised_stage
from fitnets_jax.network import COMPUTE_DTYPES, build_network

CONFIG_FILE = "config.json"  # the workdir's experiment, written when a run starts


@dataclasses.dataclass
class Experiment:
  config: Any
  data: data.Data
  mesh: jax.sharding.Mesh
  student: Any
  teachers: dict  # role → Network ({} for methods without a teacher)
  stages: list  # the teachers' own stages first when they are trained here
  steps_per_epoch: int
  teacher_variables: dict  # role → host arrays, for reused teachers
  teacher_sources: dict  # role → checkpoint folder, for reused teachers
  teacher_weights: Optional[Any] = None  # multi_teacher: (roles, validation_accuracy) → (μ, accuracies)
  inputs: dict = dataclasses.field(default_factory=dict)  # what checkpoints record of the data and reused teachers

  def describe_inputs(self):
    """{input: (what the config names, its SHA-256)}: the training data and each reused teacher."""
    dataset = self.config.dataset
    named = {"data": f"dataset.name={dataset.name!r}" + (f", dataset.path={dataset.path!r}" if dataset.path else "")}
    named.update({role: f"the {role} read from {self.teacher_sources[role]}" for role in self.teacher_sources})
    return {key: (named[key], value) for key, value in self.inputs.items()}

  @property
  def teacher(self):
    return next(iter(self.teachers.values()), None)

  @property
  def local_batch(self):
    return self.config.batch_size // jax.process_count()

  @property
  def local_eval_batch(self):
    """This host's part of an evaluation batch: eval_batch_size rounded up to a multiple of the device
    count, so any count works (the padding is masked out of the metrics)."""
    devices = self.mesh.size
    return -(-self.config.eval_batch_size // devices) * devices // jax.process_count()


def _positive_int(config, key):
  value = config[key]
  check(isinstance(value, int) and value > 0, f"{key}={value!r} must be a positive integer.")


def check_run_keys(config):
  """Checks the keys every method reads."""
  for key in ("batch_size", "eval_batch_size", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    _positive_int(config, key)
  check(config.eval_every_steps >= 0, f"eval_every_steps={config.eval_every_steps!r} must be ≥ 0 (0: stage end only).")
  one_of("on_nan", config.on_nan, ("stop", "skip_step"))
  one_of("dtype", config.dtype, COMPUTE_DTYPES)
  check(
    config.compilation_cache.strip() != "",
    "compilation_cache='' names no cache; use one of 'local', 'workdir', 'off', or a folder.",
  )
  check(config.num_devices >= 0, f"num_devices={config.num_devices!r} must be ≥ 0 (0: all devices).")
  check(
    isinstance(config.seed, int) and 0 <= config.seed < MAX_INT32,
    f"seed={config.seed!r} must be an integer in 0 … {MAX_INT32 - 1} (it seeds JAX's and tf.data's generators).",
  )


MAX_INT32 = 2**31  # step counters and seeds are int32 inside the compiled step and tf.data


def check_batch_memory(config, image_shape):
  """Refuses a batch whose float32 images alone would not fit in half of this host's memory: such a run
  would train a whole stage and die of a MemoryError at its first evaluation, on every restart."""
  memory = data.host_memory()
  if memory is None:  # not a POSIX host: nothing to compare with
    return
  per_image = 4 * math.prod(image_shape)
  for key in ("batch_size", "eval_batch_size"):
    size = config[key] // jax.process_count() * per_image
    check(
      size <= memory // 2,
      f"{key}={config[key]}: one batch of {tuple(image_shape)} float32 images takes {size / 2**30:.1f} GiB on this "
      f"host, more than half of its {memory / 2**30:.1f} GiB of memory; lower {key}.",
    )


def make_mesh(config):
  """A 1-D mesh over `num_devices` devices (all by default), axis 'data'; checks batch divisibility."""
  devices = jax.devices()
  n = config.num_devices or len(devices)
  check(
    n <= len(devices),
    f"num_devices={config.num_devices} but JAX sees only {len(devices)} device(s): "
    f"{devices[0].platform} × {len(devices)}. Use 0 for all of them.",
  )
  check(
    jax.process_count() == 1 or n == len(devices),
    f"num_devices={config.num_devices}: a multi-host run must use every device (num_devices=0).",
  )
  batch = config.batch_size
  if batch % n:
    nearest = [m for m in (batch // n * n, (batch // n + 1) * n) if m > 0]
    raise FitnetsError(
      f"batch_size={batch} cannot be split evenly over the {n} devices ({devices[0].platform} × {n}): each "
      f"device trains on the same number of examples. Use a multiple of {n}, such as "
      f"{' or '.join(map(str, nearest))}, or set num_devices to a "
      f"divisor of {batch}. (eval_batch_size may be any size: it is padded.)"
    )
  return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=devices[:n])


def check_workdir(workdir):
  """Refuses a workdir that cannot be written, leaving none of the folders the probe made (the run
  creates them once it starts: `--seeds` checks every seed's folder before the first one trains).
  Only the folders this call created are removed, deepest first, and each only while empty: a run
  started meanwhile in a sibling folder under a new parent keeps everything."""
  check(workdir, "--workdir is required: the folder for checkpoints, metrics and summary.json.")
  made, folder = [], files.absolute(workdir)
  while not files.is_remote(folder) and not files.exists(folder):
    made.append(folder)
    folder = os.path.dirname(folder)
  files.check_reachable(workdir)
  files.remove_empty_folders(made)


def check_same_experiment(config, workdir):
  """Refuses a workdir whose config.json describes another experiment (keys in SAFE_TO_CHANGE aside)."""
  if not workdir:
    return
  path = files.join(workdir, CONFIG_FILE)
  try:
    saved = json.loads(files.read_text(path)) if files.isfile(path) else None
  except (OSError, ValueError) as e:
    raise FitnetsError(
      f"{path} cannot be read ({e}); it records the experiment this workdir holds. Restore it, or use a new --workdir."
    ) from None
  what = f"its {CONFIG_FILE}"
  if saved is None:  # deleted: each checkpoint records the config too
    saved, what = checkpoint.saved_config(workdir), f"the config its newest checkpoint records ({CONFIG_FILE} is gone)"
    if saved is None:
      return
  differences = changed_keys(saved, config)
  if differences:
    shown = ", ".join(f"{k} ({old!r} there, {new!r} now)" for k, old, new in differences[:8])
    more = f" and {len(differences) - 8} more" if len(differences) > 8 else ""
    raise FitnetsError(
      f"--workdir={workdir!r} holds another experiment: {what} differs in {shown}{more}. "
      "Nothing in the workdir was changed. Use a new --workdir, or rerun with the saved values to resume; "
      f"only {', '.join(SAFE_TO_CHANGE)} may change between runs in one workdir."
    )


def trained_networks(config, method):
  """[(role, config key, {model, dropout})] of the networks a method trains from scratch: the
  student, or a method's own list (mutual learning's cohort); the first is the summary's student."""
  check(
    method.networks or not len(config.cohort),
    f"config.cohort is set, but method={config.method!r} trains one student (config.student); use method=dml, "
    "or clear cohort.",
  )
  return method.networks(config) if method.networks else [("student", "student", config.student)]


def prepare(config, workdir, synthetic_examples=0, source=None, read_only=False, dataset=None):
  """Validates `config` and builds the experiment; raises FitnetsError on any bad input. With
  `synthetic_examples`, random images of the dataset's shape stand in for it (benchmarks); `source`
  is the `data.Arrays` of `dataset.name='arrays'`; `read_only`: the workdir is only read (`explore`),
  so neither its lock nor whether it can be written is checked; `dataset`: the loaded dataset of an equal
  `config.dataset` (the seeds of `--seeds` share one)."""
  config_lib.check(config)
  check_run_keys(config)
  if workdir and files.is_remote(workdir):  # a bucket that does not answer fails now, not after loading
    files.check_reachable(workdir, write=False)
  if not read_only:
    workdir_lock.check_free(workdir)
  check_same_experiment(config, workdir)
  compiler.use_cache(config.compilation_cache, workdir)
  method = methods.get(config.method)
  mesh = make_mesh(config)
  dataset = dataset or data.load(config.dataset, synthetic_examples, source)
  check_batch_memory(config, dataset.image_shape)
  steps_per_epoch = dataset.num_train // config.batch_size
  check(
    steps_per_epoch > 0,
    f"batch_size={config.batch_size} is larger than the {dataset.num_train} "
    f"training examples of {dataset.name!r}; lower batch_size.",
  )
  build = lambda key, cfg: build_network(key, cfg, dataset.num_classes, dataset.image_shape, config.dtype)
  # A method whose networks are configured elsewhere (mutual learning's cohort) names its own.
  _, key, student_cfg = trained_networks(config, method)[0]
  student = build(key, student_cfg)
  specs = teachers_lib.specs(config, method)
  teachers = {role: build(key, cfg) for role, key, cfg, _ in specs}
  ctx = Context(
    config,
    student,
    teachers,
    steps_per_epoch,
    {role: stage for role, _, _, stage in specs},
    dataset.num_classes,
    train_labels=lambda: data.labels_by_id(dataset),
  )
  stages = method.stages(ctx)
  variables, sources, teacher_stages = {}, {}, []
  inputs = {"data": dataset.fingerprint}
  for role, key, cfg, _ in specs:
    if cfg.checkpoint:
      variables[role] = teachers_lib.reused(key, cfg, teachers[role])
      sources[role] = teachers_lib.teacher_dir(cfg.checkpoint)
      inputs[role] = checkpoint.digest(variables[role])
    else:
      teacher_stages.append(supervised_stage(ctx, role, teachers[role], role, trains=role))
  teachers_lib.check_cache_config(config, dataset, bool(specs))
  if not read_only:
    check_workdir(workdir)
  return Experiment(
    config,
    dataset,
    mesh,
    student,
    teachers,
    teacher_stages + stages,
    steps_per_epoch,
    variables,
    sources,
    method.teacher_weights,
    inputs,
  )

"""Everything decided before the first training step: config checks, data, devices, networks,
the method's stages and a reused teacher. All bad input fails here with a FitnetsError, before
anything is written to the workdir.
"""

import dataclasses
import json
import os
from typing import Any, Optional

import jax
from jax.sharding import AxisType

from fitnets_jax import checkpoint, data, methods, models
from fitnets_jax.config import SAFE_TO_CHANGE, changed_keys, check_types
from fitnets_jax.errors import FitnetsError, check, one_of
from fitnets_jax.methods.base import Context, network, supervised_stage


CONFIG_FILE = "config.json"   # the workdir's experiment, written when a run starts


@dataclasses.dataclass
class Experiment:
  config: Any
  data: data.Data
  mesh: jax.sharding.Mesh
  student: Any
  teacher: Optional[Any]
  stages: list                        # the teacher's own stage first when it is trained here
  steps_per_epoch: int
  teacher_variables: Optional[dict]   # host arrays of a reused teacher, else None
  teacher_source: str                 # "" (trained here), or the checkpoint folder

  @property
  def local_batch(self):
    return self.config.batch_size // jax.process_count()

  @property
  def local_eval_batch(self):
    return self.config.eval_batch_size // jax.process_count()


def _positive_int(config, key):
  value = config[key]
  check(isinstance(value, int) and value > 0, f"{key}={value!r} must be a positive integer.")


def check_run_keys(config):
  """Checks the keys every method reads."""
  one_of("method", config.method, tuple(methods.METHODS))
  for key in ("batch_size", "eval_batch_size", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    _positive_int(config, key)
  check(config.eval_every_steps >= 0, f"eval_every_steps={config.eval_every_steps!r} must be ≥ 0 (0: stage end only).")
  one_of("on_nan", config.on_nan, ("stop", "skip_step"))
  check(config.num_devices >= 0, f"num_devices={config.num_devices!r} must be ≥ 0 (0: all devices).")


def make_mesh(config):
  """A 1-D mesh over `num_devices` devices (all by default), axis 'data'; checks batch divisibility."""
  devices = jax.devices()
  n = config.num_devices or len(devices)
  check(n <= len(devices), f"num_devices={config.num_devices} but JAX sees only {len(devices)} device(s): "
                           f"{devices[0].platform} × {len(devices)}. Use 0 for all of them.")
  check(jax.process_count() == 1 or n == len(devices),
        f"num_devices={config.num_devices}: a multi-host run must use every device (num_devices=0).")
  for key in ("batch_size", "eval_batch_size"):
    check(config[key] % n == 0, f"{key}={config[key]} is not divisible by the {n} devices the batch is "
                                f"split over; use a multiple of {n} (or set num_devices).")
  return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=devices[:n])


def check_workdir(workdir):
  check(workdir, "--workdir is required: the folder for checkpoints, metrics and summary.json.")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise FitnetsError(f"--workdir={workdir!r} cannot be created ({e.strerror}); choose a writable folder.") from None
  check(os.access(workdir, os.W_OK | os.X_OK), f"--workdir={workdir!r} is not writable; choose a writable folder.")


def check_same_experiment(config, workdir):
  """Refuses a workdir whose config.json describes another experiment (keys in SAFE_TO_CHANGE aside)."""
  path = os.path.join(workdir or "", CONFIG_FILE)
  if not workdir or not os.path.isfile(path):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise FitnetsError(f"{path} cannot be read ({e}); it records the experiment this workdir holds. Restore "
                       "it, or use a new --workdir.") from None
  differences = changed_keys(saved, config)
  if differences:
    shown = ", ".join(f"{k} ({old!r} there, {new!r} now)" for k, old, new in differences[:8])
    more = f" and {len(differences) - 8} more" if len(differences) > 8 else ""
    raise FitnetsError(
        f"--workdir={workdir!r} holds another experiment: its {CONFIG_FILE} differs in {shown}{more}. "
        "Nothing in the workdir was changed. Use a new --workdir, or rerun with the saved values to resume; "
        f"only {', '.join(SAFE_TO_CHANGE)} may change between runs in one workdir.")


def reused_teacher(config, teacher):
  """Host variables of `teacher.checkpoint`, checked against the configured teacher model."""
  info = checkpoint.teacher_info(config.teacher.checkpoint)
  check(info.get("model") == teacher.name,
        f"teacher.checkpoint={config.teacher.checkpoint!r} holds a {info.get('model')!r} teacher but "
        f"teacher.model={teacher.name!r}; set --config.teacher.model={info.get('model')}.")
  return checkpoint.load_teacher(config.teacher.checkpoint, teacher.abstract_variables())


def prepare(config, workdir):
  """Validates `config` and builds the experiment; raises FitnetsError on any bad input."""
  check_types(config)
  check_run_keys(config)
  check_same_experiment(config, workdir)
  method = methods.get(config.method)
  mesh = make_mesh(config)
  dataset = data.load(config.dataset)
  steps_per_epoch = dataset.num_train // config.batch_size
  check(steps_per_epoch > 0, f"batch_size={config.batch_size} is larger than the {dataset.num_train} "
                             f"training examples of {dataset.name!r}; lower batch_size.")
  build = lambda role: network(config[role].model, models.get_model(
      config[role].model, dataset.num_classes, config[role].dropout, key=f"{role}.model"), dataset.image_shape)
  student = build("student")
  teacher = build("teacher") if method.USES_TEACHER else None
  ctx = Context(config, student, teacher, steps_per_epoch)
  stages = method.stages(ctx)
  teacher_variables, source = None, ""
  if teacher is not None and config.teacher.checkpoint:
    teacher_variables = reused_teacher(config, teacher)
    source = checkpoint.teacher_dir(config.teacher.checkpoint)
  elif teacher is not None:
    stages = [supervised_stage(ctx, "teacher", teacher, "teacher", trains="teacher")] + stages
  check_workdir(workdir)
  return Experiment(config, dataset, mesh, student, teacher, stages, steps_per_epoch, teacher_variables, source)

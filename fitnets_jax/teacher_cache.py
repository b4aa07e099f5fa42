"""The teachers' outputs on every training example, computed once (`teacher.cache=True`).

A frozen teacher in inference mode gives an example the same outputs every epoch, as long as the
input pipeline draws no random augmentation. The cache computes each teacher's logits, and the
hint features its stages read while they fit in `teacher.cache_budget_mb`, over the whole training
split once, keyed by the example's id (`batch["index"]`). Stages then look them up
(`methods.shared.teacher_logits`, `teacher_features`) instead of running the teacher: the KD stage
never runs it. Features over the budget are computed live, as without the cache.

The tables live on every device (replicated). Every host computes the whole table from the whole
training split, so each host's lookup needs nothing from the others.
"""

import math
import time

import jax
import numpy as np

from fitnets_jax import compiler
from fitnets_jax import data as data_lib
from fitnets_jax.errors import check
from fitnets_jax.network import forward


def check_config(config, dataset, has_teacher):
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


def needed_layers(stages):
  """{teacher role: its layers some stage reads}, in first-use order."""
  layers = {}
  for stage in stages:
    for role, names in stage.teacher_layers.items():
      layers.setdefault(role, [])
      layers[role] += [n for n in names if n not in layers[role]]
  return layers


def plan(teachers, layers, num_examples, num_classes, budget_bytes):
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


def build(teachers, teacher_vars, layers, dataset, batch_size, budget_mb):
  """Host tables {role: {"logits": (N, classes), "features": {layer: (N, …)}}} over the training
  split, and a summary {examples, bytes, layers, left_out, seconds}."""
  started = time.perf_counter()
  n = dataset.num_train
  cached, used, skipped = plan(teachers, layers, n, dataset.num_classes, budget_mb * 2**20)
  host_vars = jax.device_get({role: teacher_vars[role] for role in teachers})

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

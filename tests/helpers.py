"""Shared helpers for the training tests."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def final_state(workdir):
  """The newest checkpoint's state as host numpy arrays."""
  directory = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  restored = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), "state"))
  return step, jax.tree.map(np.asarray, restored)


def without_timing(records):
  return [{k: v for k, v in r.items() if k != "images_per_s"} for r in records]


def write_npz(path, **overrides):
  """A valid 6×6 RGB, 4-class .npz (40 train, 10 test) with `overrides` replacing arrays (None drops one)."""
  rng = np.random.default_rng(0)
  arrays = dict(train_images=rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8),
                train_labels=rng.integers(0, 4, 40), test_images=rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8),
                test_labels=rng.integers(0, 4, 10))
  arrays.update(overrides)
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
  return str(path)

"""ImageNet scale: a TFDS dataset read by index from its ArrayRecord files (`dataset.streaming`), under
`tfds.testing.mock_data` (imagenet2012's own builder, random images of random sizes): one global order
whatever the host count — 1 process against 2 simulated hosts and against 2 real processes joined by
jax.distributed — that a resume continues; torchvision's random-resized crop and evaluation crop; the
ImageNet pair's config."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from test_multihost import free_port

from fitnets_jax import data
from fitnets_jax.config import base_config
from fitnets_jax.errors import FitnetsError

from conftest import ROOT, load_config

EXAMPLES, SPE = 40, 4  # mock examples; steps per epoch at a global batch of 8


def streaming(**overrides):
  c = base_config().dataset
  c.update(
    dict(name="imagenet2012", streaming=True, resize=[24, 24], crop="imagenet", flip=True, test_split="validation"),
    stats_examples=8,
  )
  c.update(overrides)
  return c


def batches(d, local, start=0, n=SPE + 2):
  return list(itertools.islice(data.train_batches(d, local, SPE, seed=3, stage_index=1, start_step=start), n))


@pytest.fixture(scope="module")
def one_host():
  with tfds.testing.mock_data(num_examples=EXAMPLES):
    d = data.load(streaming())
    return d, batches(d, 8)


def test_a_streamed_split_is_read_by_index_and_cropped_to_the_configured_size(one_host):
  d, first = one_host
  assert (d.num_train, d.num_test, d.image_shape, d.num_classes) == (EXAMPLES, EXAMPLES, (24, 24, 3), 1000)
  assert d.train_examples is None and d.global_order  # nothing of the training split is held in memory
  assert first[0]["image"].shape == (8, 24, 24, 3) and first[0]["image"].dtype == np.float32
  # One epoch visits each example once; the next is another order.
  epoch = np.concatenate([b["index"] for b in first[:SPE]])
  assert sorted(epoch) == list(range(SPE * 8)) or len(set(epoch)) == SPE * 8
  assert not np.array_equal(first[SPE]["index"], first[0]["index"])
  with tfds.testing.mock_data(num_examples=EXAMPLES):
    labels = data.labels_by_id(d)
    source = tfds.data_source("imagenet2012", split="train", download=False)
    assert [labels[i] for i in first[0]["index"]] == list(first[0]["label"])
    assert list(labels[:5]) == [source[i]["label"] for i in range(5)]


def test_a_resumed_stream_continues_with_the_same_batches(one_host):
  d, first = one_host
  with tfds.testing.mock_data(num_examples=EXAMPLES):
    resumed = batches(d, 8, start=SPE - 1, n=3)
  for a, b in zip(resumed, first[SPE - 1 :]):
    for key in ("image", "label", "index"):
      np.testing.assert_array_equal(a[key], b[key])


def test_two_hosts_read_their_rows_of_the_same_global_batches(one_host, monkeypatch):
  """2 simulated hosts: each reads and crops only its rows; stacked, bit for bit the 1-host batches
  (the same decode and crop ops on the same examples with the same stateless seeds)."""
  d, first = one_host
  monkeypatch.setattr(data.jax, "process_count", lambda: 2)
  hosts = []
  with tfds.testing.mock_data(num_examples=EXAMPLES):
    for index in (0, 1):
      monkeypatch.setattr(data.jax, "process_index", lambda index=index: index)
      hosts.append(batches(d, 4))
  for step, whole in enumerate(first):
    for key in ("image", "label", "index"):
      np.testing.assert_array_equal(np.concatenate([hosts[0][step][key], hosts[1][step][key]]), whole[key])


HOST_SCRIPT = """
import sys, itertools, numpy as np, jax, tensorflow_datasets as tfds
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
sys.path.insert(0, sys.argv[4])
from test_streaming import streaming, batches, EXAMPLES
from fitnets_jax import data
with tfds.testing.mock_data(num_examples=EXAMPLES):
  d = data.load(streaming())
  got = batches(d, 4) + batches(d, 4, start=2, n=1)
  ev = list(data.eval_batches(d, 8))
np.savez(sys.argv[3], **{f"{k}{i}": b[k] for i, b in enumerate(got) for k in ("image", "label", "index")},
         eval_labels=np.concatenate([b["label"] for b in ev]), eval_mask=np.concatenate([b["mask"] for b in ev]))
"""


def test_two_real_processes_read_the_one_process_batches(one_host, tmp_path):
  """2 processes on localhost joined by jax.distributed, each reading its rows by index."""
  d, first = one_host
  port, env = free_port(), dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-c",
        HOST_SCRIPT,
        f"127.0.0.1:{port}",
        str(i),
        str(tmp_path / f"h{i}.npz"),
        os.path.dirname(__file__),
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
  hosts = [np.load(tmp_path / f"h{i}.npz") for i in range(2)]
  for step, whole in enumerate(first + [first[2]]):
    for key in ("image", "label", "index"):
      np.testing.assert_array_equal(np.concatenate([hosts[0][f"{key}{step}"], hosts[1][f"{key}{step}"]]), whole[key])
  # The test split: each process evaluates its part; together, every example once.
  assert sum(int(h["eval_mask"].sum()) for h in hosts) == EXAMPLES


def test_the_evaluation_crop_is_torchvisions_resize_then_centre_crop():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (300, 401, 3), dtype=np.uint8)
  got = data._centre_crop(tf, tf.constant(image), (224, 224)).numpy()
  # torchvision: Resize(256) keeps the ratio, the long side int(256 · 401 / 300) = 342; CenterCrop(224)
  # starts at int(round((256 − 224) / 2)) = 16 and int(round((342 − 224) / 2)) = 59.
  resized = tf.image.resize(image, (256, 342)).numpy()
  np.testing.assert_array_equal(got, np.round(resized[16:240, 59:283]).astype(np.uint8))
  tall = data._centre_crop(tf, tf.constant(image.transpose(1, 0, 2)), (224, 224)).numpy()
  np.testing.assert_array_equal(
    tall, np.round(tf.image.resize(image.transpose(1, 0, 2), (342, 256)).numpy()[59:283, 16:240]).astype(np.uint8)
  )


def test_the_random_resized_crop_is_drawn_from_its_key_within_torchvisions_ranges():
  image = tf.constant(np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8))
  crops = [data._random_resized_crop(tf, image, (32, 32), tf.constant([5, i], tf.int64)) for i in range(20)]
  assert all(c.shape == (32, 32, 3) and c.dtype == tf.uint8 for c in crops)
  again = data._random_resized_crop(tf, image, (32, 32), tf.constant([5, 3], tf.int64))
  np.testing.assert_array_equal(again.numpy(), crops[3].numpy())
  assert len({c.numpy().tobytes() for c in crops}) == 20
  for i in range(50):  # the boxes themselves: 8–100 % of the area, aspect 3/4–4/3, inside the image
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      (200, 300, 3), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=[5, i], min_object_covered=0.0,
      aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True,
    )  # fmt: skip
    (top, left, _), (h, w, _) = begin.numpy(), size.numpy()
    assert 0 <= top and top + h <= 200 and 0 <= left and left + w <= 300
    assert 0.08 * 60000 * 0.97 <= h * w <= 60000 and (3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05 or (h, w) == (200, 300))


def test_streaming_refuses_what_it_cannot_do_in_one_paragraph():
  with tfds.testing.mock_data(num_examples=EXAMPLES):
    for overrides, message in (
      (dict(resize=[]), r"'imagenet2012' has images of varying size .*set dataset.resize"),
      (dict(stats_examples=0), r"dataset.stats_examples=0 must be > 0"),
      (dict(streaming=False), r"dataset.crop='imagenet' crops each training image at random.*streaming=True"),
      (dict(crop="random"), r"dataset.crop='random'"),
    ):
      with pytest.raises(FitnetsError, match=message) as e:
        data.load(streaming(**overrides))
      assert "\n" not in str(e.value)


def test_the_imagenet_pair_trains_through_the_streaming_path(tmp_path):
  """configs/imagenet_pair.py on mock imagenet2012: the config checks and builds as it is; then a few steps
  of KD, shrunk (32×32 crops, a resnet8 pair), through the streaming pipeline."""
  from fitnets_jax import experiment, train

  config = load_config("imagenet_pair")
  assert (config.teacher.model, config.student.model, config.kd.alpha, config.kd.temperature) == (
    "imagenet_resnet34",
    "imagenet_resnet18",
    0.5,
    1.0,
  )
  assert list(config.dataset.mean) == [0.485, 0.456, 0.406] and config.dataset.crop == "imagenet"
  with tfds.testing.mock_data(num_examples=EXAMPLES):
    config.num_devices, config.batch_size, config.eval_batch_size = 1, 8, 8
    config.dataset.stats_examples = 8
    exp = experiment.prepare(config, str(tmp_path / "check"))
    assert (exp.student.macs, exp.teachers["teacher"].params) == (1_814_073_344, 21_797_672)
    config.dataset.resize = [32, 32]
    config.teacher.model = config.student.model = "resnet8"
    config.stages.teacher.steps, config.stages.student.steps, config.log_every_steps = 2, 3, 1
    summary = train.run(config, str(tmp_path / "run"))
  assert summary["student"]["model"] == "resnet8" and summary["dataset"] == "imagenet2012"

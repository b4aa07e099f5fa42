"""Datasets: the embedded digits, npz validation, TFDS under mock_data, order, padding, ZCA."""

import dataclasses
import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fitnets_jax import FitnetsError, data, preprocessing
from fitnets_jax.config import base_config

from helpers import write_npz


def dataset_config(**overrides):
  c = base_config().dataset
  c.update(overrides)
  return c


def test_digits_split_is_fixed_and_documented():
  x_train, y_train, x_test, y_test = data.digits_arrays()
  assert x_train.shape == (1437, 8, 8, 1) and x_test.shape == (360, 8, 8, 1)
  assert x_train.dtype == np.uint8 and x_train.max() == 255
  assert set(np.unique(y_train)) == set(range(10))
  again = data.digits_arrays()
  np.testing.assert_array_equal(again[3], y_test)


def test_standardize_gives_zero_mean_unit_std_on_the_training_set():
  d = data.load(dataset_config(name="digits"))
  batch = next(data.train_batches(d, d.num_train, 1, seed=0, stage_index=0))
  assert abs(batch["image"].mean()) < 1e-3 and abs(batch["image"].std() - 1) < 1e-3


def test_given_mean_and_std_are_torchvisions_normalize():
  """dataset.mean/std: the network's input is (pixels / 255 − mean) / std, as torchvision's
  ToTensor() then Normalize(mean, std), instead of fitted statistics."""
  d = data.load(dataset_config(name="digits", mean=[0.25], std=[0.5]))
  batch = next(data.train_batches(d, 64, 1, seed=0, stage_index=0))
  x_train = data.digits_arrays()[0]
  want = (x_train[batch["index"]].astype(np.float64) / 255.0 - 0.25) / 0.5
  np.testing.assert_allclose(batch["image"], want, rtol=1e-6, atol=1e-6)
  assert d.preprocessing.describe()["kind"] == "standardize"


@pytest.mark.parametrize("flip,shift", [(False, 0), (True, 3)])
def test_resumed_iterator_yields_the_same_batches(flip, shift):
  d = data.load(dataset_config(name="digits", flip=flip, shift=shift))
  spe = d.num_train // 100
  full = data.train_batches(d, 100, spe, seed=3, stage_index=1)
  batches = [next(full) for _ in range(spe + 4)]
  resumed = next(data.train_batches(d, 100, spe, seed=3, stage_index=1, start_step=spe + 2))
  np.testing.assert_array_equal(resumed["image"], batches[spe + 2]["image"])
  np.testing.assert_array_equal(resumed["label"], batches[spe + 2]["label"])
  # A new epoch is a new permutation, and another seed another order.
  assert not np.array_equal(batches[0]["label"], batches[spe]["label"])
  other = next(data.train_batches(d, 100, spe, seed=4, stage_index=1))
  assert not np.array_equal(other["label"], batches[0]["label"])


def test_augmentation_flips_and_shifts_within_bounds():
  d = data.load(dataset_config(name="digits", preprocess="none", shift=2))
  plain = data.load(dataset_config(name="digits", preprocess="none"))
  a = next(data.train_batches(d, 64, 10, 0, 0))["image"]
  b = next(data.train_batches(plain, 64, 10, 0, 0))["image"]
  assert a.shape == b.shape and not np.array_equal(a, b)
  # Shifted copies of the same images: each is b moved by at most 2 px with zero fill.
  for i in range(8):
    found = any(
      np.array_equal(a[i], np.roll(np.pad(b[i], ((2, 2), (2, 2), (0, 0))), (dy, dx), (0, 1))[2:-2, 2:-2])
      for dy in range(-2, 3)
      for dx in range(-2, 3)
    )
    assert found


def test_cutout_sets_one_clipped_square_per_image_to_a_black_images_preprocessed_value(tmp_path):
  # The authors' Cutout (BYOT's train.py, length 16) zeros the [0, 1] image before Normalize: here the hole
  # holds what a black image becomes after the preprocessing (−mean/std under standardize).
  images = np.full((64, 8, 8, 1), 200, np.uint8)
  images[::2] = 100
  labels = np.arange(64) % 2
  path = write_npz(
    tmp_path / "flat.npz", train_images=images, train_labels=labels, test_images=images, test_labels=labels
  )
  d = data.load(dataset_config(name="npz", path=str(path), cutout=4))
  plain = data.load(dataset_config(name="npz", path=str(path)))
  a = next(data.train_batches(d, 64, 1, 0, 0))["image"][..., 0]
  b = next(data.train_batches(plain, 64, 1, 0, 0))["image"][..., 0]
  mean, std = plain.preprocessing.arrays["mean"][0], plain.preprocessing.arrays["std"][0]
  fill = -mean / std
  sizes = set()
  for cut, whole in zip(a, b):
    hole = cut != whole
    rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
    assert hole.sum() == len(rows) * len(cols) and np.all(hole[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    assert 2 <= len(rows) <= 4 and 2 <= len(cols) <= 4  # 4×4, clipped at the border to 2 at least
    np.testing.assert_allclose(cut[hole], fill, rtol=1e-5)
    sizes.add((len(rows), len(cols)))
  assert len(sizes) > 1  # centres vary
  with pytest.raises(FitnetsError, match=r"dataset.cutout=-1 must be an integer ≥ 0"):
    data.load(dataset_config(name="digits", cutout=-1))


def test_reflect_padded_shifts_are_crops_of_the_mirrored_image():
  d = data.load(dataset_config(name="digits", preprocess="none", shift=2, pad_mode="reflect"))
  plain = data.load(dataset_config(name="digits", preprocess="none"))
  a = next(data.train_batches(d, 64, 10, 0, 0))["image"]
  b = next(data.train_batches(plain, 64, 10, 0, 0))["image"]
  for i in range(8):
    mirrored = np.pad(b[i], ((2, 2), (2, 2), (0, 0)), mode="reflect")
    assert any(np.array_equal(a[i], mirrored[dy : dy + 8, dx : dx + 8]) for dy in range(5) for dx in range(5))


def test_eval_batches_cover_the_test_split_once_with_a_mask():
  d = data.load(dataset_config(name="digits"))
  batches = list(data.eval_batches(d, 128))
  assert len(batches) == 3 and all(b["image"].shape == (128, 8, 8, 1) for b in batches)
  assert sum(b["mask"].sum() for b in batches) == 360
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  np.testing.assert_array_equal(np.sort(labels), np.sort(data.digits_arrays()[3]))


def test_zca_whitens_to_identity_covariance():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5000, 6)) @ rng.normal(size=(6, 6))
  mean, w = preprocessing.zca_fit(x, epsilon=1e-8)
  white = (x - mean) @ w
  np.testing.assert_allclose(np.cov(white, rowvar=False, bias=True), np.eye(6), atol=1e-3)
  np.testing.assert_allclose(w, w.T, atol=1e-4)  # ZCA (not PCA): symmetric


def test_gcn_gives_zero_mean_and_norm_scale():
  x = preprocessing.gcn(np.random.default_rng(0).normal(size=(4, 30)) + 5, scale=55.0)
  np.testing.assert_allclose(x.mean(1), 0, atol=1e-9)
  np.testing.assert_allclose(np.linalg.norm(x, axis=1), 55.0)


def test_npz_dataset_loads(tmp_path):
  d = data.load(dataset_config(name="npz", path=write_npz(tmp_path / "ok.npz")))
  assert (d.num_train, d.num_test, d.image_shape, d.num_classes) == (40, 10, (6, 6, 3), 4)
  batch = next(data.train_batches(d, 8, 5, 0, 0))
  assert batch["image"].shape == (8, 6, 6, 3)


def test_unknown_dataset_lists_the_sources():
  with pytest.raises(FitnetsError, match=r"dataset.name='imagenet' is neither one of 'digits', 'npz', 'arrays' nor a"):
    data.load(dataset_config(name="imagenet"))
  with pytest.raises(FitnetsError, match=r"dataset.name='glue' is not an image-classification dataset: .*'sentence'"):
    data.load(dataset_config(name="glue"))


def test_any_tfds_image_classification_dataset_by_name_under_mock_data():
  # fashion_mnist is none of the paper configs' datasets: its shape and classes come from the builder's info.
  with tfds.testing.mock_data(num_examples=24):
    d = data.load(dataset_config(name="fashion_mnist"))
    assert (d.image_shape, d.num_classes, d.num_train) == ((28, 28, 1), 10, 24)
    assert data.image_shape_and_classes(dataset_config(name="fashion_mnist")) == ((28, 28, 1), 10)
    # imagenette's images vary in size: refused without dataset.resize, resized with it.
    with pytest.raises(FitnetsError, match=r"'imagenette' has images of varying size .*set dataset.resize"):
      data.load(dataset_config(name="imagenette"))
    d = data.load(dataset_config(name="imagenette", resize=[20, 24], stats_examples=8))
    assert (d.image_shape, d.num_classes) == ((20, 24, 3), 10)
    batch = next(data.train_batches(d, 8, 3, 0, 0))
    assert batch["image"].shape == (8, 20, 24, 3)
  with pytest.raises(FitnetsError, match=r"dataset.resize=\[20\] must be \[height, width\]"):
    data.load(dataset_config(name="fashion_mnist", resize=[20]))
  with pytest.raises(FitnetsError, match=r"dataset.resize=\[8, 8\] resizes a TFDS dataset's images"):
    data.load(dataset_config(name="digits", resize=[8, 8]))


def test_numpy_arrays_and_tf_data_factories_are_datasets():
  x, y, xt, yt = data.digits_arrays()
  arrays = data.Arrays(x[:100], y[:100], xt[:20], yt[:20])
  d = data.load(dataset_config(name="arrays"), source=arrays)
  assert (d.name, d.image_shape, d.num_classes, d.num_train, d.num_test) == ("arrays", (8, 8, 1), 10, 100, 20)
  tf = data._tf()
  factory = lambda images, labels: lambda: tf.data.Dataset.from_tensor_slices((images, labels))
  again = data.from_tf_data(factory(x[:100], y[:100]), factory(xt[:20], yt[:20]))
  for key in data.NPZ_KEYS:
    np.testing.assert_array_equal(getattr(again, key), getattr(arrays, key))
  # TFDS's form: dicts, here with other keys named.
  as_dicts = lambda images, labels: lambda: tf.data.Dataset.from_tensor_slices({"x": images, "y": labels})
  named = data.from_tf_data(as_dicts(x[:100], y[:100]), as_dicts(xt[:20], yt[:20]), image_key="x", label_key="y")
  for key in data.NPZ_KEYS:
    np.testing.assert_array_equal(getattr(named, key), getattr(arrays, key))
  with pytest.raises(FitnetsError, match=r"elements are dicts with keys \['x', 'y'\]; name the image and label keys"):
    data.from_tf_data(as_dicts(x[:10], y[:10]), as_dicts(xt[:5], yt[:5]))
  # A known size beyond half of this host's memory is refused before anything is read.
  huge = lambda: tf.data.Dataset.from_tensors((x[0], y[0])).repeat(10**12)
  with pytest.raises(FitnetsError, match=r"the train split \(1,000,000,000,000 images of \(8, 8, 1\)\) would take"):
    data.from_tf_data(huge, huge)
  with pytest.raises(FitnetsError, match=r"dataset.name='arrays' trains on arrays given through the Python API"):
    data.load(dataset_config(name="arrays"))
  with pytest.raises(FitnetsError, match=r"arrays were given, but dataset.name='digits'"):
    data.load(dataset_config(name="digits"), source=arrays)
  with pytest.raises(FitnetsError, match=r"train_images in the arrays given \(data.Arrays\) has dtype float64"):
    data.load(dataset_config(name="arrays"), source=data.Arrays(x[:10] / 255.0, y[:10], xt[:5], yt[:5]))


def test_tfds_missing_data_is_a_clear_error(tmp_path):
  with pytest.raises(FitnetsError, match=r"dataset.name='cifar10'.*could not be read from .*download=False"):
    data.load(dataset_config(name="cifar10", data_dir=str(tmp_path)))


@pytest.mark.parametrize("name,shape,classes", [("cifar100", (32, 32, 3), 100), ("mnist", (28, 28, 1), 10)])
def test_tfds_sources_under_mock_data(name, shape, classes):
  with tfds.testing.mock_data(num_examples=24):
    d = data.load(dataset_config(name=name))
    assert (d.image_shape, d.num_classes, d.num_train) == (shape, classes, 24)
    batch = next(data.train_batches(d, 8, 3, 0, 0))
  assert batch["image"].shape == (8,) + shape and batch["image"].dtype == np.float32


def test_gcn_zca_pipeline_matches_numpy(tmp_path):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
  path = tmp_path / "small.npz"
  np.savez(
    path, train_images=images, train_labels=np.arange(40) % 2, test_images=images[:4], test_labels=np.arange(4) % 2
  )
  d = data.load(dataset_config(name="npz", path=str(path), preprocess="gcn_zca", zca_epsilon=0.01))
  batch = next(data.eval_batches(d, 4))["image"]
  flat = preprocessing.gcn(images.reshape(40, -1) / 255.0, 55.0)
  mean, w = preprocessing.zca_fit(flat, 0.01)
  expected = ((flat[:4] - mean) @ w).reshape(4, 4, 4, 3)
  np.testing.assert_allclose(batch, expected, rtol=1e-3, atol=1e-3)


def np_lecun_lcn(x, threshold=1e-4):
  """pylearn2's lecun_lcn on (b, h, w) maps, written out: a 'full' 7×7 convolution with the σ = 2
  Gaussian, cropped back by 3 on each side; x − mean, over max(√(G∗x²), its image mean, threshold)."""
  r = np.arange(7) - 3
  g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 8.0)
  g /= g.sum()

  def conv_full_cropped(m):
    b, h, w = m.shape
    full = np.zeros((b, h + 6, w + 6))
    for i in range(7):
      for j in range(7):
        full[:, i : i + h, j : j + w] += g[i, j] * m
    return full[:, 3:-3, 3:-3]

  centred = x - conv_full_cropped(x)
  denom = np.sqrt(conv_full_cropped(x**2))
  divisor = np.maximum(np.maximum(denom.mean(axis=(1, 2), keepdims=True), denom), threshold)
  return centred / divisor


@pytest.mark.parametrize("all_channels", [False, True])
def test_gcn_lcn_pipeline_matches_numpy(tmp_path, all_channels):
  # Goodfellow et al.'s SVHN preprocessing: GCN per image, then LeCun LCN of every channel (pylearn2 in May
  # 2013, the default here); pylearn2 since January 2014 normalises only the first (lcn_all_channels=False).
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (12, 9, 9, 3), dtype=np.uint8)
  path = tmp_path / "small.npz"
  np.savez(
    path, train_images=images, train_labels=np.arange(12) % 2, test_images=images[:4], test_labels=np.arange(4) % 2
  )
  config = dataset_config(
    name="npz", path=str(path), preprocess="gcn_lcn", gcn_scale=1.0, lcn_all_channels=all_channels
  )
  batch = next(data.eval_batches(data.load(config), 4))["image"]
  expected = preprocessing.gcn(images[:4].reshape(4, -1) / 255.0, 1.0).reshape(4, 9, 9, 3)
  for c in range(3) if all_channels else (0,):
    expected[..., c] = np_lecun_lcn(expected[..., c])
  np.testing.assert_allclose(batch, expected, rtol=1e-4, atol=1e-5)


def test_epoch_order_is_a_shuffle_of_the_examples_with_the_epoch_seed():
  tf = data._tf()
  d = data.load(dataset_config(name="digits"))
  spe, batch = d.num_train // 100, 100
  batches = list(
    itertools.islice(data.train_batches(d, batch, spe, seed=3, stage_index=1, shuffle_buffer=500), 2 * spe)
  )
  ids = np.concatenate([b["index"] for b in batches])
  for epoch in range(2):  # independent: the examples themselves through tf.data's shuffle buffer
    seed = data.epoch_seed(3, 1, epoch)
    expected = tf.data.Dataset.from_tensor_slices(np.arange(d.num_train)).shuffle(
      500, seed=seed, reshuffle_each_iteration=False
    )
    expected = np.array(list(expected.as_numpy_iterator()))[: spe * batch]
    np.testing.assert_array_equal(ids[epoch * spe * batch : (epoch + 1) * spe * batch], expected)


def test_batches_continue_unchanged_across_pipeline_rebuilds(monkeypatch):
  d = data.load(dataset_config(name="digits", flip=True, shift=1))
  spe = d.num_train // 200
  take = lambda: list(itertools.islice(data.train_batches(d, 200, spe, seed=5, stage_index=0, start_step=2), 3 * spe))
  one_pipeline = take()
  monkeypatch.setattr(data, "EPOCHS_PER_PIPELINE", 1)  # a new pipeline every epoch
  for a, b in zip(one_pipeline, take(), strict=True):
    for key in ("image", "label", "index"):
      np.testing.assert_array_equal(a[key], b[key])


def test_a_host_with_fewer_examples_than_a_batch_is_refused_before_any_batch():
  d = data.load(dataset_config(name="digits"))
  with pytest.raises(FitnetsError, match=r"has 1437 training examples in all, fewer than one batch of 2000"):
    next(data.train_batches(d, 2000, 1, seed=0, stage_index=0))
  per_host = dataclasses.replace(d, global_order=False)  # as a TFDS split read per host
  with pytest.raises(FitnetsError, match=r"has 1437 training examples on host 0, fewer than one batch of 2000"):
    next(data.train_batches(per_host, 2000, 1, seed=0, stage_index=0))


def test_hosts_feed_their_rows_of_one_global_batch(monkeypatch):
  """In-memory data, 2 hosts: host 0's and host 1's batches, stacked, are the 1-host batches bit for bit
  (examples, labels, flips and shifts), over an epoch boundary and from a resumed step."""
  d = data.load(dataset_config(name="digits", flip=True, shift=2))
  spe, batch = d.num_train // 64, 64
  take = lambda local, start=0: list(
    itertools.islice(data.train_batches(d, local, spe, seed=7, stage_index=2, start_step=start), spe + 2)
  )
  one_host = take(batch)
  monkeypatch.setattr(data.jax, "process_count", lambda: 2)
  hosts = []
  for index in (0, 1):
    monkeypatch.setattr(data.jax, "process_index", lambda index=index: index)
    hosts.append(take(batch // 2))
  for step, whole in enumerate(one_host):
    for key in ("image", "label", "index"):
      np.testing.assert_array_equal(np.concatenate([hosts[0][step][key], hosts[1][step][key]]), whole[key])
  monkeypatch.setattr(data.jax, "process_index", lambda: 1)
  np.testing.assert_array_equal(take(batch // 2, start=spe - 1)[0]["image"], one_host[spe - 1]["image"][batch // 2 :])

"""Datasets → this host's tf.data pipeline → numpy batches (the trainer makes them global arrays).

Sources: `digits` (scikit-learn's 1,797 8×8 handwritten digits, embedded, no network), `npz`
(a user's file), `arrays` (NumPy arrays or a tf.data factory given through the Python API:
`Arrays`, `from_tf_data`), and any TFDS image-classification dataset by name (`svhn_cropped`,
`cifar10`, `fashion_mnist`, `imagenette`, …: image and label features, shape and classes read from
the builder's info; never downloaded unless `dataset.download=True`; `dataset.resize` for datasets
of varying image sizes). Each host reads its own slice of the test and validation splits.

Order is a pure function of (seed, stage, epoch): epoch e is shuffled with a seed derived from
those, and augmentation draws stateless randomness from (that seed, batch index), so a resumed
run sees exactly the batches an uninterrupted one would.

Host count. In-memory datasets (digits, npz, synthetic) keep the whole training split on every
host and shuffle it in one global order; each host feeds its rows of each global batch, so 1 host
× 4 devices and 2 hosts × 2 devices train on the same batches. A TFDS dataset is read per host
(each its own part of the split, shuffled on its own), so there the global batches depend on the
host count.

Streaming (`dataset.streaming`, ImageNet scale). A TFDS dataset prepared as ArrayRecord files is
opened with `tfds.data_source`, which reads any example by its index: nothing of the training split
is held in memory. The order is the in-memory path's global one (positions shuffled by the epoch's
seed); each host reads and decodes only the examples of its rows of each global batch, and each
example's random-resized crop (`dataset.crop='imagenet'`) is drawn from (epoch seed, global batch,
row). So the global batches do not depend on the host count, and a resumed run sees the batches an
uninterrupted one would.
"""

import dataclasses
import gzip
import hashlib
import importlib.util
import io
import itertools
import math
import os
import sys
from typing import Callable

import jax
import numpy as np

from fitnets_jax import files, preprocessing
from fitnets_jax.errors import FitnetsError, check, one_of

SOURCES = ("digits", "npz", "arrays")
PREPROCESS = preprocessing.KINDS
NPZ_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
EPOCHS_PER_PIPELINE = 1000  # epochs one training pipeline runs before the next is built
DIGITS_TRAIN = 1437  # of 1,797; the rest (360) is the test split
# (image shape, classes) of the named datasets, known without reading them
SHAPES = {
  "digits": ((8, 8, 1), 10),
  "mnist": ((28, 28, 1), 10),
  "svhn_cropped": ((32, 32, 3), 10),
  "cifar10": ((32, 32, 3), 10),
  "cifar100": ((32, 32, 3), 100),
}


def _tf():
  import tensorflow as tf  # Imported on use: keeps TF's start-up out of light imports.

  tf.config.set_visible_devices([], "GPU")  # tf.data only; the accelerator belongs to JAX.
  return tf


@dataclasses.dataclass
class Data:
  """One dataset: sizes, this host's splits, and the fitted preprocessing."""

  name: str
  num_classes: int
  image_shape: tuple
  num_train: int  # whole split, all hosts
  num_test: int
  train_examples: tuple  # (uint8 images, int32 labels, int32 example ids), eager tf tensors: every host's
  # examples when `global_order`, else this host's part
  test: Callable
  preprocessing: preprocessing.Preprocessing  # fitted on the training split; `normalize` applies it
  augment_flip: bool = False
  augment_shift: int = 0
  augment_pad_mode: str = "constant"  # how a shift pads: constant (zeros) | reflect
  augment_cutout: int = 0  # side of one square hole per image (DeVries & Taylor's Cutout); 0: none
  num_validation: int = 0  # held out of training by dataset.validation_examples
  validation: Callable = None
  train_all: Callable = None  # () → the whole training split (every host's), in id order
  global_order: bool = False  # one order over all hosts' examples; each host takes its rows of a batch
  fingerprint: str = ""  # SHA-256 of what identifies the training data (`fingerprint`), the same on every host
  read_train: Callable = None  # streaming: (tf int64 position) → (encoded image, label) of the training split
  crop: str = "resize"  # streaming: how a training image reaches image_shape (`dataset.crop`)
  train_labels: Callable = None  # streaming: () → every training label, in id order

  def normalize(self, batch):
    """A float32 [0, 1] tf batch, preprocessed."""
    return self.preprocessing.tf(batch)

  @property
  def augmented(self):
    return self.augment_flip or self.augment_shift > 0 or self.augment_cutout > 0


# --------------------------------------------------------------------------- sources


def _sklearn_file(*parts):
  """A file shipped inside the installed scikit-learn package (found without importing it)."""
  spec = importlib.util.find_spec("sklearn")
  check(
    spec is not None and spec.origin,
    "dataset.name='digits' needs scikit-learn, whose package holds the digits; "
    "pip install scikit-learn (requirements.txt pins it).",
  )
  return files.join(os.path.dirname(spec.origin), *parts)


def digits_arrays():
  """scikit-learn's digits as uint8 NHWC images with a fixed split.

  The 1,797 images are permuted once with numpy's RandomState(0); the first 1,437 are the
  training split, the last 360 the test split. Pixel values 0..16 are scaled to 0..255.
  The table is read from scikit-learn's data folder as `load_digits` reads it, without importing
  scikit-learn (a 1–3 s import).
  """
  table = np.loadtxt(
    io.BytesIO(gzip.decompress(files.read_bytes(_sklearn_file("datasets", "data", "digits.csv.gz")))), delimiter=","
  )
  images = np.round(table[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = table[:, -1].astype(np.int32)
  order = np.random.RandomState(0).permutation(len(labels))
  train, test = order[:DIGITS_TRAIN], order[DIGITS_TRAIN:]
  return images[train], labels[train], images[test], labels[test]


def npz_arrays(path, num_classes=0):
  """Reads and validates a user's .npz (uint8 NHWC images, integer labels)."""
  check(path, f"dataset.name='npz' needs dataset.path=/path/to/file.npz holding {', '.join(NPZ_KEYS)}.")
  check(
    files.isfile(path),
    f"dataset.path={path!r} does not exist or is not a file; it must be an .npz holding {', '.join(NPZ_KEYS)}.",
  )
  try:
    with files.open_path(path, "rb") as raw, np.load(raw, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile/pickle/format errors all mean the same to a user.
    raise FitnetsError(
      f"dataset.path={path!r} could not be read as an .npz file ({type(e).__name__}: {e}); "
      f"save it with numpy.savez holding {', '.join(NPZ_KEYS)}."
    ) from None
  missing = [k for k in NPZ_KEYS if k not in arrays]
  check(
    not missing,
    f"dataset.path={path!r} lacks {', '.join(missing)}; it holds {sorted(arrays)} but must hold {', '.join(NPZ_KEYS)}.",
  )
  return checked_arrays(arrays, repr(path), num_classes)


def checked_arrays(arrays, path, num_classes=0):
  """(train images, labels, test images, labels, classes) of {NPZ_KEYS: array}, validated; `path`
  names where they came from in errors."""
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  for split in ("train", "test"):
    x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    check(
      x.ndim == 4,
      f"{split}_images in {path} has shape {x.shape}; it must be NHWC (examples, "
      "height, width, channels) — add a channel axis for grayscale: x[..., None].",
    )
    check(x.dtype == np.uint8, f"{split}_images in {path} has dtype {x.dtype}; it must be uint8 pixels in 0..255.")
    check(len(x) > 0, f"{split}_images in {path} is empty; each split needs at least one example.")
    check(
      y.ndim == 1 and np.issubdtype(y.dtype, np.integer),
      f"{split}_labels in {path} has shape {y.shape} and dtype {y.dtype}; it must be a 1-D integer array.",
    )
    check(len(y) == len(x), f"{split}_labels in {path} has {len(y)} labels for {len(x)} images.")
  check(
    arrays["train_images"].shape[1:] == arrays["test_images"].shape[1:],
    f"train_images {arrays['train_images'].shape[1:]} and test_images {arrays['test_images'].shape[1:]} "
    f"in {path} must have the same image shape.",
  )
  classes = num_classes or int(arrays["train_labels"].max()) + 1
  for split in ("train", "test"):
    y = arrays[f"{split}_labels"]
    check(
      y.min() >= 0 and y.max() < classes,
      f"{split}_labels in {path} range over {y.min()}..{y.max()}; labels must lie in 0..{classes - 1} "
      "(the classes seen in train_labels, or set dataset.num_classes).",
    )
  return (
    arrays["train_images"],
    arrays["train_labels"].astype(np.int32),
    arrays["test_images"],
    arrays["test_labels"].astype(np.int32),
    classes,
  )


def _host_slice(array):
  return array[jax.process_index() :: jax.process_count()]


def _examples(tf, images, labels, ids):
  """Training examples as eager tensors, made once: pipelines capture them by reference."""
  return tf.constant(images), tf.constant(labels.astype(np.int32)), tf.constant(ids.astype(np.int32))


def _in_memory(name, x_train, y_train, x_test, y_test, num_classes, validation_examples=0):
  """Splits from arrays; the last `validation_examples` training examples become the validation split.
  A training example's id is its index in the training split."""
  tf = _tf()
  make = lambda *arrays: lambda: tf.data.Dataset.from_tensor_slices(tuple(_host_slice(a) for a in arrays))
  n = len(x_train) - validation_examples
  ids = np.arange(n, dtype=np.int32)
  spec = dict(
    name=name,
    num_classes=num_classes,
    image_shape=tuple(x_train.shape[1:]),
    num_train=n,
    num_test=len(x_test),
    train_examples=_examples(tf, x_train[:n], y_train[:n], ids),
    global_order=True,
    test=make(x_test, y_test),
    train_all=lambda: tf.data.Dataset.from_tensor_slices((x_train[:n], y_train[:n], ids)),
  )
  if validation_examples:
    spec.update(num_validation=validation_examples, validation=make(x_train[n:], y_train[n:]))
  return spec


def tfds_info(cfg):
  """(image shape, classes) of the TFDS dataset `cfg.name` from its builder's info (no data read):
  an image-classification dataset, with `image` and `label` features; `dataset.resize` gives the
  shape of datasets whose images vary in size."""
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(cfg.name, data_dir=cfg.data_dir or None)
  except Exception as e:  # DatasetNotFoundError and its kin
    raise FitnetsError(
      f"dataset.name={cfg.name!r} is neither one of {', '.join(map(repr, SOURCES))} nor a TFDS dataset "
      f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}); use an image-classification dataset of "
      "the TFDS catalogue (e.g. 'cifar10', 'fashion_mnist', 'imagenette'), 'digits', or 'npz' with dataset.path."
    ) from None
  features = builder.info.features
  names = set(getattr(features, "keys", lambda: [])())
  label = features["label"] if "label" in names else None
  check(
    {"image", "label"} <= names and hasattr(label, "num_classes") and len(features["image"].shape) == 3,
    f"dataset.name={cfg.name!r} is not an image-classification dataset: it needs an `image` feature "
    f"(height, width, channels) and a `label` class feature, and has {sorted(names) or 'no named features'}.",
  )
  shape = tuple(features["image"].shape)
  resize = tuple(cfg.resize)
  check(
    not resize or (len(resize) == 2 and all(isinstance(n, int) and n > 0 for n in resize)),
    f"dataset.resize={list(resize)!r} must be [height, width] in pixels, e.g. [64, 64], or [] to keep the size.",
  )
  if resize:
    return (*resize, shape[2]), label.num_classes
  check(
    None not in shape,
    f"dataset.name={cfg.name!r} has images of varying size {shape}; set dataset.resize=[height, width] "
    "(e.g. [64, 64]) to give them one.",
  )
  return shape, label.num_classes


def image_shape_and_classes(cfg):
  """(image shape, classes) of the dataset `cfg` names, without reading it where that is known
  (digits and TFDS datasets); None for npz and arrays."""
  if cfg.name in SHAPES and not cfg.resize:
    return SHAPES[cfg.name]
  if cfg.name in SOURCES:
    return None
  return tfds_info(cfg)


CROPS = ("resize", "imagenet")
CENTRE_FRACTION = 0.875  # the test crop's share of the resized shorter side: 224 of 256


def _centre_crop(tf, image, size):
  """torchvision's Resize(size / 0.875) then CenterCrop(size) of one uint8 image: the shorter side
  scaled to round(min(size) / 0.875), the other in proportion (truncated), then the centre `size`."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  short = tf.cast(round(min(size) / CENTRE_FRACTION), tf.int32)
  scale = tf.cast(short, tf.float64) / tf.cast(tf.minimum(h, w), tf.float64)
  new_h = tf.where(h <= w, short, tf.cast(tf.cast(h, tf.float64) * scale, tf.int32))
  new_w = tf.where(w < h, short, tf.cast(tf.cast(w, tf.float64) * scale, tf.int32))
  resized = tf.image.resize(image, tf.stack([new_h, new_w]))
  top = tf.cast(tf.round(tf.cast(new_h - size[0], tf.float32) / 2), tf.int32)
  left = tf.cast(tf.round(tf.cast(new_w - size[1], tf.float32) / 2), tf.int32)
  return tf.cast(tf.round(resized[top : top + size[0], left : left + size[1]]), tf.uint8)


def _random_resized_crop(tf, image, size, key):
  """A crop of 8–100 % of the image's area and aspect ratio 3/4–4/3 (10 attempts, then the whole
  image), resized bilinearly to `size`: torchvision's RandomResizedCrop in TF's stateless form (the
  op Flax's ImageNet example uses), drawn from `key`."""
  begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
    tf.shape(image),
    bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
    seed=key,
    min_object_covered=0.0,
    aspect_ratio_range=(3 / 4, 4 / 3),
    area_range=(0.08, 1.0),
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  crop = tf.slice(image, begin, extent)
  return tf.cast(tf.round(tf.image.resize(crop, size)), tf.uint8)


def _decode(tf, encoded):
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _sizer(tf, cfg):
  """ds → ds with every image brought to `dataset.resize` (`dataset.crop`: bilinear, or the centre crop),
  when it is set; `dataset.crop` checked."""
  resize = tuple(cfg.resize)
  one_of("dataset.crop", cfg.crop, CROPS)
  check(
    cfg.crop == "resize" or (cfg.streaming and resize),
    f"dataset.crop={cfg.crop!r} crops each training image at random on its way to dataset.resize, which "
    "only the streaming path does: set dataset.streaming=True and dataset.resize=[height, width] (e.g. "
    "[224, 224]), or dataset.crop='resize'.",
  )

  def sized(ds):
    if not resize:
      return ds
    if cfg.crop == "imagenet":
      return ds.map(lambda x, y: (_centre_crop(tf, x, resize), y))
    return ds.map(lambda x, y: (tf.cast(tf.round(tf.image.resize(x, resize)), tf.uint8), y))

  return sized


def _tfds(cfg):
  import tensorflow_datasets as tfds

  tf = _tf()
  image_shape, num_classes = tfds_info(cfg)
  kwargs = dict(data_dir=cfg.data_dir or None, download=cfg.download, as_supervised=True)
  sized = _sizer(tf, cfg)
  if cfg.streaming:
    return _tfds_stream(cfg, tf, tfds, image_shape, num_classes, sized)

  def load(split, **extra):
    try:
      ds, info = tfds.load(cfg.name, split=split, with_info=True, **kwargs, **extra)
      return sized(ds), info
    except Exception as e:  # TFDS raises AssertionError/DatasetNotFoundError/ValueError alike.
      where = cfg.data_dir or "the TFDS default data_dir (~/tensorflow_datasets)"
      raise FitnetsError(
        f"dataset.name={cfg.name!r}, split {split!r} could not be read from {where} with "
        f"download={cfg.download} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). Prepare it there "
        "(tfds build / tfds.load(..., download=True) on a machine with network), point "
        "dataset.data_dir at it, or set --config.dataset.download=True."
      ) from None

  def count(split, ds, info):
    try:
      return info.splits[split].num_examples
    except (KeyError, ValueError):  # No split metadata (e.g. tfds.testing.mock_data): count.
      n = int(ds.cardinality().numpy())
      return n if n >= 0 else sum(1 for _ in ds)

  host_splits = lambda split: tfds.even_splits(split, n=jax.process_count())
  host = lambda split: host_splits(split)[jax.process_index()]
  held_out = cfg.validation_examples
  *first, last = cfg.train_split.split("+")  # a combination holds out the end of its last split
  check(
    not held_out or "[" not in cfg.train_split,
    f"dataset.validation_examples={held_out} holds out the end of the training split, but dataset.train_split="
    f"{cfg.train_split!r} is a slice; use split names such as 'train' or 'train+extra'.",
  )
  validation_split = f"{last}[-{held_out}:]" if held_out else ""
  train_split = "+".join([*first, f"{last}[:-{held_out}]"]) if held_out else cfg.train_split
  train_ds, info = load(train_split)
  test_ds, _ = load(cfg.test_split)
  sample = np.stack([x for x, _ in tfds.as_numpy(train_ds.take(cfg.stats_examples or -1))])
  # A training example's id is its position in the whole split; hosts read consecutive parts of it.
  first_id = sum(count(part, load(part)[0], info) for part in host_splits(train_split)[: jax.process_index()])
  with_ids = lambda ds, first: ds.enumerate().map(lambda i, xy: (xy[0], xy[1], tf.cast(i + first, tf.int32)))
  images, labels = [np.zeros((0,) + image_shape, np.uint8)], [np.zeros(0, np.int32)]
  for x, y in tfds.as_numpy(load(host(train_split))[0].batch(4096)):  # read once, kept in memory
    images.append(x)
    labels.append(y)
  images, labels = np.concatenate(images), np.concatenate(labels)
  spec = dict(
    name=cfg.name,
    num_classes=num_classes,
    image_shape=image_shape,
    num_train=count(train_split, train_ds, info),
    num_test=count(cfg.test_split, test_ds, info),
    train_examples=_examples(tf, images, labels, first_id + np.arange(len(labels))),
    test=lambda: load(host(cfg.test_split))[0],
    train_all=lambda: with_ids(load(train_split)[0], 0),
  )
  if held_out:
    spec.update(
      num_validation=count(validation_split, load(validation_split)[0], info),
      validation=lambda: load(host(validation_split))[0],
    )
  return spec, sample


def _tfds_stream(cfg, tf, tfds, image_shape, num_classes, sized):
  """The spec of a TFDS dataset read by index from its ArrayRecord files (`dataset.streaming`)."""
  check(
    cfg.stats_examples > 0 and not cfg.validation_examples,
    f"dataset.streaming: dataset.stats_examples={cfg.stats_examples} must be > 0 (fitting the preprocessing "
    f"on every example would read the whole split) and dataset.validation_examples={cfg.validation_examples} "
    "must be 0 (hold out a split of the dataset's own instead).",
  )

  def source(split):
    try:
      return tfds.data_source(
        cfg.name,
        split=split,
        data_dir=cfg.data_dir or None,
        download=cfg.download,
        decoders={"image": tfds.decode.SkipDecoding()},
      )
    except Exception as e:  # noqa: BLE001  (a dataset in TFRecord files only, or missing)
      where = cfg.data_dir or "the TFDS default data_dir (~/tensorflow_datasets)"
      raise FitnetsError(
        f"dataset.streaming: {cfg.name!r}, split {split!r} could not be opened for reading by index in {where} "
        f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}). Streaming reads ArrayRecord files: "
        f"prepare them with `tfds build {cfg.name} --file_format=array_record` (or "
        "tfds.builder(...).download_and_prepare(file_format='array_record')), or set dataset.streaming=False."
      ) from None

  train, test = source(cfg.train_split), source(cfg.test_split)

  def reader(data_source):
    def read(position):
      example = data_source[int(position)]
      return np.asarray(example["image"], object), np.int32(example["label"])

    def read_tf(position):
      encoded, label = tf.numpy_function(read, [position], (tf.string, tf.int32), stateful=False)
      label.set_shape([])
      return _decode(tf, encoded), label

    return read_tf

  read_train, read_test = reader(train), reader(test)
  indices = lambda n, first=0, step=1: tf.data.Dataset.range(first, n, step)
  host = lambda n: indices(n, jax.process_index(), jax.process_count())
  stats = min(cfg.stats_examples, len(train))
  sample = np.stack(
    [x for x, _ in sized(indices(stats).map(read_train)).as_numpy_iterator()]
  )  # the first examples, centre-cropped as the test images are
  spec = dict(
    name=cfg.name,
    num_classes=num_classes,
    image_shape=image_shape,
    num_train=len(train),
    num_test=len(test),
    train_examples=None,
    global_order=True,
    test=lambda: sized(host(len(test)).map(read_test, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)),
    train_all=lambda: (
      sized(indices(len(train)).map(read_train, tf.data.AUTOTUNE, deterministic=True))
      .enumerate()
      .map(lambda i, xy: (xy[0], xy[1], tf.cast(i, tf.int32)))
    ),
    read_train=read_train,
    train_labels=lambda: np.array([train[i]["label"] for i in range(len(train))], np.int32),
    crop=cfg.crop,
  )
  return spec, sample


def fingerprint(*parts):
  """SHA-256 of arrays and plain values: what a checkpoint records of its training data, so a resume on
  other data is caught. In-memory datasets give every array (the same on every host); a TFDS dataset its
  name, splits, sizes and the images the preprocessing is fitted on (the first of the split)."""
  h = hashlib.sha256()
  for part in parts:
    a = np.ascontiguousarray(part) if isinstance(part, np.ndarray) else None
    h.update(f"{a.dtype}:{a.shape};".encode() + a.tobytes() if a is not None else f"{part!r};".encode())
  return h.hexdigest()


# --------------------------------------------------------------------------- public API


def synthetic_arrays(cfg, examples, seed=0):
  """Random uint8 images and labels shaped like dataset `cfg.name` (train: `examples`, test: a
  quarter): what the benchmark feeds through the real pipeline when the dataset is not on this machine."""
  known = image_shape_and_classes(cfg)
  check(
    known is not None,
    f"a synthetic stand-in needs a dataset of known shape (digits or a TFDS name); "
    f"dataset.name={cfg.name!r} is read from its file instead.",
  )
  shape, classes = known
  rng = np.random.default_rng(seed)
  split = lambda n: (rng.integers(0, 256, (n,) + shape, dtype=np.uint8), rng.integers(0, classes, n).astype(np.int32))
  return (*split(examples), *split(max(1, examples // 4)), classes)


@dataclasses.dataclass
class Arrays:
  """A dataset given as NumPy arrays (the Python API's own data): uint8 NHWC images and integer
  labels per split, as an npz file holds them. `fitnets_jax.run(config, workdir, Arrays(…))` trains
  on them with `dataset.name='arrays'`; `num_classes` 0: the classes seen in `train_labels`."""

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int = 0

  def checked(self):
    arrays = {k: getattr(self, k) for k in NPZ_KEYS}
    return checked_arrays(arrays, "the arrays given (data.Arrays)", self.num_classes)


def host_memory():
  """This host's physical memory in bytes, or None where the OS does not say."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None


def from_tf_data(train, test, num_classes=0, image_key="image", label_key="label"):
  """`Arrays` of two tf.data factories: `train()` and `test()` each return a `tf.data.Dataset` whose
  elements are (image, label) pairs or dicts with `image_key` and `label_key` (TFDS's form), with uint8
  (height, width, channels) images.

  What is held in memory: both splits, read once, as uint8 arrays (examples × height × width ×
  channels bytes, printed when read), as the library holds every training set; a dataset whose
  known size would take more than half of this host's memory is refused before it is read. A
  streaming input path for datasets larger than memory is not implemented."""

  def pair(element):
    if isinstance(element, dict):
      check(
        image_key in element and label_key in element,
        f"data.from_tf_data: the dataset's elements are dicts with keys {sorted(element)}; name the image and label "
        f"keys with image_key=… and label_key=… (now {image_key!r} and {label_key!r}).",
      )
      return element[image_key], element[label_key]
    check(
      isinstance(element, tuple) and len(element) == 2,
      f"data.from_tf_data: the dataset's elements must be (image, label) pairs or dicts; got {type(element).__name__}.",
    )
    return element

  def read(factory, split):
    try:
      dataset = factory()
      spec = dataset.element_spec
      image_spec = pair(spec)[0]
      size, memory = int(dataset.cardinality()), host_memory()
      if size > 0 and memory and None not in image_spec.shape:
        need = size * math.prod(image_spec.shape)
        check(
          need <= memory // 2,
          f"data.from_tf_data: the {split} split ({size:,} images of {tuple(image_spec.shape)}) would take "
          f"{need / 2**30:.1f} GiB in memory, more than half of this host's {memory / 2**30:.1f} GiB; the library "
          "holds a training set in memory, so train on a subset (dataset.take(n)).",
        )
      images, labels = [], []
      for batch in dataset.map(lambda *e: pair(e[0] if len(e) == 1 else tuple(e))).batch(4096).as_numpy_iterator():
        images.append(np.asarray(batch[0]))
        labels.append(np.asarray(batch[1], np.int64).reshape(-1))
    except FitnetsError:
      raise
    except Exception as e:  # noqa: BLE001  (whatever the user's pipeline raises)
      raise FitnetsError(
        f"the {split} factory given to data.from_tf_data failed ({type(e).__name__}: {str(e)[:200]}); it must "
        "return a tf.data.Dataset of (image, label) pairs or of dicts with image_key and label_key, uint8 "
        "(height, width, channels) images of one shape."
      ) from None
    check(images, f"the {split} factory given to data.from_tf_data yields no examples.")
    images, labels = np.concatenate(images), np.concatenate(labels)
    print(
      f"data.from_tf_data: {split} split held in memory: {images.shape} {images.dtype}, {images.nbytes / 2**20:.1f} MiB"
    )
    return images, labels

  return Arrays(*read(train, "train"), *read(test, "test"), num_classes=num_classes)


def load(cfg, synthetic_examples=0, source=None):
  """Reads, validates and fits the dataset named by `cfg` (config.dataset); with `synthetic_examples`
  > 0, random images of its shape stand in for it (same pipeline and augmentation); `source` (an
  `Arrays`) is the data of `dataset.name='arrays'`."""
  check(
    (cfg.name == "arrays") == (source is not None),
    "dataset.name='arrays' trains on arrays given through the Python API (fitnets_jax.run(config, workdir, "
    "data.Arrays(…))); give both, or name a dataset (digits, npz, a TFDS name)."
    if cfg.name == "arrays" or source is None
    else f"arrays were given, but dataset.name={cfg.name!r}; set dataset.name='arrays' to train on them.",
  )
  one_of("dataset.preprocess", cfg.preprocess, PREPROCESS)
  check(
    not cfg.resize or cfg.name not in SOURCES,
    f"dataset.resize={list(cfg.resize)!r} resizes a TFDS dataset's images; dataset.name={cfg.name!r} gives its "
    "images as they are: resize them before, or set dataset.resize=[].",
  )
  check(isinstance(cfg.shift, int) and cfg.shift >= 0, f"dataset.shift={cfg.shift!r} must be an integer ≥ 0.")
  check(
    isinstance(cfg.cutout, int) and cfg.cutout >= 0,
    f"dataset.cutout={cfg.cutout!r} must be an integer ≥ 0: the side of the hole in pixels (0: no Cutout).",
  )
  one_of("dataset.pad_mode", cfg.pad_mode, ("constant", "reflect"))
  check(
    isinstance(cfg.stats_examples, int) and cfg.stats_examples >= 0,
    f"dataset.stats_examples={cfg.stats_examples!r} must be an integer ≥ 0 (0: every training example).",
  )
  check(
    cfg.validation_examples >= 0,
    f"dataset.validation_examples={cfg.validation_examples!r} must be ≥ 0 (0: no validation split).",
  )
  if synthetic_examples:
    *arrays, classes = synthetic_arrays(cfg, synthetic_examples)
    spec = _in_memory(cfg.name, *arrays, classes)
    sample = arrays[0][: cfg.stats_examples or None]
    digest = fingerprint(*arrays)
  elif cfg.name not in SOURCES:
    spec, sample = _tfds(cfg)
    digest = fingerprint(cfg.name, cfg.train_split, cfg.test_split, spec["num_train"], spec["num_test"], sample)
  else:
    if cfg.name == "digits":
      *arrays, classes = *digits_arrays(), 10
    elif cfg.name == "arrays":
      *arrays, classes = source.checked()
    else:
      *arrays, classes = npz_arrays(cfg.path, cfg.num_classes)
    check(
      cfg.validation_examples < len(arrays[0]),
      f"dataset.validation_examples={cfg.validation_examples} would hold out all {len(arrays[0])} training "
      "examples; use fewer.",
    )
    spec = _in_memory(cfg.name, *arrays, classes, cfg.validation_examples)
    sample = arrays[0][: spec["num_train"]][: cfg.stats_examples or None]
    digest = fingerprint(*arrays)
  check(
    spec["num_train"] > 0 and spec["num_test"] > 0,
    f"dataset {cfg.name!r} has {spec['num_train']} training and {spec['num_test']} test examples; "
    "both splits need at least one.",
  )
  check(
    cfg.pad_mode != "reflect" or cfg.shift < min(spec["image_shape"][:2]),
    f"dataset.shift={cfg.shift} with pad_mode='reflect' needs a shift smaller than the "
    f"{spec['image_shape'][0]}×{spec['image_shape'][1]} images; lower dataset.shift.",
  )
  fitted = preprocessing.fit(cfg, sample)
  warn_if_uninformative(cfg, spec["image_shape"], sample, fitted.tf)
  return Data(
    **spec,
    preprocessing=fitted,
    augment_flip=cfg.flip,
    augment_shift=cfg.shift,
    augment_pad_mode=cfg.pad_mode,
    augment_cutout=cfg.cutout,
    fingerprint=digest,
  )


def warn_if_uninformative(cfg, image_shape, sample, normalize, probe_examples=512):
  """Warns (process 0) when the network would see nothing to learn from: training images that are all
  the same after preprocessing (constant images, or 1×1 ones under per-image GCN), or 1×1 images."""
  if jax.process_index() != 0:
    return
  tf = _tf()
  seen = np.asarray(normalize(tf.constant(sample[:probe_examples].astype(np.float32) / 255.0)))
  problems = []
  if len(seen) > 1 and float(seen.std(axis=0).max()) < 1e-6:
    problems.append(
      f"after dataset.preprocess={cfg.preprocess!r} every training image is the same (the first "
      f"{len(seen)} were checked), so the network can learn only how often each class occurs"
    )
  if tuple(image_shape[:2]) == (1, 1):
    problems.append(
      "the images are 1×1 pixels, one value per channel, so convolutions and pooling have nothing to work on"
    )
  if problems:
    print(
      f"warning: dataset {cfg.name!r}: {'; and '.join(problems)}. Expect chance accuracy; check the dataset "
      f"(dataset.path={cfg.path!r}) and dataset.preprocess.",
      file=sys.stderr,
      flush=True,
    )


def labels_by_id(data):
  """The label of every training example, indexed by its id (the batch's "index"), as int32; on
  several hosts that each hold their own examples, gathered from all of them (a collective: every
  host calls it)."""
  if data.train_examples is None:  # streaming: every host reads the labels by index
    return data.train_labels()
  _, labels, ids = data.train_examples
  labels, ids = np.asarray(labels, np.int32), np.asarray(ids, np.int64)
  if not data.global_order and jax.process_count() > 1:
    from jax.experimental import multihost_utils

    most = int(np.max(multihost_utils.process_allgather(np.int64(len(ids)))))
    pad = lambda a: np.concatenate([a, np.full(most - len(a), -1, a.dtype)])
    ids = np.asarray(multihost_utils.process_allgather(pad(ids))).reshape(-1)
    labels = np.asarray(multihost_utils.process_allgather(pad(labels))).reshape(-1)
    labels, ids = labels[ids >= 0], ids[ids >= 0]
  by_id = np.full(data.num_train, -1, np.int32)
  by_id[ids] = labels
  check((by_id >= 0).all(), f"dataset {data.name!r}: {int((by_id < 0).sum())} training example ids have no label.")
  return by_id


def epoch_seed(seed, stage_index, epoch):
  """The shuffle/augmentation seed of one epoch of one stage."""
  return int(np.random.SeedSequence([seed, stage_index, epoch]).generate_state(1)[0] >> 1)


def _augment(tf, images, seed, index, flip, shift, pad_mode="constant", first=0, total=None, cutout=0, fill=None):
  """Random flips and shifts (pad by `shift` pixels, zeros or reflected, then crop back), then Cutout
  (one `cutout`×`cutout` hole per image set to `fill`, its centre uniform over the image and the hole
  clipped at the borders, as DeVries & Taylor's `Cutout`) of a batch, drawn statelessly from (seed,
  batch index). `images` are rows `first`… of a global batch of `total` (default: all of it): each
  host draws the global batch's randomness and keeps its rows."""
  n, h, w = tf.shape(images)[0], images.shape[1], images.shape[2]
  total = n if total is None else total
  key = tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)])
  if flip:
    coin = tf.random.stateless_uniform([total], seed=key)[first : first + n] < 0.5
    images = tf.where(coin[:, None, None, None], tf.reverse(images, axis=[2]), images)
  if shift:
    offsets = tf.random.stateless_uniform([total, 2], seed=key + 1, minval=0, maxval=2 * shift + 1, dtype=tf.int32)[
      first : first + n
    ]
    padded = tf.pad(images, [[0, 0], [shift, shift], [shift, shift], [0, 0]], mode=pad_mode.upper())
    rows = offsets[:, :1] + tf.range(h)[None]
    cols = offsets[:, 1:] + tf.range(w)[None]
    images = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
  if cutout:
    draw = lambda offset, size: tf.random.stateless_uniform([total], seed=key + offset, maxval=size, dtype=tf.int32)
    y, x = draw(2, h)[first : first + n, None], draw(3, w)[first : first + n, None]
    inside = lambda c, size: (tf.range(size)[None] >= c - cutout // 2) & (tf.range(size)[None] < c + cutout // 2)
    hole = inside(y, h)[:, :, None, None] & inside(x, w)[:, None, :, None]
    images = tf.where(hole, tf.zeros_like(images) + fill, images)
  return images


def _preprocessed(tf, data, images, seed_e, index, first, total):
  """A uint8 batch (rows `first`… of a global batch of `total`) as the network's input: normalised, then
  augmented (`_augment`) from (epoch seed, batch index). Cutout's hole holds what a black image becomes
  after the preprocessing (the authors' Cutout zeros the image before its Normalize)."""
  batch = data.normalize(tf.cast(images, tf.float32) / 255.0)
  if not data.augmented:
    return batch
  black = data.normalize(tf.zeros((1,) + tuple(data.image_shape), tf.float32)) if data.augment_cutout else None
  return _augment(
    tf,
    batch,
    seed_e,
    index,
    data.augment_flip,
    data.augment_shift,
    data.augment_pad_mode,
    first=first,
    total=total,
    cutout=data.augment_cutout,
    fill=black,
  )


def train_batches(data, local_batch, steps_per_epoch, seed, stage_index, start_step=0, shuffle_buffer=50000):
  """Endless numpy batches {image, label, index} for this host, starting at `start_step` of the stage.

  With `data.global_order`, every host shuffles all examples alike and takes its `local_batch` rows
  of each global batch (host 0 the first rows); else it shuffles and batches its own examples.
  One tf.data pipeline runs across epochs. An epoch's order shuffles example positions with the
  seed of (seed, stage, epoch), the permutation that shuffling the examples themselves gives, and is
  made in the background a whole epoch ahead; a batch gathers its images from memory. So an epoch
  boundary costs the step nothing (rebuilding and refilling a shuffle of the images there took
  50 ms on digits and 130 ms per 4,096 32×32×3 images, a stall of the devices every epoch).
  """
  tf = _tf()
  if data.read_train is not None:
    yield from _stream_batches(tf, data, local_batch, steps_per_epoch, seed, stage_index, start_step, shuffle_buffer)
    return
  images, labels, ids = data.train_examples
  examples = int(labels.shape[0])
  hosts, host = (jax.process_count(), jax.process_index()) if data.global_order else (1, 0)
  global_batch = local_batch * hosts
  if examples < global_batch:
    where = "in all" if data.global_order else f"on host {jax.process_index()}"
    raise FitnetsError(
      f"dataset {data.name!r} has {examples} training examples {where}, fewer than one batch "
      f"of {global_batch}; lower batch_size."
    )
  first_epoch, offset = divmod(start_step, steps_per_epoch)
  buffer = max(1, min(shuffle_buffer, data.num_train))

  positions = _epoch_positions(tf, examples, global_batch, steps_per_epoch, buffer)
  rows = slice(host * local_batch, (host + 1) * local_batch)
  epoch_order = lambda seed_e, skip: positions(seed_e, skip).map(lambda s, index, p: (s, index, p[rows]))

  def prepare(seed_e, index, positions):
    batch = _preprocessed(tf, data, tf.gather(images, positions), seed_e, index, host * local_batch, global_batch)
    return {"image": batch, "label": tf.gather(labels, positions), "index": tf.gather(ids, positions)}

  for epoch in itertools.count(first_epoch, EPOCHS_PER_PIPELINE):
    epochs = range(epoch, epoch + EPOCHS_PER_PIPELINE)
    seeds = np.array([epoch_seed(seed, stage_index, e) for e in epochs], np.int64)
    skips = np.array([offset if e == first_epoch else 0 for e in epochs], np.int64)
    ds = tf.data.Dataset.from_tensor_slices((seeds, skips)).flat_map(epoch_order).prefetch(steps_per_epoch)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)
    yield from ds.as_numpy_iterator()


def _epoch_positions(tf, examples, global_batch, steps_per_epoch, buffer):
  """(seed_e, skip) → the epoch's global batches as (seed_e, batch index, positions), `skip` left out:
  positions shuffled by the epoch's seed, the same on every host."""

  def order(seed_e, skip):
    ds = tf.data.Dataset.range(examples).shuffle(buffer, seed=seed_e, reshuffle_each_iteration=False)
    ds = ds.batch(global_batch, drop_remainder=True).take(steps_per_epoch).enumerate().skip(skip)
    return ds.map(lambda index, positions: (seed_e, index, positions))

  return order


def _stream_batches(tf, data, local_batch, steps_per_epoch, seed, stage_index, start_step, shuffle_buffer):
  """`train_batches` of a streaming dataset: the global order of the in-memory path; this host reads,
  decodes and crops the examples of its rows, each crop drawn from (epoch seed, global batch, row)."""
  hosts, host = jax.process_count(), jax.process_index()
  global_batch = local_batch * hosts
  check(
    data.num_train >= global_batch,
    f"dataset {data.name!r} has {data.num_train} training examples, fewer than one batch of {global_batch}; "
    "lower batch_size.",
  )
  first_epoch, offset = divmod(start_step, steps_per_epoch)
  order = _epoch_positions(
    tf, data.num_train, global_batch, steps_per_epoch, max(1, min(shuffle_buffer, data.num_train))
  )
  size = tuple(data.image_shape[:2])
  rows = tf.range(host * local_batch, (host + 1) * local_batch, dtype=tf.int64)

  def examples(seed_e, index, positions):
    mine = positions[host * local_batch : (host + 1) * local_batch]
    n = tf.shape(mine, out_type=tf.int64)[0]
    return tf.data.Dataset.from_tensor_slices((tf.fill([n], seed_e), tf.fill([n], index), rows, mine))

  def example(seed_e, index, row, position):
    image, label = data.read_train(position)
    if data.crop == "imagenet":
      image = _random_resized_crop(tf, image, size, tf.stack([seed_e, index * global_batch + row]))
    else:
      image = tf.cast(tf.round(tf.image.resize(image, size)), tf.uint8)
    return seed_e, index, image, label, tf.cast(position, tf.int32)

  def prepare(seed_e, index, images, labels, ids):
    batch = _preprocessed(tf, data, images, seed_e[0], index[0], host * local_batch, global_batch)
    return {"image": batch, "label": labels, "index": ids}

  for epoch in itertools.count(first_epoch, EPOCHS_PER_PIPELINE):
    epochs = range(epoch, epoch + EPOCHS_PER_PIPELINE)
    seeds = np.array([epoch_seed(seed, stage_index, e) for e in epochs], np.int64)
    skips = np.array([offset if e == first_epoch else 0 for e in epochs], np.int64)
    ds = tf.data.Dataset.from_tensor_slices((seeds, skips)).flat_map(order).flat_map(examples)
    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(local_batch)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)
    yield from ds.as_numpy_iterator()


def _padded(batches, total, local_batch, image_shape):
  """`total` numpy batches of `local_batch` examples with a `mask` (0 on padding): short final batches
  are padded, and missing ones are all padding."""
  produced = 0
  for batch in batches:
    if produced == total:
      break
    produced += 1
    pad = local_batch - len(batch["label"])
    padding = lambda v: np.zeros((pad,) + v.shape[1:], v.dtype)
    yield {
      **{k: np.concatenate([v, padding(v)]) for k, v in batch.items()},
      "mask": np.concatenate([np.ones(local_batch - pad, np.float32), np.zeros(pad, np.float32)]),
    }
  for _ in range(total - produced):
    yield {
      "image": np.zeros((local_batch,) + tuple(image_shape), np.float32),
      "label": np.zeros(local_batch, np.int32),
      "mask": np.zeros(local_batch, np.float32),
    }


def eval_batches(data, local_batch, split="test"):
  """The test (or validation) split as numpy batches {image, label, mask}; the last batches are
  padded (mask 0). Every host yields the same number of batches (a collective step runs on each).
  """
  tf = _tf()
  source, size = (data.test, data.num_test) if split == "test" else (data.validation, data.num_validation)
  per_host = math.ceil(size / jax.process_count())
  ds = (
    source()
    .batch(local_batch)
    .map(
      lambda x, y: {"image": data.normalize(tf.cast(x, tf.float32) / 255.0), "label": tf.cast(y, tf.int32)},
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
    )
    .prefetch(2)
  )
  yield from _padded(ds.as_numpy_iterator(), math.ceil(per_host / local_batch), local_batch, data.image_shape)


def training_examples(data, batch_size):
  """The whole training split (every host's part), preprocessed but never augmented, in id order:
  numpy batches {image, label, index, mask}, the last one padded (mask 0). What a teacher cache reads."""
  tf = _tf()
  ds = (
    data.train_all()
    .batch(batch_size)
    .map(
      lambda x, y, i: {
        "image": data.normalize(tf.cast(x, tf.float32) / 255.0),
        "label": tf.cast(y, tf.int32),
        "index": i,
      },
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
    )
    .prefetch(2)
  )
  yield from _padded(ds.as_numpy_iterator(), math.ceil(data.num_train / batch_size), batch_size, data.image_shape)

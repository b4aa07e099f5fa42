"""The fitted input preprocessing of a dataset, as data: applied in tf.data while training, in JAX
inside a saved network's `predict` and its exports, and saved beside the network's variables.

Kinds (`dataset.preprocess`): `none`; `standardize` (per-channel mean and std of the training
sample); `gcn_zca` (global contrast normalisation, then ZCA whitening, as pylearn2 prepares CIFAR for
the maxout and FitNets papers); `gcn_lcn` (GCN, then LeCun's local contrast normalisation of the
listed channels, as pylearn2 prepares SVHN for the maxout paper). Every kind takes images scaled to
[0, 1] floats; `images_to_input` starts from the raw uint8 images a dataset stores.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fitnets_jax import files
from fitnets_jax.errors import FitnetsError, check, one_of

KINDS = ("standardize", "gcn_zca", "gcn_lcn", "none")
ARRAYS_FILE = "preprocessing.npz"
LCN_SIZE, LCN_SIGMA, LCN_THRESHOLD = 7, 2.0, 1e-4


def gcn(x, scale, eps=1e-8):
  """Global contrast normalisation (pylearn2): per image, subtract its mean and scale to norm `scale`."""
  x = x - x.mean(axis=1, keepdims=True)
  norms = np.sqrt((x**2).sum(axis=1, keepdims=True)) / scale
  return x / np.where(norms < eps, 1.0, norms)


def zca_fit(x, epsilon):
  """ZCA whitening (x − μ)·W with W = U·diag(1/√(λ+ε))·Uᵀ fitted on rows of `x` (float64)."""
  mean = x.mean(axis=0)
  centred = x - mean
  eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / len(x))
  w = (eigvecs * (1.0 / np.sqrt(np.maximum(eigvals, 0.0) + epsilon))) @ eigvecs.T
  return mean.astype(np.float32), w.astype(np.float32)


def gaussian_kernel(size=LCN_SIZE, sigma=LCN_SIGMA):
  """pylearn2's `gaussian_filter`: a size×size Gaussian of std `sigma` around the centre, summing to 1."""
  r = np.arange(size) - size // 2
  g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
  return (g / g.sum()).astype(np.float32)


@dataclasses.dataclass
class Preprocessing:
  """One fitted preprocessing: its kind, its arrays (`mean`/`std`, or the ZCA `mean`/`w`), the GCN
  scale and the locally normalised channels."""

  kind: str = "none"
  arrays: dict = dataclasses.field(default_factory=dict)
  gcn_scale: float = 55.0
  lcn_channels: tuple = ()

  # ------------------------------------------------------------------ tf.data (training input)

  def tf(self, batch):
    """A tf batch of [0, 1] floats, preprocessed (inside tf.data)."""
    import tensorflow as tf

    if self.kind == "none":
      return batch
    if self.kind == "standardize":
      return (batch - self.arrays["mean"]) / self.arrays["std"]
    rows = _gcn_rows_tf(tf, batch, self.gcn_scale)
    if self.kind == "gcn_lcn":
      return _lcn_tf(tf, tf.reshape(rows, tf.shape(batch)), self.lcn_channels)
    if not hasattr(self, "_zca_tf"):
      # Eager tensors, made once: every dataset's map captures them by reference. NumPy arrays would
      # be embedded in each new dataset graph as constants (37.7 MB for CIFAR's 3072×3072 W),
      # costing seconds per epoch's iterator.
      self._zca_tf = (tf.constant(self.arrays["mean"]), tf.constant(self.arrays["w"]))
    mean, w = self._zca_tf
    return tf.reshape(tf.matmul(rows - mean, w), tf.shape(batch))

  # ------------------------------------------------------------------ JAX (prediction and export)

  def jax(self, batch):
    """The same on a JAX batch of [0, 1] floats (traceable: predict and the exports include it)."""
    if self.kind == "none":
      return batch
    if self.kind == "standardize":
      return (batch - self.arrays["mean"]) / self.arrays["std"]
    v = batch.reshape(batch.shape[0], -1)
    v = v - jnp.mean(v, axis=1, keepdims=True)
    norms = jnp.sqrt(jnp.sum(v * v, axis=1, keepdims=True)) / self.gcn_scale
    v = v / jnp.where(norms < 1e-8, 1.0, norms)
    if self.kind == "gcn_zca":
      return ((v - self.arrays["mean"]) @ self.arrays["w"]).reshape(batch.shape)
    return _lcn_jax(v.reshape(batch.shape), self.lcn_channels)

  def images_to_input(self, images):
    """Raw uint8 images (as the dataset stores them) → the network's input."""
    return self.jax(jnp.asarray(images, jnp.float32) / 255.0)

  # ------------------------------------------------------------------ saved beside a network

  def describe(self):
    """The JSON part (its arrays go to ARRAYS_FILE)."""
    return {"kind": self.kind, "gcn_scale": self.gcn_scale, "lcn_channels": list(self.lcn_channels)}

  def save(self, folder):
    with files.open_path(files.join(folder, ARRAYS_FILE), "wb") as raw:
      np.savez(raw, **self.arrays)

  @classmethod
  def load(cls, folder, described):
    """The preprocessing saved in `folder` with `described` (its `describe()`)."""
    one_of("preprocessing.kind", described["kind"], KINDS)
    arrays, path = {}, files.join(folder, ARRAYS_FILE)
    if files.isfile(path):
      try:  # allow_pickle=False: an npz that holds pickled objects is refused, never unpickled
        with files.open_path(path, "rb") as raw, np.load(raw, allow_pickle=False) as saved:
          arrays = {k: saved[k] for k in saved.files}
      except Exception as e:  # noqa: BLE001  (zipfile's, numpy's and pickle's own errors)
        raise FitnetsError(
          f"{path} cannot be read as plain arrays ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}); "
          "a saved preprocessing holds only numeric arrays. Save the network again."
        ) from None
    wanted = {"standardize": {"mean", "std"}, "gcn_zca": {"mean", "w"}}.get(described["kind"], set())
    if not wanted <= set(arrays):
      raise FitnetsError(
        f"{files.join(folder, ARRAYS_FILE)} lacks {', '.join(sorted(wanted - set(arrays)))}, which the saved "
        f"preprocessing {described['kind']!r} needs; the folder is incomplete. Save the network again."
      )
    return cls(described["kind"], arrays, float(described["gcn_scale"]), tuple(described["lcn_channels"]))


def fit(cfg, sample):
  """Fits `cfg.preprocess` (config.dataset) on a uint8 training sample."""
  one_of("dataset.preprocess", cfg.preprocess, KINDS)
  x = sample.astype(np.float64) / 255.0
  if cfg.preprocess == "none":
    return Preprocessing("none")
  given = [list(cfg.get("mean", [])), list(cfg.get("std", []))]
  channels = sample.shape[-1]
  check(
    given == [[], []]
    or (cfg.preprocess == "standardize" and all(len(v) == channels for v in given) and min(given[1]) > 0),
    f"dataset.mean={given[0]!r}, dataset.std={given[1]!r}: give both, one value per channel ({channels}) on [0, 1] "
    "pixels, std > 0, with dataset.preprocess='standardize' (e.g. torchvision's ImageNet [0.485, 0.456, 0.406] and "
    "[0.229, 0.224, 0.225]); [] and [] fit them on the training set.",
  )
  if given != [[], []]:
    return Preprocessing("standardize", {"mean": np.float32(given[0]), "std": np.float32(given[1])})
  if cfg.preprocess == "standardize":
    mean = x.mean(axis=(0, 1, 2)).astype(np.float32)
    std = np.maximum(x.std(axis=(0, 1, 2)), 1e-3).astype(np.float32)
    return Preprocessing("standardize", {"mean": mean, "std": std})
  if cfg.preprocess == "gcn_lcn":
    # The maxout paper's SVHN data (May 2013) was made when pylearn2's LeCunLCN normalised every channel,
    # the default here. Since January 2014 its `transform` returns inside its channel loop, so data
    # prepared with a later pylearn2 has only the first channel normalised: dataset.lcn_all_channels=False.
    channels = tuple(range(sample.shape[-1])) if cfg.lcn_all_channels else (0,)
    return Preprocessing("gcn_lcn", {}, float(cfg.gcn_scale), channels)
  mean, w = zca_fit(gcn(x.reshape(len(x), -1), cfg.gcn_scale), cfg.zca_epsilon)
  return Preprocessing("gcn_zca", {"mean": mean, "w": w}, float(cfg.gcn_scale))


def _gcn_rows_tf(tf, batch, scale):
  """`gcn` of a tf batch: (b, …) images → (b, pixels) rows."""
  v = tf.reshape(batch, [tf.shape(batch)[0], -1])
  v = v - tf.reduce_mean(v, axis=1, keepdims=True)
  norms = tf.sqrt(tf.reduce_sum(v * v, axis=1, keepdims=True)) / scale
  return v / tf.where(norms < 1e-8, tf.ones_like(norms), norms)


def _lcn_tf(tf, batch, channels):
  """LeCun's local contrast normalisation, as pylearn2's `lecun_lcn`, on the listed channels of a
  (b, h, w, c) tf batch: x − G∗x, divided by max(√(G∗x²), its mean over the image, 10⁻⁴), G the
  7×7 Gaussian (σ = 2) with zero padding."""
  g = tf.constant(gaussian_kernel()[:, :, None, None])
  out = []
  for i in range(batch.shape[-1]):
    x = batch[..., i : i + 1]
    if i in channels:
      centred = x - tf.nn.conv2d(x, g, 1, "SAME")
      denom = tf.sqrt(tf.nn.conv2d(x * x, g, 1, "SAME"))
      divisor = tf.maximum(tf.maximum(tf.reduce_mean(denom, axis=[1, 2], keepdims=True), denom), LCN_THRESHOLD)
      x = centred / divisor
    out.append(x)
  return tf.concat(out, axis=-1)


def _lcn_jax(batch, channels):
  """`_lcn_tf` in JAX."""
  g = jnp.asarray(gaussian_kernel()[:, :, None, None])
  blur = lambda x: jax.lax.conv_general_dilated(x, g, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  out = []
  for i in range(batch.shape[-1]):
    x = batch[..., i : i + 1]
    if i in channels:
      denom = jnp.sqrt(blur(x * x))
      divisor = jnp.maximum(jnp.maximum(jnp.mean(denom, axis=(1, 2), keepdims=True), denom), LCN_THRESHOLD)
      x = (x - blur(x)) / divisor
    out.append(x)
  return jnp.concatenate(out, axis=-1)

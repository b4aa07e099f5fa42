"""PyTorch checkpoints (`.pth`) read without PyTorch: tensors and plain containers, nothing else.

`torch.save` writes either a zip (PyTorch ≥ 1.6: `<name>/data.pkl` plus one file per storage under
`<name>/data/`) or the legacy stream (a magic number, then pickles, then each storage's raw bytes).
Both hold a pickle whose tensors refer to storages through persistent ids. `load` reads either with
a restricted unpickler: the only globals it resolves are PyTorch's tensor rebuilders and storage
types (CPU and CUDA: a GPU's checkpoint loads on the host), `collections.OrderedDict`, NumPy scalars
and dtypes (not object ones) and `argparse.Namespace` (checkpoints often keep their arguments), each
mapped to an inert stand-in; anything else — a
function, a class of the training code, `os.system` — is refused in one paragraph naming it, before
it could run. A tensor is a view into its storage whose extent is checked before it is copied out.
It comes back as a NumPy array (bfloat16 through `ml_dtypes`).

`state_dict(checkpoint)` finds the weights inside the wrappers checkpoints come in: a bare state_dict,
`{'model': …}`, `{'state_dict': …}`, `{'net': …}` or `{'model_state_dict': …}`, with `module.` prefixes
(DataParallel) removed.
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

from fitnets_jax import files
from fitnets_jax.errors import FitnetsError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
WRAPPERS = ("state_dict", "model", "net", "model_state_dict")
_STORAGE_DTYPES = {
  "FloatStorage": "float32",
  "DoubleStorage": "float64",
  "HalfStorage": "float16",
  "BFloat16Storage": "bfloat16",
  "LongStorage": "int64",
  "IntStorage": "int32",
  "ShortStorage": "int16",
  "CharStorage": "int8",
  "ByteStorage": "uint8",
  "BoolStorage": "bool",
}


class _StorageType:
  def __init__(self, name):
    self.name = name

  @property
  def dtype(self):
    name = _STORAGE_DTYPES[self.name]
    if name == "bfloat16":
      import ml_dtypes

      return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class _Storage:
  """A storage's elements, filled when its bytes are read (the legacy format reads them after the pickle)."""

  def __init__(self, dtype, numel):
    self.dtype, self.numel, self.array = dtype, numel, None


class _Tensor:
  """A tensor still to be cut out of its storage (`_rebuild_tensor_v2`'s arguments)."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


class Namespace:
  """argparse.Namespace's inert stand-in: its attributes, set from the pickle's state."""


def _rebuild_tensor(storage, offset, size, stride, *_):
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *_):
  return data


def _numpy_scalar(dtype, data=None):
  if dtype.hasobject:
    raise pickle.UnpicklingError("a NumPy object scalar")
  return np.frombuffer(data, dtype)[0]


def _numpy_dtype(*args):
  dtype = np.dtype(*args)
  if dtype.hasobject:
    raise pickle.UnpicklingError("a NumPy object dtype")
  return dtype


_GLOBALS = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("numpy.core.multiarray", "scalar"): _numpy_scalar,
  ("numpy._core.multiarray", "scalar"): _numpy_scalar,
  ("numpy", "dtype"): _numpy_dtype,
  ("argparse", "Namespace"): Namespace,
  **{(module, name): _StorageType(name) for name in _STORAGE_DTYPES for module in ("torch", "torch.cuda")},
}


class _Refused(Exception):
  pass


class _Unpickler(pickle.Unpickler):
  def __init__(self, stream, storage):
    super().__init__(stream)
    self._storage = storage

  def find_class(self, module, name):
    if (module, name) not in _GLOBALS:
      raise _Refused(f"{module}.{name}")
    return _GLOBALS[module, name]

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f"an unknown persistent id {str(pid)[:80]}")
    return self._storage(pid)


def load(path):
  """The object `torch.save` wrote to `path` (a local path or gs://…), with every tensor a NumPy array."""
  try:
    with files.open_path(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise FitnetsError(
      f"{path}: cannot be read ({type(e).__name__}: {e}); give the path of a PyTorch .pth file."
    ) from None
  try:
    obj = _load_zip(raw) if zipfile.is_zipfile(io.BytesIO(raw)) else _load_legacy(raw)
    return _materialise(obj)
  except _Refused as e:
    raise FitnetsError(
      f"{path}: the checkpoint asks to build {e}, which is neither a tensor nor a plain container, so it is not "
      "loaded (unpickling it could run code). Save the weights alone from PyTorch, "
      "`torch.save(model.state_dict(), 'weights.pth')`, and import that file."
    ) from None
  except (pickle.UnpicklingError, EOFError, ValueError, KeyError, struct.error, zipfile.BadZipFile, TypeError) as e:
    raise FitnetsError(
      f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]}); expected a file written by "
      "torch.save (a zip archive, or the legacy format of PyTorch < 1.6)."
    ) from None


def _load_zip(raw):
  archive = zipfile.ZipFile(io.BytesIO(raw))
  pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(pickles) != 1:
    raise pickle.UnpicklingError("the archive holds no <name>/data.pkl")
  root = pickles[0][: -len("data.pkl")]
  order = "<"
  if root + "byteorder" in archive.namelist():
    order = "<" if archive.read(root + "byteorder").decode().strip() == "little" else ">"

  def storage(pid):
    _, kind, key, _location, numel = pid[:5]
    s = _Storage(kind.dtype.newbyteorder(order) if kind.dtype.itemsize > 1 else kind.dtype, numel)
    data = archive.read(f"{root}data/{key}")
    s.array = np.frombuffer(data, s.dtype, count=len(data) // s.dtype.itemsize)
    return s

  return _Unpickler(io.BytesIO(archive.read(pickles[0])), storage).load()


def _load_legacy(raw):
  stream = io.BytesIO(raw)
  header = _Unpickler(stream, None)
  if header.load() != LEGACY_MAGIC:
    raise pickle.UnpicklingError("neither a zip archive nor PyTorch's legacy magic number")
  header.load()  # protocol version
  header.load()  # system info
  storages = {}

  def storage(pid):
    _, kind, key, _location, numel = pid[:5]
    if len(pid) > 5 and pid[5] is not None:
      raise pickle.UnpicklingError("a legacy storage view")
    return storages.setdefault(key, _Storage(kind.dtype, numel))

  obj = _Unpickler(stream, storage).load()
  for key in _Unpickler(stream, None).load():
    s = storages[key]
    (count,) = struct.unpack("<q", stream.read(8))
    data = stream.read(count * s.dtype.itemsize)
    if len(data) != count * s.dtype.itemsize:
      raise EOFError(f"storage {key} is truncated")
    s.array = np.frombuffer(data, s.dtype)
  return obj


def _materialise(obj):
  """`obj` with every pending tensor cut out of its storage, bounds checked."""
  if isinstance(obj, _Tensor):
    array, itemsize = obj.storage.array, obj.storage.dtype.itemsize
    if array is None or obj.offset < 0 or any(s < 0 for s in obj.size) or any(s < 0 for s in obj.stride):
      raise ValueError("a tensor with no storage data or a negative size, stride or offset")
    last = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride)) if all(obj.size) else obj.offset - 1
    if last >= array.size or len(obj.size) != len(obj.stride):
      raise ValueError(f"a tensor of size {obj.size} reaches past its storage of {array.size} elements")
    view = np.lib.stride_tricks.as_strided(
      array[obj.offset :], obj.size, [s * itemsize for s in obj.stride], writeable=False
    )
    return np.array(view, dtype=array.dtype.newbyteorder("="))
  if isinstance(obj, dict):
    out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _materialise(v)
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v) for v in obj)
  return obj


def _is_state_dict(obj):
  return isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj)


def _is_weights(obj):
  return _is_state_dict(obj) and any(isinstance(v, np.ndarray) for v in obj.values())


def state_dict(checkpoint, where="checkpoint"):
  """{name: array} of the model weights in `checkpoint` (what `load` returned), unwrapped and without
  `module.` prefixes; a FitnetsError paragraph when none is found."""
  weights = checkpoint if _is_weights(checkpoint) and not any(k in checkpoint for k in WRAPPERS) else None
  if weights is None and isinstance(checkpoint, dict):
    weights = next((checkpoint[k] for k in WRAPPERS if _is_weights(checkpoint.get(k))), None)
  if weights is None:
    keys = list(checkpoint)[:12] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise FitnetsError(
      f"{where}: no model weights found; expected a state_dict (names → tensors) or one under "
      f"{', '.join(repr(k) for k in WRAPPERS)}, but the checkpoint holds {keys}."
    )
  weights = {k: v for k, v in weights.items() if isinstance(v, np.ndarray)}
  while weights and all(k.startswith("module.") for k in weights):
    weights = {k[len("module.") :]: v for k, v in weights.items()}
  return weights

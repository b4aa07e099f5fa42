"""The one path layer: every file the project reads or writes in a workdir, a teacher folder, a
report or a benchmark goes through these functions.

They take a local path or a URI (`gs://bucket/run`, `s3://…`) and work through `etils.epath`:
local paths through `os`, remote ones through TensorFlow's filesystems (gs://) or fsspec. Orbax
reads and writes checkpoints through the same `epath` paths, and TensorBoard through TensorFlow's
own filesystems, so a workdir on a bucket is shared by every host of a pod slice.
"""

import errno
import os
import threading
import uuid

from etils import epath

from fitnets_jax.errors import FitnetsError

REMOTE_SCHEMES = ("gs://", "s3://", "az://", "hf://")
REACH_TIMEOUT_S = 60.0  # how long the first touch of a remote workdir may take before it is refused


def is_remote(p):
  return str(p).startswith(REMOTE_SCHEMES)


def path(p):
  """`p` as an `epath.Path` (local paths made absolute, so a later chdir cannot move a run)."""
  return epath.Path(p) if is_remote(p) else epath.Path(os.path.normpath(os.path.join(os.getcwd(), os.fspath(p))))


def join(p, *parts):
  """`p`/`parts` as a string; URIs keep their scheme (os.path.join would turn gs:// into a local folder)."""
  return os.fspath(epath.Path(p).joinpath(*parts)) if is_remote(p) else os.path.join(os.fspath(p), *parts)


def absolute(p):
  return os.fspath(path(p))


def exists(p):
  return path(p).exists()


def isfile(p):
  q = path(p)
  return q.exists() and not q.is_dir()


def isdir(p):
  return path(p).is_dir()


def listdir(p):
  """Names in folder `p` ([] when it does not exist)."""
  q = path(p)
  return sorted(child.name for child in q.iterdir()) if q.is_dir() else []


def makedirs(p):
  path(p).mkdir(parents=True, exist_ok=True)


def open_path(p, mode="r"):
  return path(p).open(mode)


def read_text(p):
  return path(p).read_text()


def modified(p):
  """The modification time of file `p` by its storage's own clock (a bucket's object metadata)."""
  return path(p).stat().mtime


def sha256(p):
  """The SHA-256 of a file's bytes, in hex."""
  import hashlib

  return hashlib.sha256(read_bytes(p)).hexdigest()


def read_bytes(p):
  return path(p).read_bytes()


def write_bytes(p, data):
  path(p).write_bytes(data)


def tree_size(p):
  """Bytes in the files under folder `p` (or of file `p`)."""
  q = path(p)
  return sum(tree_size(child) for child in q.iterdir()) if q.is_dir() else q.stat().length


def write_atomically(p, text):
  """Writes `text` so that a reader (or a restart after a kill) sees the old file or the new one.
  Locally: a temporary file renamed over `p`. An object store's upload is atomic by itself."""
  q = path(p)
  if is_remote(p):
    q.write_text(text)
    return
  temporary = q.parent / f"{q.name}.tmp"
  temporary.write_text(text)
  temporary.replace(q)


def append_text(p, text):
  """Appends `text` to file `p` (an object store rewrites the object: fine for small logs)."""
  with path(p).open("a") as f:
    f.write(text)


def remove(p):
  path(p).unlink()


def rmtree(p):
  """Deletes folder `p` and everything in it; nothing happens when it does not exist."""
  q = path(p)
  if q.exists():
    q.rmtree()


def remove_empty_folders(folders):
  """Removes each local folder of `folders` in order while it is empty; stops at the first that holds
  anything (or is gone), so nothing but empty folders is ever deleted."""
  for folder in folders:
    try:
      os.rmdir(folder)
    except OSError:
      return


def move(src, dst):
  """Renames `src` to `dst` (a folder too); the parent of `dst` is created."""
  makedirs(path(dst).parent)
  path(src).rename(path(dst))


class NoFlock(OSError):
  """The filesystem of a local workdir does not support flock (ENOSYS, ENOLCK, EOPNOTSUPP)."""


NO_FLOCK_ERRNOS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)


def try_lock(p):
  """Local file `p` (created if missing) opened and locked exclusively, or None while another process
  holds it. The operating system releases the lock when the handle is closed or the process ends,
  however it ends (flock: POSIX systems). A filesystem without flock raises NoFlock."""
  import fcntl

  handle = os.open(absolute(p), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(handle)
    if e.errno in NO_FLOCK_ERRNOS:
      raise NoFlock(e.errno, f"flock is not supported on {p}: {e.strerror}") from None
    return None  # EWOULDBLOCK / EAGAIN: held by another process
  return handle


def write_locked(handle, text):
  """Replaces the contents of the file locked by `try_lock`."""
  data = text.encode()
  os.ftruncate(handle, 0)
  os.pwrite(handle, data, 0)
  os.fsync(handle)


def unlock(handle):
  os.close(handle)


def _within(timeout, fn):
  """`fn()`'s result, or raises its exception, or TimeoutError after `timeout` seconds (the call is
  left running in a daemon thread: a remote filesystem that hangs cannot hang the run)."""
  result = {}

  def call():
    try:
      result["value"] = fn()
    except BaseException as e:  # noqa: BLE001  (OSError, TensorFlow's and fsspec's own errors alike)
      result["error"] = e

  worker = threading.Thread(target=call, daemon=True)
  worker.start()
  worker.join(timeout)
  if "error" in result:
    raise result["error"]
  if "value" not in result:
    raise TimeoutError(f"no answer within {timeout:.0f} s")
  return result["value"]


def _probe_write(workdir):
  makedirs(workdir)
  marker = join(workdir, f".write-probe-{uuid.uuid4().hex}")
  path(marker).write_text("")
  remove(marker)


def check_reachable(workdir, write=True, timeout=REACH_TIMEOUT_S):
  """Raises one FitnetsError paragraph unless `workdir` answers: with `write`, it is created and a probe
  file written and deleted; without, it is only looked up (nothing created, for the checks before any
  loading). A remote workdir that does not answer (no network, no credentials, a bucket name that
  does not resolve) is refused after `timeout` seconds at most, and nothing is created locally."""
  try:
    _within(timeout, (lambda: _probe_write(workdir)) if write else (lambda: path(workdir).exists()))
  except Exception as error:  # noqa: BLE001
    reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"
    where = (
      "Check the bucket's name, the network and the credentials (on a Cloud VM its service account "
      "needs write access to the bucket; elsewhere run `gcloud auth application-default login`)"
      if is_remote(workdir)
      else "Choose a folder you can write to"
    )
    raise FitnetsError(
      f"--workdir={workdir!r} cannot be {'written' if write else 'reached'} ({reason}). "
      f"{where}, or use another --workdir."
    ) from None

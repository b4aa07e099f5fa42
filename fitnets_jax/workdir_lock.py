"""One run per workdir: `run.lock`, held from a run's first write to its end.

A second start on a held workdir is refused at once, with one paragraph naming the holder (its
host, process id, start time and command, which the lock file records). A killed run's lock never
blocks its restart:
  - a local workdir (or a shared filesystem with POSIX locks) is locked with `flock`, which the
    operating system releases when the holder's process ends, however it ends;
  - a workdir on an object store (gs://, …) has no locks, and neither has a local filesystem without
    flock (ENOSYS, ENOLCK: said in a warning); there the holder rewrites its record every
    HEARTBEAT_S seconds, and a record silent for STALE_S seconds is taken over. Silence is measured by
    the storage's clock (the record's modification time against a probe object's), never by comparing
    two hosts' clocks. The record is written, then read back after a moment: of two starts racing
    within that moment, the one whose record was overwritten stops. A holder that cannot renew its
    record for STALE_S seconds, or finds it taken over, stops at its next step (exit 75, without
    saving: the workdir may be another run's).
On several hosts, process 0 alone takes the lock and tells the other processes whether the run may
go on, so every host of one run decides alike.
"""

import json
import os
import socket
import sys
import threading
import time
import uuid

import jax

from fitnets_jax import files
from fitnets_jax.errors import FitnetsError, Preempted

LOCK_FILE = "run.lock"
HEARTBEAT_S = 10.0
STALE_S = 60.0
REMOTE_SETTLE_S = 2.0  # object stores: how long a written record is left before it is read back


def _settle():
  """The pause between writing a record to an object store and reading it back."""
  time.sleep(REMOTE_SETTLE_S)


def _record(token):
  return {
    "token": token,
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    "heartbeat": time.time(),
    "processes": jax.process_count(),
    "command": " ".join(sys.argv)[:300],
  }


def read(workdir):
  """The holder's record in `workdir`'s lock file, or None (none, empty, or cut short by a kill)."""
  path = files.join(workdir, LOCK_FILE)
  try:
    return json.loads(files.read_text(path)) if files.isfile(path) else None
  except (OSError, ValueError):
    return None


def _silence(workdir):
  """Seconds since the lock record in `workdir` was last written, by the storage's own clock: the record's
  modification time against that of a probe object written now, so hosts whose clocks disagree still
  agree on how long a holder has been silent. None when the storage gives no times (then the record's own
  `heartbeat` is compared with this host's clock)."""
  probe = files.join(workdir, f".lock-clock-{uuid.uuid4().hex}")
  try:
    files.write_atomically(probe, "")
    try:
      return files.modified(probe) - files.modified(files.join(workdir, LOCK_FILE))
    finally:
      files.remove(probe)
  except Exception:  # noqa: BLE001  (no stat on this storage, or no write: fall back to the record's time)
    return None


def _heartbeat_fresh(record, workdir=None):
  """Whether a heartbeat record is live: written less than STALE_S ago (by the storage's clock)."""
  if not record:
    return False
  silent = _silence(workdir) if workdir else None
  if silent is not None:
    return silent < STALE_S
  heartbeat = record.get("heartbeat")
  return isinstance(heartbeat, (int, float)) and time.time() - heartbeat < STALE_S


def _refusal(workdir, record, live=False):
  """The refusal naming the holder; `live`: an operating-system lock is held now (no heartbeat to age)."""
  record = record or {}
  silent = None if live or not record else _silence(workdir)
  if silent is None and "heartbeat" in record:
    silent = time.time() - record["heartbeat"]
  age = ", holding the lock now" if live else (f", last seen {max(silent, 0):.0f} s ago" if silent is not None else "")
  return FitnetsError(
    f"--workdir={workdir!r} is in use by another run: process {record.get('pid', '?')} on host "
    f"{record.get('host', '?')!r}, started {record.get('started', '?')}{age} (`{record.get('command', '')}`). Two "
    "runs in one workdir would overwrite each other's checkpoints and metrics, so this one did not start and "
    "changed nothing. Wait for it to finish, stop it, or use another --workdir. (A killed run's lock is taken "
    f"over: at once on a local workdir, after {STALE_S:.0f} s without a heartbeat on a bucket.)"
  )


def check_free(workdir):
  """Raises the refusal if a live run holds `workdir`; takes nothing (the check before loading). On
  several hosts it does nothing: there `WorkdirLock.acquire` decides, for every process at once."""
  if jax.process_count() > 1 or not workdir:
    return
  path = files.join(workdir, LOCK_FILE)
  if files.is_remote(path):
    record = read(workdir)
    if _heartbeat_fresh(record, workdir):
      raise _refusal(workdir, record)
  elif files.isfile(path):
    try:
      handle = _open_lock(workdir, path)
    except files.NoFlock:
      if _heartbeat_fresh(read(workdir), workdir):
        raise _refusal(workdir, read(workdir)) from None
      return
    if handle is None:
      raise _refusal(workdir, read(workdir), live=True)
    files.unlock(handle)


def _open_lock(workdir, path):
  """files.try_lock, with a workdir that cannot be written (a read-only filesystem, no permission) refused
  as bad input: one paragraph, exit 2."""
  try:
    return files.try_lock(path)
  except files.NoFlock:
    raise
  except OSError as e:
    raise FitnetsError(
      f"--workdir={workdir!r} cannot be written ({type(e).__name__}: {e.strerror or e}): a run writes its lock, "
      "checkpoints and metrics there, even to resume or to find it finished. Use a writable copy, or another "
      "--workdir."
    ) from None


class WorkdirLock:
  """The lock of one run on `workdir`: `acquire()` or refuse; `release()` gives it back."""

  def __init__(self, workdir):
    self.workdir, self.path = workdir, files.join(workdir, LOCK_FILE)
    self.remote = files.is_remote(self.path)
    self.token = uuid.uuid4().hex
    self._handle = None
    self._stop = threading.Event()
    self._thread = None
    self.lost = ""  # why the lock was lost (heartbeat mode): the training loop stops on it
    self.live = False  # refused: another process holds the operating system's lock now

  def _text(self):
    return json.dumps(_record(self.token), indent=2)

  def _take(self):
    """Process 0: takes the lock; returns None, or the record of the live run that holds it."""
    try:
      files.makedirs(self.workdir)
    except OSError as e:
      raise FitnetsError(f"--workdir={self.workdir!r} cannot be created ({type(e).__name__}: {e}).") from None
    if not self.remote:
      try:
        self._handle = _open_lock(self.workdir, self.path)
      except files.NoFlock as e:
        print(
          f"warning: {self.path}: {e.strerror}; locking the workdir with a heartbeat record instead, as on a "
          f"bucket (a killed run's lock is taken over after {STALE_S:.0f} s).",
          file=sys.stderr,
          flush=True,
        )
        self.remote = True
      else:
        if self._handle is None:
          self.live = True
          return read(self.workdir) or {}
        files.write_locked(self._handle, self._text())
        return None
    record = read(self.workdir)
    if _heartbeat_fresh(record, self.workdir):
      return record
    files.write_atomically(self.path, self._text())
    _settle()
    record = read(self.workdir)
    if (record or {}).get("token") != self.token:
      return record or {}
    self._thread = threading.Thread(target=self._beat, daemon=True, name="workdir-lock-heartbeat")
    self._thread.start()
    return None

  def acquire(self):
    refused = self._take() if jax.process_index() == 0 else None
    if jax.process_count() > 1:
      import numpy as np
      from jax.experimental import multihost_utils

      code = int(multihost_utils.broadcast_one_to_all(np.int32(refused is not None)))
      if code and jax.process_index() != 0:
        raise FitnetsError(
          f"--workdir={self.workdir!r} is in use by another run (process 0's message names it); "
          "this run did not start and changed nothing."
        )
    if refused is not None:
      raise _refusal(self.workdir, refused, live=self.live)
    return self

  def _beat(self):
    renewed = time.monotonic()
    while not self._stop.wait(HEARTBEAT_S):
      try:
        if (read(self.workdir) or {}).get("token") != self.token:
          self.lost = "another run took the workdir's lock over after this run's heartbeat went silent"
          return
        files.write_atomically(self.path, self._text())
        renewed = time.monotonic()
      except Exception as e:  # noqa: BLE001  (a bucket's hiccup must not stop the run; the next beat retries)
        if time.monotonic() - renewed >= STALE_S:
          self.lost = f"its heartbeat could not be renewed for {STALE_S:.0f} s ({type(e).__name__}: {e})"
          return

  def check_held(self):
    """Raises Preempted (exit 75) once the lock is lost: the run stops without saving anything more, since
    the workdir may belong to another run now."""
    if self.lost:
      raise Preempted(
        f"This run lost the lock of --workdir={self.workdir!r}: {self.lost}. It stopped without writing more "
        "(another run may own the workdir now); its checkpoints up to now are intact. Check which run should "
        "continue, then rerun the same command to resume."
      )

  def release(self):
    """Gives the lock back: a local lock file is emptied and unlocked (never deleted: a start that
    opened it just before would then lock a file no one else sees); a bucket's record is deleted."""
    if self._handle is not None:
      files.write_locked(self._handle, "")
      files.unlock(self._handle)
      self._handle = None
    if self._thread is not None:
      self._stop.set()
      self._thread.join(timeout=5)
      self._thread = None
      if (read(self.workdir) or {}).get("token") == self.token:
        files.remove(self.path)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()

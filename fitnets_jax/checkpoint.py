"""The run's checkpoints with orbax: save, resume, damaged checkpoints set aside, digests (the saved
networks, which orbax also writes, are `fitnets_jax.saved`).

Layout in the workdir:
  checkpoints/<global step>/{state, meta}   the current stage's TrainState and JSON metadata
  checkpoints_damaged/<global step>         checkpoints found damaged at a restart (`resume`), kept
                                            for inspection (`bring_back_set_aside` returns them)
  <role>/variables, <role>/network.json     a network on its own: the teacher when its stage ends
                                            (teacher1/, … for several), the student (each DML network)
                                            when the run ends (`fitnets_jax.saved`); runs from before
                                            network.json wrote teacher/teacher.json, still read
"""

import errno
import hashlib
import json
import sys
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from fitnets_jax import files
from fitnets_jax.errors import FitnetsError, WorkdirReadError, WorkdirWriteError, os_error_in

DIGEST_KEY = "state_sha256"  # in a checkpoint's metadata: the digest of its state's values


class DamagedCheckpoint(Exception):
  """A checkpoint read back without error whose values differ from those that were saved."""


DAMAGE_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)  # a file missing, or not what it should be
READ_ATTEMPTS, READ_RETRY_S = 3, 1.0  # an I/O error while reading is tried again this often, this far apart
DAMAGED_DIR = "checkpoints_damaged"


# How tensorstore and bucket clients word a transient fault (their errors carry no OSError).
TRANSIENT_WORDS = ("Input/output error", "Resource temporarily unavailable", "DEADLINE_EXCEEDED", "UNAVAILABLE")


def is_damage(error):
  """Whether a failed read is evidence of damage (quarantine the checkpoint) rather than a transient
  fault of the disk or bucket (retry, never move anything): a digest mismatch, a missing file, or a
  file that cannot be decoded are damage; any other OSError in the chain (EIO, a timeout, …), or an
  error that words one (tensorstore's), is not."""
  cause = os_error_in(error)
  if cause is None:
    return not any(word in str(error) for word in TRANSIENT_WORDS)
  return cause.errno in DAMAGE_ERRNOS or isinstance(cause, FileNotFoundError)


def read_with_retries(read, what):
  """`read()`, tried READ_ATTEMPTS times while it fails with a transient I/O error (`is_damage` false);
  then a WorkdirReadError (exit 74) naming `what`. Damage is raised at once, for the caller to set aside."""
  for attempt in range(1, READ_ATTEMPTS + 1):
    try:
      return read()
    except Exception as e:  # noqa: BLE001  (orbax/tensorstore/json all raise their own types)
      if is_damage(e):
        raise
      if attempt == READ_ATTEMPTS:
        cause = os_error_in(e)
        raise WorkdirReadError(
          f"Could not read {what} ({type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:200]}) "
          f"after {READ_ATTEMPTS} tries {READ_RETRY_S:g} s apart. That is an I/O error, not damage, so nothing "
          "was moved or changed; run the same command again once the disk or bucket answers."
        ) from None
      time.sleep(READ_RETRY_S * attempt)


def digest(tree):
  """SHA-256 of a pytree's leaves: their paths, dtypes, shapes and bytes (host copies; a replicated
  array's one value, whatever devices or hosts hold it)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(tree)):
    a = np.ascontiguousarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape};".encode())
    h.update(a.tobytes())
  return h.hexdigest()


class RunCheckpoints:
  """Saves and restores (state, meta) at global steps; keeps the newest `keep`, and every stage's last
  checkpoint (global steps `stage_ends`), so each stage's result stays readable (`read_state`).

  Saves are synchronous: a save has returned only once its folder is complete, so a run killed
  at any later moment finds it intact. A save cut short never becomes a checkpoint (orbax writes
  to a temporary folder and renames it), and its leftovers are removed at the next start. Old
  checkpoints leave the same way: renamed into retired/ first, so a kill during their deletion
  never leaves a half-deleted checkpoint among the live ones.
  """

  RETIRED = "retired"  # checkpoints past `keep` are renamed here (atomic), then deleted

  def __init__(self, directory, keep, stage_ends=()):
    self.directory = files.absolute(directory)
    policy = preservation.AnyPreservationPolicy([preservation.LatestN(keep), preservation.CustomSteps(stage_ends)])
    self.manager = ocp.CheckpointManager(
      files.path(self.directory),
      options=ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        create=True,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,  # a killed save's leftovers
        todelete_subdir=self.RETIRED,
      ),
    )
    self._delete_retired()  # a deletion cut short by a kill

  def _delete_retired(self):
    if jax.process_index() == 0:
      files.rmtree(files.join(self.directory, self.RETIRED))

  def steps(self):
    """Global steps of the saved checkpoints, oldest first."""
    return sorted(self.manager.all_steps())

  def meta(self, step):
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def set_aside(self, step):
    """Moves an unreadable checkpoint to checkpoints_damaged/ (never deletes it); returns where."""
    quarantine = files.join(files.path(self.directory).parent, DAMAGED_DIR)
    target, suffix = files.join(quarantine, str(step)), 1
    while files.exists(target):
      target = files.join(quarantine, f"{step}.{suffix}")
      suffix += 1
    if jax.process_index() == 0:
      files.move(files.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("checkpoint set aside")
    self.manager.reload()
    return target

  def restore(self, step, abstract_state, meta):
    """The state saved at `step`, checked against the digest its metadata recorded at the save (one
    flipped byte in an array file would otherwise restore silently); raises DamagedCheckpoint."""
    state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))).state
    recorded = meta.get(DIGEST_KEY)
    if recorded is not None and digest(state) != recorded:
      raise DamagedCheckpoint(
        f"its state's SHA-256 differs from the one recorded when it was saved ({recorded[:12]}…): "
        "an array file was changed on disk"
      )
    return state

  def save(self, step, state, meta):
    """Saves (state, meta) at global `step`, with the state's digest in meta; a failed write (disk full,
    a read-only folder) is a WorkdirWriteError that leaves the earlier checkpoints as they were."""
    newest = self.manager.latest_step()
    # The replicated state as host arrays: one copy, written by process 0 (saved as jax.Arrays, each
    # replica would write its slice of every array, a small compiled program per shape).
    host_state = jax.device_get(state)
    try:
      self.manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave({**meta, DIGEST_KEY: digest(host_state)})
        ),
        force=True,
      )
      self._delete_retired()
    except Exception as e:  # noqa: BLE001  (orbax and tensorstore wrap OSErrors in their own types)
      raise WorkdirWriteError.of(
        f"the checkpoint at global step {step}", files.join(self.directory, str(step)), e, newest
      ) from None

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


class Resumed(NamedTuple):
  """Where a restarted run goes on: the newest readable checkpoint's global step, stage and state."""

  step: int  # global
  stage_index: int
  stage_step: int
  state: Any
  meta: dict  # results so far, the step metrics not yet logged, the metrics.jsonl record count


def resume(checkpoints, workdir, stages, abstract_state_of):
  """The newest readable checkpoint of a run of `stages` (a Resumed), or None when there is none.

  `abstract_state_of(stage index)` is the restore target. A checkpoint that cannot be read
  (truncated, partly deleted, or with values that differ from its digest) is moved to
  checkpoints_damaged/ with a warning and the next older one is tried; if none is readable the run
  refuses to start rather than silently begin again from step 0.
  """
  names = [s.name for s in stages]
  damaged = []
  for step in reversed(checkpoints.steps()):
    started = time.perf_counter()
    where = f"the checkpoint at global step {step} in {checkpoints.directory}"
    try:
      meta = read_with_retries(lambda: checkpoints.meta(step), where)
    except WorkdirReadError:
      raise
    except Exception as e:  # noqa: BLE001  (evidence of damage: is_damage)
      damaged.append(_set_aside(checkpoints, step, e))
      continue
    if meta.get("stages") != names:
      raise FitnetsError(
        f"--workdir={workdir!r} holds a run with stages {meta.get('stages')}, but this config runs "
        f"{names}; use a new workdir, or the config that made it (saved in its config.json)."
      )
    index = meta["stage_index"]
    try:
      state = read_with_retries(lambda: checkpoints.restore(step, abstract_state_of(index), meta), where)
    except WorkdirReadError:
      raise
    except Exception as e:  # noqa: BLE001  (DamagedCheckpoint, or orbax's own errors for a broken file)
      damaged.append(_set_aside(checkpoints, step, e))
      continue
    stage = stages[index]
    done = meta["stage_step"] == stage.num_steps
    print(
      f"Resuming from {workdir}: stage {stage.name!r} "
      + ("finished" if done else f"at step {meta['stage_step']}/{stage.num_steps}")
      + f" (checkpoint restored in {time.perf_counter() - started:.2f} s)",
      flush=True,
    )
    return Resumed(step, index, meta["stage_step"], state, meta)
  quarantine = files.join(workdir, DAMAGED_DIR)
  if damaged or files.isdir(quarantine):
    raise FitnetsError(
      f"--workdir={workdir!r} has no readable checkpoint left: the unreadable ones are in {quarantine}. "
      "Starting again from step 0 would silently discard the run, so nothing else was changed. If they were "
      "set aside by mistake (the disk is fixed), --config.bring_back_set_aside=True moves them back and "
      f"checks them again; to start over in this workdir delete {quarantine}, or use a new --workdir."
    )
  return None


def bring_back_set_aside(workdir):
  """Moves every checkpoint in checkpoints_damaged/ back into checkpoints/ (where no live checkpoint has
  its step), so the resume that follows checks each again: a checkpoint really damaged is set aside again,
  one set aside by a fault that is gone is used. Returns the steps brought back."""
  quarantine, live = files.join(workdir, DAMAGED_DIR), files.join(workdir, "checkpoints")
  if not files.isdir(quarantine):
    return []
  back = []
  for name in sorted(files.listdir(quarantine)):
    step = name.split(".")[0]
    if step.isdigit() and not files.exists(files.join(live, step)):
      if jax.process_index() == 0:
        files.move(files.join(quarantine, name), files.join(live, step))
      back.append(int(step))
  if jax.process_index() == 0 and not files.listdir(quarantine):
    files.rmtree(quarantine)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("checkpoints brought back")
  if back:
    print(f"Brought back the checkpoints set aside at global steps {sorted(back)}; each is checked again.", flush=True)
  return sorted(back)


def check_hosts_agree(checkpoints, workdir):
  """On several hosts, before anything is restored: every host's view of the workdir (its newest
  checkpoint, the steps it lists, its config.json) must be process 0's, or every host refuses with one
  paragraph naming both views (exit 2) instead of waiting on collectives that never match: hosts that
  see different workdirs (per-host folders by mistake, a stale NFS cache) would hang."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils

  multihost_utils.sync_global_devices("workdir views")  # process 0 has written config.json by now
  steps = checkpoints.steps()
  config = files.join(workdir, "config.json")
  config_sha = files.sha256(config)[:8] if files.isfile(config) else "0"
  view = [steps[-1] if steps else -1, len(steps), int(config_sha, 16) - 2**31]
  gathered = multihost_utils.process_allgather(np.asarray(view, np.int64).astype(np.int32))
  views = [[int(x) for x in row] for row in np.asarray(gathered)]
  describe = lambda v: (
    f"newest checkpoint {'none' if v[0] < 0 else f'at global step {v[0]}'}, {v[1]} checkpoint(s), config.json "
    + ("missing" if v[2] == -(2**31) else f"SHA-256 {v[2] + 2**31:08x}…")
  )
  differ = [i for i in range(len(views)) if views[i] != views[0]]
  if differ:
    i = differ[0]
    raise FitnetsError(
      f"The hosts see different workdirs at --workdir={workdir!r}: process 0 sees {describe(views[0])}; process {i} "
      f"sees {describe(views[i])}. Every host must see the same folder (a bucket, or one shared filesystem without "
      "stale caches), so nothing was restored or changed. Point every host at the same workdir."
    )


def _set_aside(checkpoints, step, error):
  where = checkpoints.set_aside(step)
  reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
  print(
    f"warning: the checkpoint at global step {step} is unreadable ({type(error).__name__}: {reason}); "
    f"moved it to {where} and trying the previous one.",
    file=sys.stderr,
    flush=True,
  )
  return where


def saved_config(workdir):
  """The config (a dict) recorded in the metadata of `workdir`'s newest readable checkpoint, or None:
  the same-experiment guard's reference when config.json is gone. Read as a file, without orbax."""
  directory = files.join(workdir, "checkpoints")
  for step in sorted((int(d) for d in files.listdir(directory) if d.isdigit()), reverse=True):
    try:
      meta = json.loads(files.read_text(files.join(directory, str(step), "meta", "metadata")))
    except (OSError, ValueError):
      continue
    if "config" in meta:
      return meta["config"]
  return None


def read_state(workdir, step, abstract_state):
  """The train state saved at global `step` in `workdir`'s checkpoints, read without touching the run's
  folder (for inspection; a run resumes through RunCheckpoints), checked against the digest its metadata
  recorded: a changed value is one FitnetsError paragraph, never a silent read."""
  directory = files.join(files.absolute(workdir), "checkpoints")
  path = files.join(directory, str(step), "state")
  if not files.isdir(path):
    kept = sorted(int(d) for d in files.listdir(directory) if d.isdigit())
    raise FitnetsError(
      f"{workdir!r} has no checkpoint at global step {step} (kept: {kept or 'none'}); a run keeps "
      "every stage's last checkpoint, so that stage has not finished in this workdir yet."
    )
  where = files.join(directory, str(step))
  try:
    recorded = json.loads(files.read_text(files.join(where, "meta", "metadata"))).get(DIGEST_KEY)
    with ocp.StandardCheckpointer() as checkpointer:
      state = checkpointer.restore(files.path(path), abstract_state)
  except Exception as e:  # noqa: BLE001  (a missing or truncated file: orbax's, tensorstore's and json's types)
    raise FitnetsError(
      f"the checkpoint {where} cannot be read ({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]})."
    ) from None
  if recorded is not None and digest(state) != recorded:
    raise FitnetsError(
      f"the checkpoint {where} differs from the one that was saved (its state's SHA-256 does not match the one "
      "recorded in its metadata): a file was changed on disk, so it is not read."
    )
  return state

"""Orbax in one place: the run's checkpoints (resume) and the saved networks (reuse, deployment).

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

TEACHER_DIR = "teacher"
NETWORK_INFO = "network.json"
MANIFEST = "SHA256SUMS"  # a saved network's files (network.json, preprocessing.npz) and their SHA-256
INFO_FILES = (NETWORK_INFO, "teacher.json")  # teacher.json: a teacher saved by an earlier version
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
  config_sha = file_sha256(config)[:8] if files.isfile(config) else "0"
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


def file_sha256(path):
  return hashlib.sha256(files.read_bytes(path)).hexdigest()


def write_manifest(folder):
  """Writes `folder`/SHA256SUMS: the SHA-256 of every file of a saved network (its variables are covered
  by the `variables_sha256` that network.json records)."""
  names = sorted(n for n in files.listdir(folder) if n != MANIFEST and files.isfile(files.join(folder, n)))
  text = "".join(f"{file_sha256(files.join(folder, n))}  {n}\n" for n in names)
  files.write_atomically(files.join(folder, MANIFEST), text)


def verify_manifest(folder, key):
  """Checks every file `folder`/SHA256SUMS lists against its SHA-256 before anything of it is used; a
  missing, changed or extra-listed file is one FitnetsError paragraph naming `key`. A folder saved by an
  earlier version (no SHA256SUMS) is used with a warning that it cannot be verified."""
  manifest = files.join(folder, MANIFEST)
  if not files.isfile(manifest):
    print(
      f"warning: {folder} has no {MANIFEST} (saved by an earlier version): its files cannot be verified.",
      file=sys.stderr,
      flush=True,
    )
    return
  try:
    listed = [line.split("  ", 1) for line in files.read_text(manifest).splitlines() if line.strip()]
    expected = {name: sha for sha, name in listed}
  except (OSError, ValueError) as e:
    raise FitnetsError(f"{key}: {manifest} cannot be read ({type(e).__name__}: {e}).") from None
  for name, sha in sorted(expected.items()):
    path = files.join(folder, name)
    found = file_sha256(path) if files.isfile(path) else None
    if found != sha:
      raise FitnetsError(
        f"{key}: {path} {'is missing' if found is None else 'differs from the file that was saved'} (its SHA-256 "
        f"does not match {MANIFEST}): the saved network was changed or damaged on disk, so it is not used. Restore "
        "the folder from a copy, or train the network again."
      )


def save_network(workdir, role, variables, info):
  """Writes a network's variables and `network.json` (`info` and the variables' SHA-256) under
  workdir/<role> (workdir/teacher for a run's one teacher, workdir/teacher1, … for `config.teachers`,
  workdir/student)."""
  directory = files.absolute(files.join(workdir, role))
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(files.path(files.join(directory, "variables")), variables, force=True)
      checkpointer.wait_until_finished()
    if jax.process_index() == 0:
      files.write_atomically(
        files.join(directory, NETWORK_INFO), json.dumps({**info, "variables_sha256": digest(variables)}, indent=2)
      )
      write_manifest(directory)
  except Exception as e:  # noqa: BLE001
    raise WorkdirWriteError.of(f"the {role}'s variables", directory, e) from None


def info_file(folder):
  """The saved network's info file in `folder`, or None."""
  return next((files.join(folder, n) for n in INFO_FILES if files.isfile(files.join(folder, n))), None)


def teacher_dir(path):
  """The teacher folder for `teacher.checkpoint=path`: a run's workdir or its teacher/ folder."""
  for candidate in (files.join(path, TEACHER_DIR), path):
    if info_file(candidate):
      return files.absolute(candidate)
  raise FitnetsError(
    f"teacher.checkpoint={path!r} holds no saved teacher: expected {TEACHER_DIR}/{NETWORK_INFO} (a run's "
    f"workdir) or {NETWORK_INFO} (its teacher/ folder) there. Train one with method=fitnets or kd and "
    "an empty teacher.checkpoint, then point at that run's workdir."
  )


def read_info(folder, key):
  """A saved network's info file (network.json) in `folder` as a dict; a file that cannot be read or
  decoded is one FitnetsError paragraph naming `key` (what pointed at the folder)."""
  verify_manifest(folder, key)
  path = info_file(folder) or files.join(folder, NETWORK_INFO)
  try:
    info = json.loads(files.read_text(path))
  except (OSError, ValueError) as e:  # missing, unreadable, or not JSON (a damaged file)
    raise FitnetsError(
      f"{key}: {path} cannot be read ({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}); "
      "it describes the saved network (model, digest), so the network cannot be used. Restore the folder from a "
      "copy, or train the network again."
    ) from None
  if not isinstance(info, dict):
    raise FitnetsError(f"{key}: {path} holds {type(info).__name__}, not the JSON object a saved network's info is.")
  return info


def teacher_info(path, key="teacher.checkpoint"):
  return read_info(teacher_dir(path), f"{key}={path!r}")


def read_network(folder, key):
  """A saved network's variables from `folder`, checked against the digest in its info file; unreadable
  or damaged files are one paragraph naming `key` (what pointed at the folder)."""
  directory = files.join(folder, "variables")
  recorded = read_info(folder, key).get("variables_sha256")
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(files.path(directory))
  except Exception as e:  # noqa: BLE001  (a missing folder, a truncated file: orbax's and tensorstore's types)
    raise FitnetsError(
      f"{key}: the network's variables in {directory} cannot be read ({type(e).__name__}: "
      f"{(str(e).strip().splitlines() or [''])[0][:200]}); its {NETWORK_INFO} is there, but the weights are "
      "missing or damaged. Restore the folder from a copy, or train the network again."
    ) from None
  if recorded is not None and digest(restored) != recorded:
    raise FitnetsError(
      f"{key}: the network's variables in {directory} differ from those saved (their SHA-256 does not "
      f"match the one in {NETWORK_INFO}): a file was changed on disk. Restore the folder from a copy, or train "
      "the network again."
    )
  return restored


def load_teacher(path, abstract_variables, key="teacher.checkpoint"):
  """Restores teacher variables (`read_network`); a parameter missing or of another shape is a clear error."""
  restored = read_network(teacher_dir(path), f"{key}={path!r}")
  want = {jax.tree_util.keystr(p): l.shape for p, l in jax.tree_util.tree_leaves_with_path(abstract_variables)}
  have = {jax.tree_util.keystr(p): l.shape for p, l in jax.tree_util.tree_leaves_with_path(restored)}
  for name in sorted(set(want) | set(have)):
    if want.get(name) != have.get(name):
      raise FitnetsError(
        f"{key}={path!r} does not fit the configured teacher: parameter {name} has shape "
        f"{have.get(name, 'missing')} in the checkpoint but {want.get(name, 'missing')} in the model. "
        f"Set teacher.model to the architecture that was saved (see its {NETWORK_INFO})."
      )
  return restored

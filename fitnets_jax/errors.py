"""The project's own errors: one paragraph naming the offending key or file and what to do, and the
exit status each gives on the command line (docs/reliability.md)."""

import sys


class FitnetsError(ValueError):
  """Bad input (config, dataset, checkpoint, layer name, a workdir in use), raised before any training
  step. Exit status 2."""

  exit_code = 2
  prefix = "error"


class RunStopped(Exception):
  """A run that had started stopped early, with everything it had saved intact; rerun to resume."""

  exit_code = 1
  prefix = "error"


class Preempted(RunStopped):
  """The run saved a checkpoint after SIGTERM (or a TPU preemption notice) and stopped; rerun to resume."""

  exit_code = 75  # EX_TEMPFAIL: try again later
  prefix = "preempted"


class NonFiniteLoss(RunStopped):
  """A loss or gradient became NaN/Inf with on_nan='stop'; the last good checkpoint is kept."""

  exit_code = 3


class WorkdirWriteError(RunStopped):
  """A checkpoint or another run file could not be written (disk full, read-only folder, a bucket
  refusing writes); what was saved before is intact."""

  exit_code = 74  # EX_IOERR

  @classmethod
  def of(cls, what, path, error, newest=None):
    """The error for a failed write of `what` at `path`, naming the OSError found in `error`'s chain."""
    reason = os_error_in(error) or error
    text = (str(reason).strip().splitlines() or [""])[0][:300]
    kept = (
      f" The checkpoints saved before are intact (the newest: global step {newest}),"
      if newest is not None
      else " Nothing saved before was touched,"
    )
    return cls(
      f"Could not write {what} to {path} ({type(reason).__name__}: {text}).{kept} so nothing trained "
      "before this point is lost. Free disk space or make the folder writable (or fix the bucket's "
      "permissions), then run the same command again to resume."
    )


class WorkdirReadError(RunStopped):
  """A checkpoint could not be read for a reason that is not damage (an I/O error that outlasted the
  retries); nothing was moved or changed."""

  exit_code = 74  # EX_IOERR


def os_error_in(error):
  """The first OSError in `error`'s chain of causes (orbax and tensorstore wrap them), or None."""
  cause = error
  while cause is not None and not isinstance(cause, OSError):
    cause = cause.__cause__ or cause.__context__
  return cause


def or_exit(fn, *args):
  """`fn(*args)`; bad input (FitnetsError) and a stopped run (RunStopped) are printed as one
  `error: …` (or `preempted: …`) paragraph, without a traceback, and exit with their status: what
  every command line does."""
  try:
    return fn(*args)
  except (FitnetsError, RunStopped) as e:
    print(f"{e.prefix}: {e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_code)


def check(condition, message):
  """Raises FitnetsError(message) unless `condition` holds."""
  if not condition:
    raise FitnetsError(message)


def one_of(key, value, valid):
  """Raises unless `value` is in `valid`, naming the key and the valid choices."""
  if value not in valid:
    choices = ", ".join(repr(v) for v in valid)
    raise FitnetsError(f"{key}={value!r} is not valid; choose one of: {choices}.")
  return value


def named_attribute(name, key, what):
  """The object `name` = 'package.module:ATTRIBUTE' names, imported; a module or attribute that is not
  there is one FitnetsError paragraph naming `key`, with `what` it must be (a sentence)."""
  import importlib

  module_name, _, attribute = name.partition(":")
  try:
    return getattr(importlib.import_module(module_name), attribute)
  except (ImportError, AttributeError) as e:
    raise FitnetsError(
      f"{key}={name!r}: {type(e).__name__}: {str(e)[:200]}. {what} It is named 'package.module:ATTRIBUTE', "
      "importable from where the run starts (on PYTHONPATH)."
    ) from None

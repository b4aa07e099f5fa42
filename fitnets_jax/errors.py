"""The project's own error type: one paragraph naming the offending key or file and what is valid."""

import sys


class FitnetsError(ValueError):
  """Bad input (config, dataset, checkpoint, layer name), raised before any training step."""


class Preempted(Exception):
  """The run saved a checkpoint after SIGTERM (or a TPU preemption notice) and stopped; rerun to resume."""
  exit_code = 75  # EX_TEMPFAIL: try again later


class NonFiniteLoss(RuntimeError):
  """A loss or gradient became NaN/Inf with on_nan='stop'; the last good checkpoint is kept."""
  exit_code = 3


def or_exit(fn, *args):
  """`fn(*args)`; bad input (a FitnetsError) is printed as one `error: …` paragraph, without a
  traceback, and exits with status 2: what every command line does."""
  try:
    return fn(*args)
  except FitnetsError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


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

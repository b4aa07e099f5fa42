"""The project's own error type: one paragraph naming the offending key or file and what is valid."""


class FitnetsError(ValueError):
  """Bad input (config, dataset, checkpoint, layer name), raised before any training step."""


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

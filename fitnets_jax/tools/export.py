"""Exports a saved network, its preprocessing included, for serving without this library.

  python -m fitnets_jax.tools.export --workdir runs/digits --network student --format stablehlo --out export/student
  python -m fitnets_jax.tools.export --workdir runs/digits --network student --format savedmodel --out export/sm

Both formats take a batch of raw uint8 images of any size (batch, height, width, channels), as the
dataset stores them, and return float32 logits (batch, classes):
- `stablehlo`: `model.stablehlo`, a serialised `jax.export.Exported` with a symbolic batch
  dimension. Load it with `jax.export.deserialize(data).call(images)`; it runs on the platforms it
  was exported for (`--platforms`, by default the backend this runs on).
- `savedmodel`: a TensorFlow SavedModel made by jax2tf, its signature `serving_default(images)`.
  Load it with `tf.saved_model.load(dir)`; TensorFlow Serving and TFLite converters read it too.
The output folder also gets a copy of the network's `network.json`.
"""

import jax
import jax.numpy as jnp
from absl import flags, logging

from fitnets_jax import command_line, files, saved
from fitnets_jax.errors import check, one_of, or_exit

FORMATS = ("stablehlo", "savedmodel")
STABLEHLO_FILE = "model.stablehlo"


def input_spec(model):
  """(batch, *input_shape) uint8, with a symbolic batch dimension."""
  (batch,) = jax.export.symbolic_shape("batch")
  return jax.ShapeDtypeStruct((batch, *model.input_shape), jnp.uint8)


def export_stablehlo(model, out, platforms=None):
  """Writes `model.stablehlo` into `out`; returns the jax.export.Exported."""
  exported = jax.export.export(jax.jit(model.logits), platforms=platforms)(input_spec(model))
  files.write_bytes(files.join(out, STABLEHLO_FILE), bytes(exported.serialize()))
  return exported


def export_savedmodel(model, out):
  """Writes a TensorFlow SavedModel into `out` (jax2tf, a polymorphic batch dimension)."""
  import tensorflow as tf
  from jax.experimental import jax2tf

  shape = ", ".join(map(str, model.input_shape))
  converted = jax2tf.convert(model.logits, polymorphic_shapes=[f"(b, {shape})"], with_gradient=False)
  module = tf.Module()
  module.predict = tf.function(
    converted, input_signature=[tf.TensorSpec((None, *model.input_shape), tf.uint8, name="images")], autograph=False
  )
  tf.saved_model.save(module, str(out), signatures={"serving_default": module.predict})


def export(workdir, network, fmt, out, platforms=""):
  """Exports `network` of the run (or network folder) `workdir` in format `fmt` into the folder `out`."""
  one_of("--format", fmt, FORMATS)
  check(out, "--out is required: the folder the exported model goes to, e.g. --out export/student.")
  wanted = tuple(p for p in platforms.split(",") if p)
  check(
    not wanted or fmt == "stablehlo",
    f"--platforms={platforms!r} applies to --format=stablehlo; a SavedModel runs wherever TensorFlow does.",
  )
  model = saved.load_model(workdir, network)
  files.makedirs(out)
  if fmt == "stablehlo":
    export_stablehlo(model, out, wanted or None)
  else:
    export_savedmodel(model, out)
  files.write_atomically(files.join(out, "network.json"), files.read_text(files.join(model.folder, "network.json")))
  size = files.tree_size(out)
  print(f"Exported {model.folder} ({model.info['model']}) as {fmt} to {out}: {size / 1e6:.2f} MB.")
  return out


def main(argv):
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  or_exit(export, f.workdir, f.network, f.format, f.out, f.platforms)


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A finished run's workdir, or a saved network's folder.")
  flags.DEFINE_string("network", "student", "The saved network: student, teacher, net2, … (a run's role).")
  flags.DEFINE_string("format", "stablehlo", f"One of {', '.join(FORMATS)}.")
  flags.DEFINE_string("out", None, "The folder to write the exported model into.")
  flags.DEFINE_string(
    "platforms", "", "stablehlo: comma-separated platforms (cpu, cuda, rocm, tpu); default: this one."
  )
  command_line.start(main, __doc__, required=("workdir", "out"))

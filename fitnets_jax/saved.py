"""A trained network on its own: saved by a run, loaded back to predict from raw images.

A run saves each network it trains in `<workdir>/<role>/`: a teacher when its stage ends (`teacher/`,
`teacher1/`, …), the student when the run ends (`student/`; each DML cohort network as `net1/`, …;
BYOT's network with its exit heads). A folder holds:

  variables/         {"params", "batch_stats"} (orbax), and {"exits": {name: variables}} for BYOT
  network.json       the model's name, classes, input shape, sizes, test accuracy, dataset, the
                     preprocessing's kind, BYOT's exit heads, and the variables' SHA-256
  preprocessing.npz  the fitted preprocessing's arrays (mean/std, or GCN+ZCA's mean and W)

`load_model(path, network="student")` takes a run's workdir (and the network's role) or the
network's own folder, and returns a `SavedNetwork`, whose `predict(images)` maps raw uint8 images,
as the dataset stores them, to logits. It reads neither the dataset nor the run's config.
"""


import jax
import jax.numpy as jnp
import numpy as np

from fitnets_jax import checkpoint, compiler, files, models
from fitnets_jax.errors import FitnetsError, check
from fitnets_jax.methods.base import forward, network
from fitnets_jax.models.exits import ExitHead
from fitnets_jax.preprocessing import Preprocessing


def network_info(net, data, test_accuracy=None, exits=None):
  """network.json's content for Network `net` trained on Data `data`."""
  info = {
    **net.describe(),
    "test_accuracy": test_accuracy,
    "dataset": data.name,
    "num_classes": data.num_classes,
    "image_shape": list(data.image_shape),
    "dtype": net.dtype,
    "preprocessing": data.preprocessing.describe(),
  }
  if exits:
    info["exits"] = exits
  return info


def save(workdir, role, net, variables, data, test_accuracy=None, exits=None):
  """Saves `variables` of Network `net` with everything `load_model` needs under workdir/<role>."""
  folder = files.absolute(files.join(workdir, role))
  if jax.process_index() == 0:
    files.makedirs(folder)
    data.preprocessing.save(folder)
  checkpoint.save_network(workdir, role, variables, network_info(net, data, test_accuracy, exits))


def save_trained(exp, workdir, stage, state, results):
  """Saves every network the run's last stage trained (the student, or each cohort network), with
  the stage's extra heads (`stage.heads`, BYOT's exits) beside the student's variables."""
  record = results["stages"][stage.name]
  test = record.get("test", {})
  nets = stage.networks or {stage.trains: exp.student}
  for role, net in nets.items():
    variables = jax.device_get({"params": state.params[role], "batch_stats": state.batch_stats[role]})
    exits = None
    if role == stage.trains and stage.heads:
      variables["exits"] = jax.device_get(
        {name: {"params": state.params[name], "batch_stats": state.batch_stats[name]} for name in stage.heads}
      )
      exits = [
        {
          "name": name,
          "after": after,
          "blocks": [list(b) for b in head.blocks],
          "attention": head.attention,
          "test_accuracy": test.get(f"{name}_accuracy"),
        }
        for name, (after, head) in stage.heads.items()
      ]
    save(workdir, role, net, variables, exp.data, test.get(f"{role}_accuracy", record.get("test_accuracy")), exits)


class SavedNetwork:
  """A saved network, ready to predict: `info` (network.json), `module`, `variables`, `preprocessing`,
  and `heads` ({exit name: (the layer it follows, its module)}, for BYOT's exits)."""

  def __init__(self, folder):
    self.folder = folder
    self.info = checkpoint.read_info(folder, f"the saved network in {folder}")
    for key in ("model", "num_classes", "image_shape"):
      check(
        key in self.info,
        f"{checkpoint.info_file(folder)} lacks {key!r}: it was saved by an earlier version that recorded no "
        "preprocessing; train the network again to save it with everything predict needs.",
      )
    check(
      "preprocessing" in self.info,
      f"{checkpoint.info_file(folder)} records no preprocessing (saved by an earlier version); train the network "
      "again to save it with everything predict needs.",
    )
    self.preprocessing = Preprocessing.load(folder, self.info["preprocessing"])
    self.input_shape = tuple(self.info["image_shape"])
    self.module = models.get_model(self.info["model"], self.info["num_classes"], key=f"{folder}: model")
    self.network = network(self.info["model"], self.module, self.input_shape, self.info.get("dtype", "float32"))
    self.variables = jax.tree.map(jnp.asarray, checkpoint.read_network(folder, f"load_model({folder!r})"))
    self.heads = {
      e["name"]: (e["after"], ExitHead(tuple(map(tuple, e["blocks"])), self.info["num_classes"], e["attention"]))
      for e in self.info.get("exits", [])
    }
    self._predict = compiler.jit(self.logits)
    self._predict_exits = compiler.jit(self.exit_logits)

  def logits(self, images):
    """The float32 logits of raw uint8 `images` (batch, *input_shape): a pure function of the images
    (this network's variables are constants), what `predict` compiles and the exports serialise."""
    x = self.preprocessing.images_to_input(images)
    return forward(self.network, self.variables["params"], self.variables.get("batch_stats", {}), x, False)[0]

  def exit_logits(self, images):
    """[logits of every exit head, shallow → deep, then the network's own], for BYOT's network."""
    x = self.preprocessing.images_to_input(images)
    v = self.variables
    logits, feats, _ = forward(
      self.network, v["params"], v.get("batch_stats", {}), x, False, capture=tuple(a for a, _ in self.heads.values())
    )
    shallow = [
      forward(
        network(name, head, feats[after].shape[1:]),
        v["exits"][name]["params"],
        v["exits"][name].get("batch_stats", {}),
        feats[after],
        False,
      )[0][0]
      for name, (after, head) in self.heads.items()
    ]
    return shallow + [logits]

  def check_images(self, images):
    images = np.asarray(images)
    check(
      images.ndim == len(self.input_shape) + 1 and images.shape[1:] == self.input_shape,
      f"predict takes a batch of raw images of shape (batch, {', '.join(map(str, self.input_shape))}) as "
      f"{self.info['dataset']!r} stores them (uint8, 0..255); got shape {images.shape}. Add a batch axis for one "
      "image: images[None].",
    )
    check(
      images.dtype == np.uint8,
      f"predict takes raw uint8 images (0..255), as the dataset stores them; got dtype {images.dtype}. The "
      "network's preprocessing is applied inside predict.",
    )
    return images

  def predict(self, images):
    """Logits (batch, classes) of raw uint8 `images` (batch, height, width, channels)."""
    return np.asarray(self._predict(self.check_images(images)))

  def predict_exits(self, images):
    """BYOT: [logits at each exit, shallow → deep]; the last are `predict`'s."""
    check(self.heads, f"{self.folder} has no exit heads: only a network trained with method=byot does.")
    return [np.asarray(z) for z in self._predict_exits(self.check_images(images))]


def network_folder(path, network="student"):
  """The folder of `network` in the run `path`, or `path` itself when it is a saved network's folder."""
  for candidate in (path, files.join(path, network)):
    if checkpoint.info_file(candidate) and files.isdir(files.join(candidate, "variables")):
      return files.absolute(candidate)
  saved = (
    sorted(n for n in files.listdir(path) if checkpoint.info_file(files.join(path, n))) if files.isdir(path) else []
  )
  raise FitnetsError(
    f"{path!r} holds no saved network {network!r}: expected {files.join(path, network)}/network.json (a finished "
    f"run's workdir) or network.json in {path!r} itself (a network's folder). "
    + (f"It holds: {', '.join(saved)}." if saved else "A run saves its networks when it ends.")
  )


def load_model(path, network="student"):
  """The network `network` ("student", "teacher", "net2", …) saved in the run `path`, or the network
  saved in the folder `path`, ready to `predict` from raw images."""
  return SavedNetwork(network_folder(path, network))

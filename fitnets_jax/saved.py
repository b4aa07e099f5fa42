"""A trained network on its own: saved by a run, loaded back to predict from raw images.

A run saves each network it trains in `<workdir>/<role>/`: a teacher when its stage ends (`teacher/`,
`teacher1/`, …), the student when the run ends (`student/`; each DML cohort network as `net1/`, …;
BYOT's network with its exit heads). A folder holds:

  variables/         {"params", "batch_stats"} (orbax), and {"exits": {name: variables}} for BYOT
  network.json       the model's name, classes, input shape, sizes, test accuracy, dataset, the
                     preprocessing's kind, BYOT's exit heads, and the variables' SHA-256
  preprocessing.npz  the fitted preprocessing's arrays (mean/std, or GCN+ZCA's mean and W)

  SHA256SUMS         the SHA-256 of network.json and preprocessing.npz

`load_model(path, network="student")` takes a run's workdir (and the network's role) or the
network's own folder, and returns a `SavedNetwork`, whose `predict(images)` maps raw uint8 images,
as the dataset stores them, to logits. It reads neither the dataset nor the run's config.

Security model: a saved network is data, checked before it is used. Every file is verified against
SHA256SUMS (and the variables against the digest network.json records) before anything is read from
it, an npz is read without unpickling, and the variables must fit the named model. A network.json
names its model; a model of this package is built, while one of another module (`package.module:factory`)
is imported only when that module is already imported or the caller passes `trust_code=True`:
loading a folder from elsewhere never runs code it names. The digests catch damage and edits, not an
attacker who rewrites SHA256SUMS too: treat a folder of unknown origin as code only with trust_code.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from fitnets_jax import checkpoint, compiler, files, models
from fitnets_jax.errors import FitnetsError, WorkdirWriteError, check
from fitnets_jax.models.exits import ExitHead
from fitnets_jax.network import forward, network
from fitnets_jax.preprocessing import Preprocessing

NETWORK_INFO = "network.json"
MANIFEST = "SHA256SUMS"  # a saved network's files (network.json, preprocessing.npz) and their SHA-256
INFO_FILES = (NETWORK_INFO, "teacher.json")  # teacher.json: a teacher saved by an earlier version


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
    try:
      files.makedirs(folder)
      data.preprocessing.save(folder)
    except OSError as e:
      raise WorkdirWriteError.of(f"the {role}'s preprocessing", folder, e) from None
  save_network(workdir, role, variables, network_info(net, data, test_accuracy, exits))


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

  def __init__(self, folder, trust_code=False):
    self.folder = folder
    key = f"load_model({folder!r})"
    self.info = read_info(folder, key)  # every file checked against SHA256SUMS first
    for field in ("model", "num_classes", "image_shape"):
      check(
        field in self.info,
        f"{info_file(folder)} lacks {field!r}: it was saved by an earlier version that recorded no "
        "preprocessing; train the network again to save it with everything predict needs.",
      )
    check(
      "preprocessing" in self.info,
      f"{info_file(folder)} records no preprocessing (saved by an earlier version); train the network "
      "again to save it with everything predict needs.",
    )
    self.preprocessing = Preprocessing.load(folder, self.info["preprocessing"])
    self.input_shape = tuple(self.info["image_shape"])
    check_code(self.info["model"], key, trust_code)
    self.module = models.get_model(self.info["model"], self.info["num_classes"], key=f"{folder}: model")
    self.network = network(self.info["model"], self.module, self.input_shape, self.info.get("dtype", "float32"))
    restored = read_network(folder, key)
    check_fits(restored, self.network.abstract_variables(), key, self.info["model"])
    self.variables = jax.tree.map(jnp.asarray, restored)
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
    """Logits (batch, classes) of raw uint8 `images` (batch, height, width, channels); an empty batch
    gives (0, classes)."""
    images = self.check_images(images)
    if not len(images):
      return np.zeros((0, self.info["num_classes"]), np.float32)
    return np.asarray(self._predict(images))

  def predict_exits(self, images):
    """BYOT: [logits at each exit, shallow → deep]; the last are `predict`'s."""
    check(self.heads, f"{self.folder} has no exit heads: only a network trained with method=byot does.")
    images = self.check_images(images)
    if not len(images):
      return [np.zeros((0, self.info["num_classes"]), np.float32)] * (len(self.heads) + 1)
    return [np.asarray(z) for z in self._predict_exits(images)]


def check_code(model, key, trust_code):
  """Refuses a model named as `package.module:factory` outside this package unless its module is
  already imported or `trust_code` is set: a saved network's network.json never makes load_model run code."""
  module = model.partition(":")[0] if ":" in model else ""
  if trust_code or not module or module == "fitnets_jax" or module.startswith("fitnets_jax.") or module in sys.modules:
    return
  raise FitnetsError(
    f"{key}: the saved network names the model {model!r}, whose module {module!r} is not imported; loading it "
    "would run that module's code. Import it yourself first if you trust it, or pass trust_code=True."
  )


def check_fits(restored, abstract, key, model):
  """The restored variables must have exactly the model's parameters and shapes (the exit heads aside)."""
  shapes = lambda tree: {jax.tree_util.keystr(p): tuple(l.shape) for p, l in jax.tree_util.tree_leaves_with_path(tree)}
  have = shapes({k: v for k, v in restored.items() if k != "exits"})
  want = shapes({k: v for k, v in abstract.items() if k in ("params", "batch_stats")})
  for name in sorted(set(have) | set(want)):
    if have.get(name) != want.get(name):
      raise FitnetsError(
        f"{key}: the saved variables do not fit the model {model!r} that network.json names: {name} has shape "
        f"{have.get(name, 'missing')} saved but {want.get(name, 'missing')} in the model. The folder is inconsistent; "
        "save the network again."
      )


def network_folder(path, network="student"):
  """The folder of `network` in the run `path`, or `path` itself when it is a saved network's folder."""
  for candidate in (path, files.join(path, network)):
    if info_file(candidate) and files.isdir(files.join(candidate, "variables")):
      return files.absolute(candidate)
  saved = sorted(n for n in files.listdir(path) if info_file(files.join(path, n))) if files.isdir(path) else []
  raise FitnetsError(
    f"{path!r} holds no saved network {network!r}: expected {files.join(path, network)}/network.json (a finished "
    f"run's workdir) or network.json in {path!r} itself (a network's folder). "
    + (f"It holds: {', '.join(saved)}." if saved else "A run saves its networks when it ends.")
  )


def load_model(path, network="student", trust_code=False):
  """The network `network` ("student", "teacher", "net2", …) saved in the run `path`, or the network
  saved in the folder `path`, ready to `predict` from raw images; its files are verified first, and a
  model of another package is imported only with `trust_code` (see the module's security model)."""
  return SavedNetwork(network_folder(path, network), trust_code)


def write_manifest(folder):
  """Writes `folder`/SHA256SUMS: the SHA-256 of every file of a saved network (its variables are covered
  by the `variables_sha256` that network.json records)."""
  names = sorted(n for n in files.listdir(folder) if n != MANIFEST and files.isfile(files.join(folder, n)))
  text = "".join(f"{files.sha256(files.join(folder, n))}  {n}\n" for n in names)
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
    found = files.sha256(path) if files.isfile(path) else None
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
        files.join(directory, NETWORK_INFO),
        json.dumps({**info, "variables_sha256": checkpoint.digest(variables)}, indent=2),
      )
      write_manifest(directory)
  except Exception as e:  # noqa: BLE001
    raise WorkdirWriteError.of(f"the {role}'s variables", directory, e) from None


def info_file(folder):
  """The saved network's info file in `folder`, or None."""
  return next((files.join(folder, n) for n in INFO_FILES if files.isfile(files.join(folder, n))), None)


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


def read_network(folder, key):
  """A saved network's variables from `folder`, checked against the digest in its info file; unreadable
  or damaged files are one paragraph naming `key` (what pointed at the folder)."""
  directory = files.join(folder, "variables")
  recorded = read_info(folder, key).get("variables_sha256")
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      # Into this process's first device, whatever the topology it was saved on: without a target orbax
      # refuses a checkpoint written by another number of processes (a teacher saved on one host, read
      # by every host of a cluster).
      here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
        checkpointer.metadata(files.path(directory)).item_metadata.tree,
      )
      restored = checkpointer.restore(files.path(directory), target)
  except Exception as e:  # noqa: BLE001  (a missing folder, a truncated file: orbax's and tensorstore's types)
    raise FitnetsError(
      f"{key}: the network's variables in {directory} cannot be read ({type(e).__name__}: "
      f"{(str(e).strip().splitlines() or [''])[0][:200]}); its {NETWORK_INFO} is there, but the weights are "
      "missing or damaged. Restore the folder from a copy, or train the network again."
    ) from None
  if recorded is not None and checkpoint.digest(restored) != recorded:
    raise FitnetsError(
      f"{key}: the network's variables in {directory} differ from those saved (their SHA-256 does not "
      f"match the one in {NETWORK_INFO}): a file was changed on disk. Restore the folder from a copy, or train "
      "the network again."
    )
  return restored

"""Teachers from PyTorch, read without PyTorch: every kind of the zoo imported from a checkpoint that
torch wrote (tests/fixtures/pytorch/make_fixtures.py: randomly initialised models with non-trivial BN
statistics, in the checkpoint wrappers their code bases use) gives torch's own eval-mode logits, and a
checkpoint that asks for more than tensors and containers is refused before anything of it runs."""

import io
import os
import pickle
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

import fitnets_jax
from fitnets_jax import import_teacher, models, pth
from fitnets_jax.errors import FitnetsError
from fitnets_jax.models.mobilenetv2 import MobileNetV2
from fitnets_jax.models.resnet import ResNet, wide_resnet
from fitnets_jax.models.shufflenet import ShuffleNet
from fitnets_jax.models.vgg import VGG
from fitnets_jax.network import network, predict

from conftest import ROOT, tiny_digits
from helpers import write_npz

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pytorch")

# The fixtures' models, small members of each family, as make_fixtures.py builds them in torch.
KINDS = {
  "resnet8": lambda: models.get_model("resnet8", 10),  # RepDistiller's {'model': …}
  "resnet_x4_style": lambda: ResNet(10, 1, (16, 32, 64), 8),  # 1×1 shortcut in section1; legacy format, module.
  "wrn": lambda: wide_resnet(10, 1, 10),  # {'state_dict': …}
  "vgg": lambda: VGG(10, ((8, 8), (16,), (16, 16), (32,), (32,))),  # convs with biases
  "mobilenetv2": lambda: MobileNetV2(10, expansion=2, width=0.25),  # depthwise convs
  "shufflev1": lambda: ShuffleNet(10, 1, (60, 120, 240), (2, 2, 2), groups=3),  # grouped convs, shuffles
  "shufflev2": lambda: ShuffleNet(10, 2, (24, 48, 96), (1, 2, 1), head=128),
  "resnet_basic": lambda: ResNet(10, (1, 1, 1, 1), (8, 16, 32, 64), 8),  # RepDistiller's ResNet18 form; {'net': …}
  "resnet_bottleneck": lambda: ResNet(10, (1, 1, 1, 1), (8, 16, 32, 64), 8, bottleneck=True),  # ResNet50 form
  "torchvision_basic": lambda: ResNet(10, (1, 1, 1, 1), (8, 16, 32, 64), 8, imagenet_stem=True),  # bare
  "torchvision_bottleneck": lambda: ResNet(10, (1, 1, 1, 1), (8, 16, 32, 64), 8, bottleneck=True, imagenet_stem=True),
}


def fixture(kind):
  return os.path.join(FIXTURES, f"{kind}.pth"), np.load(os.path.join(FIXTURES, f"{kind}.npz"))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_imported_pytorch_model_gives_torchs_logits(kind):
  path, expected = fixture(kind)
  images = expected["images"].transpose(0, 2, 3, 1)  # NCHW → NHWC
  net = network(kind, KINDS[kind](), images.shape[1:])
  variables = import_teacher.pytorch_variables(pth.state_dict(pth.load(path), path), net, path)
  logits = np.asarray(predict(net, jax.tree.map(np.asarray, variables), images))
  # float32 on both sides; the sums are ordered differently (oneDNN vs XLA), hence a tolerance: 1e-4
  # as the import promises (measured ≤ 2e-7 on logits of magnitude ≈ 0.5).
  np.testing.assert_allclose(logits, expected["logits"], rtol=0, atol=1e-4)
  assert np.abs(expected["logits"]).max() > 0.1  # the comparison is not between two near-zero arrays


def test_the_checkpoint_wrappers_and_formats_are_unwrapped(tmp_path):
  legacy, _ = fixture("resnet_x4_style")
  with open(legacy, "rb") as f:
    raw = f.read()
  assert not zipfile.is_zipfile(io.BytesIO(raw))  # torch < 1.6's format, as torch 2 still writes it on request
  assert all(k.startswith("module.") for k in pth.load(legacy))
  weights = pth.state_dict(pth.load(legacy))
  assert not any(k.startswith("module.") for k in weights)
  # A GPU's checkpoint names CUDA storages (torch.cuda.FloatStorage in the legacy format); it loads on the host.
  assert raw.count(b"ctorch\nFloatStorage\n") == 1
  (tmp_path / "gpu.pth").write_bytes(raw.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n"))
  on_gpu = pth.state_dict(pth.load(str(tmp_path / "gpu.pth")))
  assert list(on_gpu) == list(weights) and all(np.array_equal(on_gpu[k], weights[k]) for k in weights)
  assert set(pth.load(fixture("resnet8")[0])) == {"model", "epoch", "best_acc"}
  assert "state_dict" in pth.load(fixture("wrn")[0]) and "net" in pth.load(fixture("resnet_basic")[0])
  with pytest.raises(FitnetsError, match="no model weights found.*'optimizer'"):
    pth.state_dict({"optimizer": {"lr": 0.1}, "epoch": 3}, "ckpt.pth")


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def _with_pickle(source, payload, target):
  """A copy of the zip checkpoint `source` whose data.pkl is `payload`."""
  with zipfile.ZipFile(source) as z, zipfile.ZipFile(target, "w") as out:
    for name in z.namelist():
      out.writestr(name, payload if name.endswith("/data.pkl") else z.read(name))
  return str(target)


def test_a_checkpoint_that_asks_for_code_is_refused_before_it_runs(tmp_path):
  marker = tmp_path / "ran"
  bad = _with_pickle(fixture("resnet8")[0], pickle.dumps({"model": _Exploit(marker)}, protocol=2), tmp_path / "x.pth")
  with pytest.raises(FitnetsError, match=r"asks to build posix\.system.*neither a tensor.*state_dict\(\)") as e:
    pth.load(bad)
  assert "\n" not in str(e.value) and not marker.exists()
  legacy = io.BytesIO()
  for part in (pth.LEGACY_MAGIC, 1001, {}):
    pickle.dump(part, legacy, protocol=2)
  pickle.dump(_Exploit(marker), legacy, protocol=2)
  (tmp_path / "legacy.pth").write_bytes(legacy.getvalue())
  with pytest.raises(FitnetsError, match="posix.system"):
    pth.load(str(tmp_path / "legacy.pth"))
  assert not marker.exists()


def test_a_damaged_checkpoint_is_one_paragraph(tmp_path):
  source = fixture("resnet8")[0]
  with zipfile.ZipFile(source) as z, zipfile.ZipFile(tmp_path / "short.pth", "w") as out:
    for name in z.namelist():  # the first storage (conv1's weight) cut short
      out.writestr(name, z.read(name)[:16] if name.endswith("/data/0") else z.read(name))
  with pytest.raises(FitnetsError, match="not a readable PyTorch checkpoint.*reaches past its storage"):
    pth.load(str(tmp_path / "short.pth"))
  (tmp_path / "text.pth").write_text("not a checkpoint")
  with pytest.raises(FitnetsError, match="not a readable PyTorch checkpoint"):
    pth.load(str(tmp_path / "text.pth"))


def test_a_checkpoint_of_another_architecture_names_the_layers_that_differ(tmp_path):
  path, _ = fixture("resnet8")
  with pytest.raises(
    FitnetsError, match=r"has 19 layers \(9 conv, 9 bn, 1 linear\) where the model has 31 .*--model"
  ) as e:
    import_teacher.import_pytorch(path, "resnet14", str(tmp_path / "t"))
  assert "\n" not in str(e.value)
  with pytest.raises(FitnetsError, match=r"its fc \(linear\) gives params kernel of shape \(64, 10\).*logits"):
    import_teacher.import_pytorch(path, "resnet8", str(tmp_path / "t"), num_classes=100)


def test_the_import_command_writes_a_teacher_that_a_run_distils_from(tmp_path):
  path, expected = fixture("resnet8")
  out = tmp_path / "teacher"
  command = [sys.executable, "-m", "fitnets_jax.import_teacher", "--from", "pytorch", "--model", "resnet8"]
  done = subprocess.run(
    command + ["--checkpoint", path, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr
  assert f"--config.teacher.checkpoint={out}" in done.stdout
  saved = fitnets_jax.load_model(str(out))
  assert saved.info["imported_from"]["format"] == "pytorch" and saved.info["num_classes"] == 10
  assert saved.info["preprocessing"]["kind"] == "standardize" and saved.info["dataset"] == "cifar100"
  # The saved variables are the checkpoint's: the network predicts torch's logits from the same input.
  x = expected["images"].transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(predict(saved.network, saved.variables, x)), expected["logits"], atol=1e-4)
  # A run distils from it: a 32×32 RGB, 10-class dataset, teacher.checkpoint pointing at the import.
  rng = np.random.default_rng(0)
  data = write_npz(
    tmp_path / "c.npz",
    train_images=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
    train_labels=rng.integers(0, 10, 64),
    test_images=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
    test_labels=rng.integers(0, 10, 16),
  )
  config = tiny_digits("kd", student=2, **{"dataset.name": "npz", "dataset.path": data, "eval_batch_size": 16})
  config.teacher.model, config.teacher.checkpoint, config.student.model = "resnet8", str(out), "resnet8"
  config.kd.loss, config.kd.alpha, config.kd.temperature = "hinton", 0.9, 4.0
  summary = fitnets_jax.run(config, str(tmp_path / "run"))
  assert summary["teacher"]["checkpoint"] == str(out) and summary["teacher"]["model"] == "resnet8"


def test_the_import_command_refuses_bad_arguments_in_one_paragraph(tmp_path):
  command = [sys.executable, "-m", "fitnets_jax.import_teacher", "--model", "resnet8", "--out", str(tmp_path / "t")]
  done = subprocess.run(
    command + ["--checkpoint", fixture("resnet8")[0], "--from", "tensorflow"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 2 and "--from='tensorflow': one of pytorch" in done.stderr, done.stderr
  assert "Traceback" not in done.stderr
  for kwargs, message in (
    (dict(checkpoint=str(tmp_path / "missing.pth")), "missing.pth: cannot be read"),
    (dict(dataset="svhn"), "--dataset='svhn': one of cifar100, imagenet"),
    (dict(model="vgg17"), "--model='vgg17' is not a known model"),
  ):
    arguments = {"checkpoint": fixture("resnet8")[0], "model": "resnet8", "out": str(tmp_path / "t"), **kwargs}
    with pytest.raises(FitnetsError, match=message) as e:
      import_teacher.import_pytorch(**arguments)
    assert "\n" not in str(e.value)
  assert not (tmp_path / "t").exists()  # refused before anything was written

"""Installing per platform: what the notebooks' first cell installs on Colab, and the packaging."""

import json
import os
import re
import shlex
import subprocess
import sys
import types

import pytest
from IPython.core.inputtransformer2 import TransformerManager

from fitnets_jax.tools import install

from conftest import ROOT

REQUIREMENTS, REPOSITORY = install.dependencies(ROOT)
NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(ROOT, "notebooks")) if f.endswith(".ipynb"))
# A Colab CPU runtime as it comes: its own tensorflow and tensorboard, a jax of the right minor
# version, an older flax, and no orbax, ml-collections or TFDS.
COLAB = {
  "tensorflow": "2.19.0",
  "tensorboard": "2.19.0",
  "jax": "0.10.4",
  "jaxlib": "0.10.4",
  "flax": "0.10.4",
  "numpy": "2.4.9",
  "matplotlib": "3.11.0",
  "scikit-learn": "1.9.3",
  "etils": "1.15.0",
}


def names(requirements):
  return sorted(re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in requirements)


def test_a_bare_python_gets_every_dependency_for_its_platform():
  wanted = install.plan(REQUIREMENTS, {})
  assert ("tensorflow-cpu" in names(wanted)) != ("tensorflow" in names(wanted))  # one TensorFlow, by platform
  assert {"jax", "flax", "optax", "orbax-checkpoint", "tensorboard", "matplotlib"} <= set(names(wanted))


def test_colab_keeps_its_tensorflow_and_a_compatible_jax():
  wanted = install.plan(REQUIREMENTS, COLAB)
  assert names(wanted) == ["flax", "ml-collections", "optax", "orbax-checkpoint", "tensorflow-datasets"]


@pytest.mark.parametrize("device,extra", [(None, "jax<"), ("cuda12", "jax[cuda12]<"), ("tpu", "jax[tpu]<")])
def test_an_incompatible_jax_is_replaced_by_the_runtime_s_build(device, extra):
  wanted = install.plan(REQUIREMENTS, dict(COLAB, jax="0.7.2"), device)
  assert [r for r in wanted if r.startswith("jax")] == [extra + "0.11,>=0.10.2"]


def setup_cell(notebook):
  with open(os.path.join(ROOT, "notebooks", notebook)) as f:
    return next(c for c in json.load(f)["cells"] if c["cell_type"] == "code")


def test_every_notebook_sets_up_alike_with_the_project_s_repository_address():
  sources = {"".join(setup_cell(n)["source"]) for n in NOTEBOOKS}
  assert len(sources) == 1
  assert f'REPOSITORY = "{REPOSITORY}"' in sources.pop()


class FakeColab:
  """get_ipython() of a Colab runtime: `!git clone` links the checkout, `%pip` is recorded."""

  def __init__(self, namespace):
    self.namespace, self.pip = namespace, []

  def expand(self, command):
    return re.sub(r"\{([^{}]+)\}", lambda m: str(eval(m.group(1), self.namespace)), command)

  def system(self, command):
    assert self.expand(command) == f"git clone --depth 1 --branch main {REPOSITORY} fitnets_jax_repo"
    os.symlink(ROOT, "fitnets_jax_repo")

  def run_line_magic(self, magic, line):
    assert magic == "pip"
    self.pip.append(self.expand(line))


def test_the_colab_cell_installs_the_package_and_only_what_the_runtime_lacks(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
  monkeypatch.setattr(install, "installed_versions", lambda: COLAB)
  monkeypatch.setattr(install, "accelerator", lambda: "cuda12")
  monkeypatch.setattr(sys, "path", list(sys.path))
  namespace = {}
  namespace["get_ipython"] = lambda: colab
  colab = FakeColab(namespace)
  exec(TransformerManager().transform_cell("".join(setup_cell(NOTEBOOKS[0])["source"])), namespace)
  assert colab.pip[0] == "install --no-deps -e fitnets_jax_repo"
  installed = shlex.split(colab.pip[1])
  assert installed[0] == "install" and names(installed[1:]) == names(install.plan(REQUIREMENTS, COLAB))
  assert not {"tensorflow", "tensorflow-cpu", "tensorboard", "jax", "jaxlib"} & set(names(installed[1:]))
  assert os.path.samefile(os.getcwd(), tmp_path / "fitnets_jax_repo")  # the clone (here a link to the checkout)


def test_the_package_and_its_configs_work_from_any_folder(tmp_path):
  """An installed package: `import fitnets_jax` and `--config configs/NAME.py` outside the checkout."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  probe = (
    "import fitnets_jax, os; from fitnets_jax import config; "
    "c = config.load('configs/svhn.py'); print(c.dataset.name, os.path.dirname(fitnets_jax.__file__))"
  )
  result = subprocess.run(
    [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ["svhn_cropped", os.path.join(ROOT, "fitnets_jax")]


@pytest.mark.parametrize(
  "device_files,platforms,idle",
  [
    (["/dev/nvidia0"], "", "an NVIDIA GPU"),
    (["/dev/accel0"], "", "a TPU"),
    (["/dev/nvidia0"], "cpu", None),  # the CPU on purpose
    ([], "", None),  # no accelerator
  ],
)
def test_a_gpu_or_tpu_left_idle_is_named_at_start(device_files, platforms, idle, monkeypatch, capsys):
  from fitnets_jax import cluster

  monkeypatch.setattr(cluster.glob, "glob", lambda pattern: [f for f in device_files if f[:-1] in pattern])
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert cluster.accelerator_left_idle() == idle
  cluster.warn_if_accelerator_idle()
  warning = capsys.readouterr().err
  assert (
    (f"this machine has {idle}, but JAX runs on the CPU" in warning and ".[cuda12]" in warning)
    if idle
    else warning == ""
  )
  assert cluster.describe().startswith(f"JAX {cluster.jax.__version__} on cpu: 4 device(s) (cpu) in 1 process(es)")

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


# The platforms the README's install commands promise: (pip --platform, --python-version, their markers).
# pip takes each --platform tag as given (a manylinux_2_28 machine also runs manylinux_2_17 wheels).
LINUX = ["manylinux2014_{}", "manylinux_2_17_{}", "manylinux_2_27_{}", "manylinux_2_28_{}"]
PLATFORMS = {
  "Linux x86-64, Python 3.11": ([t.format("x86_64") for t in LINUX], "3.11", {"platform_machine": "x86_64"}),
  "macOS on Apple silicon, Python 3.13": (["macosx_14_0_arm64"], "3.13", {"platform_machine": "arm64"}),
  "Linux on Arm, Python 3.12": ([t.format("aarch64") for t in LINUX], "3.12", {"platform_machine": "aarch64"}),
}


@pytest.mark.parametrize("where", list(PLATFORMS))
def test_every_pinned_requirement_has_a_wheel_on_each_promised_platform(where, tmp_path):
  """`make run` installs requirements.txt: each line whose marker holds there must have a wheel for the
  platform and Python (pip's --platform does not evaluate markers for the target, so they are evaluated
  here). Resolved against the package index (pip install --dry-run --no-deps): skipped without one."""
  from packaging.requirements import Requirement
  from packaging.specifiers import SpecifierSet

  platforms, python, markers = PLATFORMS[where]
  environment = {"python_version": python, "python_full_version": f"{python}.0", **markers}
  lines = [line.split(" #")[0].strip() for line in open(os.path.join(ROOT, "requirements.txt"))]
  wanted = [Requirement(line) for line in lines if line and not line.startswith("#")]
  concrete = [f"{r.name}{r.specifier}" for r in wanted if r.marker is None or r.marker.evaluate(environment)]
  assert ("tensorflow-cpu==2.21.0" in concrete) == (markers["platform_machine"] == "x86_64"), concrete
  with open(os.path.join(ROOT, "pyproject.toml")) as f:
    requires_python = SpecifierSet(re.search(r'^requires-python = "([^"]+)"', f.read(), flags=re.M).group(1))
  assert f"{python}.0" in requires_python and "3.14.0" not in requires_python  # TensorFlow 2.21: no 3.14 wheels
  command = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--only-binary=:all:", "--quiet"]
  command += [f"--platform={p}" for p in platforms] + ["--python-version", python, "--target", str(tmp_path), *concrete]
  result = subprocess.run(command, capture_output=True, text=True, timeout=600)
  if re.search(r"NewConnectionError|Network is unreachable|Temporary failure in name resolution", result.stderr):
    pytest.skip("the package index cannot be reached")
  assert result.returncode == 0, result.stderr[-3000:]

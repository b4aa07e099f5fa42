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
from packaging.requirements import Requirement

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
  """get_ipython() of a Colab runtime: `!git clone` links the checkout, `%pip` is recorded, and a
  `pip install -e` installs the package."""

  def __init__(self, namespace, installed):
    self.namespace, self.pip, self.clones, self.installed = namespace, [], 0, dict(installed)

  def expand(self, command):
    return re.sub(r"\{([^{}]+)\}", lambda m: str(eval(m.group(1), self.namespace)), command)

  def system(self, command):
    clone = os.path.abspath("fitnets_jax_repo")
    assert self.expand(command) == f"git clone --depth 1 --branch main {REPOSITORY} {clone}"
    os.symlink(ROOT, clone)
    self.clones += 1

  def run_line_magic(self, magic, line):
    assert magic == "pip"
    self.pip.append(self.expand(line))
    if line.startswith("install --no-deps -e"):
      assert self.expand(line) == f"install --no-deps -e {os.path.abspath('fitnets_jax_repo')}"
      self.installed["fitnets-jax"] = "0.2.0"


def run_setup_cell(monkeypatch, tmp_path, installed, requires=lambda name: [], imported=()):
  """Runs the notebooks' first cell as Colab would, in `tmp_path`; returns the fake runtime (and the
  SystemExit the cell raised, or None)."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
  monkeypatch.setattr(install, "accelerator", lambda: "cuda12")
  monkeypatch.setattr(install, "installed_requirements", requires)
  monkeypatch.setattr(sys, "path", list(sys.path))
  namespace = {"get_ipython": lambda: colab}
  colab = FakeColab(namespace, installed)
  monkeypatch.setattr(install, "installed_versions", lambda: colab.installed)
  real_decide = install.decide
  monkeypatch.setattr(install, "decide", lambda *a, imported=(): real_decide(*a, imported=set(imported_modules)))
  imported_modules = imported
  code = TransformerManager().transform_cell("".join(setup_cell(NOTEBOOKS[0])["source"]))

  def run():
    try:
      exec(code, namespace)
    except SystemExit as e:
      return e
    return None

  return colab, run


def test_the_colab_cell_installs_the_package_and_only_what_the_runtime_lacks_once(tmp_path, monkeypatch):
  colab, run = run_setup_cell(monkeypatch, tmp_path, COLAB)
  assert run() is None
  assert colab.pip[0] == f"install --no-deps -e {tmp_path / 'fitnets_jax_repo'}"
  installed = shlex.split(colab.pip[1])
  assert installed[0] == "install" and names(installed[1:]) == names(install.plan(REQUIREMENTS, COLAB))
  assert not {"tensorflow", "tensorflow-cpu", "tensorboard", "jax", "jaxlib", "numpy"} & set(names(installed[1:]))
  assert os.path.samefile(os.getcwd(), tmp_path / "fitnets_jax_repo")  # the clone (here a link to the checkout)
  lowest = lambda text: str(install._lowest(Requirement(text).specifier))  # a version pip could have picked
  colab.installed.update({re.match(r"[\w.-]+", r).group(0): lowest(r) for r in installed[1:]})
  assert run() is None  # the same cell again: no second clone, nothing installed twice, the same folder
  assert colab.clones == 1 and len(colab.pip) == 2
  assert os.path.samefile(os.getcwd(), tmp_path / "fitnets_jax_repo")


def test_a_runtime_whose_tensorflow_pins_an_older_numpy_is_upgraded_and_asked_to_restart(tmp_path, monkeypatch):
  """Colab as of TF 2.19: numpy 2.0.2 (TF pins numpy < 2.2) and jax 0.5.2. The numpy we need moves
  tensorflow with it, and since this Python imported numpy, the cell stops and asks for a restart."""
  runtime = dict(COLAB, numpy="2.0.2", jax="0.5.2", jaxlib="0.5.2")
  tf_requires = lambda name: ["numpy<2.2.0,>=1.26.0", "absl-py>=1.0.0"] if name == "tensorflow" else []
  colab, run = run_setup_cell(monkeypatch, tmp_path, runtime, tf_requires, imported={"numpy", "tensorflow"})
  stop = run()
  assert stop is not None and "Restart the runtime" in str(stop.code) and "numpy, tensorflow" in str(stop.code)
  installed = shlex.split(colab.pip[1])[1:]
  assert {"numpy", "tensorflow", "jax"} <= set(names(installed)) and "tensorflow-cpu" not in names(installed)
  assert "tensorflow<2.22,>=2.21" in installed and "jax[cuda12]<0.11,>=0.10.2" in installed


@pytest.mark.parametrize(
  "runtime,device,expected,note",
  [
    (dict(jax="0.12.1", jaxlib="0.12.1"), "cuda12", [], "jax 0.12.1 is newer than the versions tested"),
    (dict(jax="0.10.4", jaxlib="0.9.0"), "cuda12", ["jax[cuda12]==0.10.4"], "jaxlib 0.9.0 does not match jax 0.10.4"),
    (dict(jax="0.10.4", jaxlib=None), None, ["jaxlib==0.10.4"], "jaxlib is missing for jax 0.10.4"),
  ],
)
def test_a_newer_jax_is_kept_and_a_jaxlib_that_does_not_match_is_replaced(runtime, device, expected, note):
  installed = {k: v for k, v in dict(COLAB, **runtime).items() if v is not None}
  decision = install.decide(REQUIREMENTS, installed, device, lambda name: [])
  assert [r for r in decision.install if r.startswith("jax")] == expected
  assert any(n.startswith(note) for n in decision.notes), decision.notes


def test_the_installer_runs_in_a_bare_venv_without_packaging():
  """`python -m fitnets_jax.tools.install` before any dependency exists: pip's own `packaging` serves."""
  probe = (
    "import runpy, sys; sys.modules['packaging'] = None; sys.argv = ['install']; "
    "runpy.run_module('fitnets_jax.tools.install', run_name='__main__')"
  )
  result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


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

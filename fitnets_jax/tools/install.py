"""What to pip install on a machine that already has packages (Colab, a Cloud TPU VM image).

Colab ships `tensorflow`, a jax built for its runtime (CPU, GPU or TPU) and many of our other
dependencies. `decide` keeps every installed package that meets pyproject.toml's bounds, never puts
`tensorflow-cpu` beside an installed `tensorflow` (both own the `tensorflow/` package; Colab's
serves tf.data as well), keeps a jax newer than the tested ones rather than downgrade it, asks for
the accelerator's jax build when jax must change or its jaxlib does not match it, upgrades the
runtime's tensorflow when the numpy we need is outside the numpy it pins, and says when the running
Python has already imported a package it changes (then the runtime must restart). The notebooks'
first cell runs it from the fresh clone, before the package's dependencies exist, so this module
needs only the standard library and `packaging` (pip's own copy when it is not installed).

  python -m fitnets_jax.tools.install   # prints the pip arguments this machine needs
"""

import argparse
import glob
import importlib.metadata
import os
import shlex
import tomllib
from pathlib import Path
from typing import NamedTuple

try:
  from packaging.requirements import Requirement
  from packaging.utils import canonicalize_name
  from packaging.version import Version
except ImportError:  # a bare venv: pip's vendored copy
  from pip._vendor.packaging.requirements import Requirement
  from pip._vendor.packaging.utils import canonicalize_name
  from pip._vendor.packaging.version import Version

ROOT = str(Path(__file__).resolve().parents[2])


def dependencies(root=ROOT):
  """pyproject.toml's [project] dependencies and its repository address."""
  project = tomllib.loads(Path(root, "pyproject.toml").read_text())["project"]
  return project["dependencies"], project["urls"]["Repository"]


def installed_versions():
  """{canonical name: version} of the distributions this Python has."""
  return {
    canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions() if d.metadata["Name"]
  }


def accelerator():
  """'cuda12' on a machine with an NVIDIA GPU, 'tpu' on a TPU VM, else None (from the driver's files)."""
  if glob.glob("/dev/nvidia[0-9]*"):
    return "cuda12"
  if glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*") or os.environ.get("COLAB_TPU_ADDR"):
    return "tpu"
  return None


# Distribution → the module a running Python imports it as: changing one already imported needs a restart.
MODULES = {
  "numpy": "numpy",
  "tensorflow": "tensorflow",
  "tensorboard": "tensorboard",
  "jax": "jax",
  "jaxlib": "jaxlib",
  "ml-dtypes": "ml_dtypes",
  "protobuf": "google.protobuf",
  "scikit-learn": "sklearn",
  "matplotlib": "matplotlib",
}


class Decision(NamedTuple):
  install: list  # requirement strings for `pip install`
  restart: list  # distributions it changes that this Python has imported: restart the runtime after
  notes: list  # one line each: what is kept or changed, and why


def installed_requirements(name):
  """The requirement strings an installed distribution declares (importlib.metadata)."""
  try:
    return importlib.metadata.requires(name) or []
  except importlib.metadata.PackageNotFoundError:
    return []


def _lowest(specifier):
  """The lowest version a `>=`/`==` specifier admits (what pip could pick at the least), or None."""
  bounds = [Version(s.version) for s in specifier if s.operator in (">=", "==", "~=")]
  return max(bounds) if bounds else None


def decide(requirements, installed, device=None, requires=None, imported=()):
  """What pip must install so that `requirements` hold, given `installed` ({canonical name: version}),
  the machine's accelerator (`device`: 'cuda12', 'tpu' or None), `requires` (an installed
  distribution's declared requirements) and `imported` (the module names this Python has imported,
  e.g. sys.modules)."""
  requires = requires or installed_requirements
  wanted, notes, ours = {}, [], {}
  for text in requirements:
    requirement = Requirement(text)
    if requirement.marker is not None and not requirement.marker.evaluate():
      continue
    name = canonicalize_name(requirement.name)
    ours[name] = requirement
    if name in ("tensorflow-cpu", "tensorboard") and "tensorflow" in installed:
      continue  # the installed TensorFlow (and its TensorBoard) serves; a second one would overwrite it
    have = installed.get(name)
    if have is not None and requirement.specifier.contains(have, prereleases=True):
      continue
    if name == "jax" and have is not None and all(Version(have) > Version(s.version) for s in requirement.specifier):
      notes.append(f"jax {have} is newer than the versions tested ({requirement.specifier}): kept, not downgraded.")
      continue
    if name == "jax" and device:
      requirement.extras = {device}
    wanted[name] = requirement
  jax_version = str(_lowest(wanted["jax"].specifier)) if "jax" in wanted else installed.get("jax")
  jaxlib = installed.get("jaxlib")
  if (
    "jax" not in wanted
    and jax_version
    and (jaxlib is None or Version(jaxlib).release[:2] != Version(jax_version).release[:2])
  ):
    build = f"jax[{device}]=={jax_version}" if device else f"jaxlib=={jax_version}"
    notes.append(
      f"jaxlib {jaxlib or 'is missing'} {'does not match' if jaxlib else 'for'} jax {jax_version}: installing {build}."
    )
    wanted["jaxlib"] = Requirement(build)
  # A runtime's tensorflow pins numpy: when the numpy we need is outside that pin, tensorflow moves too.
  if "numpy" in wanted and "tensorflow" in installed:
    need = _lowest(wanted["numpy"].specifier)
    pins = [Requirement(r) for r in requires("tensorflow") if canonicalize_name(Requirement(r).name) == "numpy"]
    if need is not None and any(r.marker is None and not r.specifier.contains(need) for r in pins):
      tf = ours.get("tensorflow-cpu") or ours.get("tensorflow")
      wanted["tensorflow"] = Requirement(f"tensorflow{tf.specifier}")
      notes.append(
        f"numpy {need}+ is needed, outside the numpy that tensorflow {installed['tensorflow']} pins "
        f"({pins[0].specifier}): tensorflow moves to {tf.specifier} with it."
      )
  changed = [n for n in wanted if n in installed or n == "jaxlib"]
  restart = sorted({n for n in changed if MODULES.get(n, n.replace("-", "_")) in imported})
  return Decision([str(r) for r in wanted.values()], restart, notes)


def plan(requirements, installed, device=None, requires=None):
  """`decide(...)`'s requirement strings alone."""
  return decide(requirements, installed, device, requires).install


def main():
  argparse.ArgumentParser(
    prog="python -m fitnets_jax.tools.install", description=__doc__.splitlines()[0], epilog="Takes no arguments."
  ).parse_args()
  requirements, _ = dependencies()
  decision = decide(requirements, installed_versions(), accelerator())
  for note in decision.notes:
    print(f"# {note}")
  print(" ".join(shlex.quote(r) for r in decision.install))


if __name__ == "__main__":
  main()

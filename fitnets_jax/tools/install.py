"""What to pip install on a machine that already has packages (Colab, a Cloud TPU VM image).

Colab ships `tensorflow`, a jax built for its runtime (CPU, GPU or TPU) and many of our other
dependencies. `plan` keeps every installed package that meets pyproject.toml's bounds, never puts
`tensorflow-cpu` beside an installed `tensorflow` (both own the `tensorflow/` package; Colab's
serves tf.data as well), and asks for the accelerator's jax build when jax must change. The
notebooks' first cell runs it from the fresh clone, before the package's dependencies exist, so
this module needs only the standard library and `packaging` (which pip itself brings).

  python -m fitnets_jax.tools.install   # prints the pip arguments this machine needs
"""

import argparse
import glob
import importlib.metadata
import os
import shlex
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def plan(requirements, installed, device=None):
  """The requirement strings pip must install so that `requirements` hold, given `installed`
  ({canonical name: version}) and the machine's accelerator (`device`: 'cuda12', 'tpu' or None)."""
  wanted = []
  for text in requirements:
    requirement = Requirement(text)
    if requirement.marker is not None and not requirement.marker.evaluate():
      continue
    name = canonicalize_name(requirement.name)
    if name in ("tensorflow-cpu", "tensorboard") and "tensorflow" in installed:
      continue  # the installed TensorFlow (and its TensorBoard) serves; a second one would overwrite it
    have = installed.get(name)
    if have is not None and requirement.specifier.contains(have, prereleases=True):
      continue
    if name == "jax" and device:
      requirement.extras = {device}
    wanted.append(str(requirement))
  return wanted


def main():
  argparse.ArgumentParser(
    prog="python -m fitnets_jax.tools.install", description=__doc__.splitlines()[0], epilog="Takes no arguments."
  ).parse_args()
  requirements, _ = dependencies()
  print(" ".join(shlex.quote(r) for r in plan(requirements, installed_versions(), accelerator())))


if __name__ == "__main__":
  main()

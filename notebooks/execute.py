"""Runs the notebooks top to bottom in fresh kernels and stores their outputs, cleaned of noise.

  python notebooks/execute.py                          # every notebook, in order, in place
  python notebooks/execute.py 02_inside_fitnets.ipynb  # one of them

Each notebook runs from notebooks/ (its setup cell moves to the repository root). Their runs go
to runs/notebooks, or to $FITNETS_JAX_RUNS, so a later notebook resumes an earlier one's finished
runs instead of training them again. A failing cell raises (nbclient's CellExecutionError).
Cleaning: execution counts are renumbered, per-cell timing metadata is dropped, and this checkout's
absolute path is replaced by a relative one. `tests/test_notebooks.py` executes copies the same way.
"""

import os
import sys

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# TensorFlow's C++ start-up lines (absl log records with a time stamp and a process id).
NOISE = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ", "E0000 ")
NOTEBOOKS = ("01_quickstart.ipynb", "02_inside_fitnets.ipynb", "03_beyond_fitnets.ipynb")


def clean(nb):
  """`nb` without execution noise: counts 1, 2, … in order, no timing metadata, no absolute paths, no
  TensorFlow start-up log lines."""
  count = 0
  for cell in nb.cells:
    if cell.cell_type != "code":
      continue
    cell.metadata.pop("execution", None)
    count += 1
    cell.execution_count = count
    outputs = []
    for output in cell.get("outputs", []):
      if "execution_count" in output:
        output.execution_count = count
      if "text" in output:
        output.text = "".join(
          line
          for line in output.text.replace(ROOT + os.sep, "").replace(ROOT, ".").splitlines(keepends=True)
          if not line.startswith(NOISE)
        )
        if not output.text:
          continue
      outputs.append(output)
    cell.outputs = outputs
  nb.metadata.pop("widgets", None)
  return nb


def execute(source, target=None, runs=None, timeout=1200):
  """Executes notebook `source` (a path) in a fresh kernel from notebooks/ and writes it, cleaned, to
  `target` (default: in place). `runs` sets FITNETS_JAX_RUNS for the kernel. Returns the notebook."""
  nb = nbformat.read(source, as_version=4)
  env = dict(os.environ)
  if runs is not None:
    env["FITNETS_JAX_RUNS"] = runs
  # The kernel sees the machine's own devices, not a test harness's forced virtual ones.
  env["XLA_FLAGS"] = " ".join(
    f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")
  )
  client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": HERE}})
  client.execute(env=env)
  nbformat.write(clean(nb), target or source)
  return nb


def main(argv):
  for name in argv or NOTEBOOKS:
    path = os.path.join(HERE, os.path.basename(name))
    print(f"executing {os.path.relpath(path, ROOT)}", flush=True)
    execute(path)


if __name__ == "__main__":
  main(sys.argv[1:])

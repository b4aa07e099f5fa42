"""The notebooks run top to bottom (what CI executes), the quick start's results through the first of
them, and the committed notebooks carry clean outputs."""

import json
import os
import re
import sys

import nbformat
import numpy as np
import pytest

from fitnets_jax.tools import explore

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "notebooks"))
import execute  # noqa: E402  (notebooks/execute.py: the one way notebooks are run)


def read_summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


@pytest.mark.first  # the longest test: started first, so the other worker takes the rest
def test_every_notebook_runs_top_to_bottom_and_the_quickstart_beats_chance_widely(tmp_path):
  runs = str(tmp_path / "runs")
  for name in execute.NOTEBOOKS:  # in order: later notebooks resume the earlier ones' runs
    nb = execute.execute(os.path.join(execute.HERE, name), str(tmp_path / name), runs=runs)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, (name, errors)
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs), name

  # The first notebook ran configs/digits.py as the README's quick start does, through the Python API.
  fitnets = read_summary(os.path.join(runs, "fitnets"))
  assert fitnets["method"] == "fitnets" and fitnets["dataset"] == "digits"
  assert fitnets["teacher"]["test_accuracy"] > 0.9 and fitnets["student"]["test_accuracy"] > 0.85  # chance: 0.1
  assert list(fitnets["stages"]) == ["teacher", "hint", "kd"]
  for stage in fitnets["stages"].values():
    assert stage["steps"] > 0 and stage["wall_time_s"] > 0 and stage["images_per_s"] > 0
  assert fitnets["student"]["params"] < fitnets["teacher"]["params"] / 5
  with open(os.path.join(runs, "fitnets", "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert {r["stage"] for r in records} == {"teacher", "hint", "kd"}
  lambdas = [r["lambda"] for r in records if r["stage"] == "kd" and r["split"] == "train"]
  assert lambdas[0] > lambdas[-1] >= 1.0  # λ anneals 4 → 1 over the KD stage
  assert os.listdir(os.path.join(runs, "fitnets", "tensorboard"))
  kd = read_summary(os.path.join(runs, "kd"))  # reuses the FitNets run's teacher
  assert list(kd["stages"]) == ["kd"]
  assert kd["teacher"]["test_accuracy"] == pytest.approx(fitnets["teacher"]["test_accuracy"])
  assert kd["teacher"]["checkpoint"] == os.path.abspath(os.path.join(runs, "fitnets", "teacher"))
  scratch = read_summary(os.path.join(runs, "scratch"))
  assert scratch["teacher"] is None and list(scratch["stages"]) == ["scratch"]
  # The second notebook resumed the finished FitNets run instead of training it again.
  inside = nbformat.read(str(tmp_path / "02_inside_fitnets.ipynb"), as_version=4)
  assert "stage 'kd' finished" in "".join(
    o.get("text", "") for c in inside.cells if c.cell_type == "code" for o in c.outputs
  )

  # The third notebook's FSP heatmaps: the teacher's section-1 matrix against NumPy (Yim et al. eq. 1).
  fsp_run = explore.open_run(os.path.join(runs, "fsp"))
  images = explore.test_batch(fsp_run, 16)["image"]
  matrices = explore.fsp_matrices(fsp_run, images)
  assert list(matrices) == ["teacher", "student before", "student after"]
  assert [m.shape for m in matrices["teacher"]] == [(8, 8), (8, 16), (16, 32)]  # section input × output channels
  teacher = fsp_run.experiment.teacher
  first, second = teacher.sections[0]
  feats = explore.features(teacher, explore.teacher_variables(fsp_run), images, [first, second])
  a, b = np.float64(feats[first]), np.float64(feats[second])
  want = np.einsum("bhwi,bhwj->ij", a, b) / (a.shape[1] * a.shape[2] * len(images))
  np.testing.assert_allclose(matrices["teacher"][0], want, rtol=1e-4, atol=1e-5)
  gap = lambda label: sum(float(np.sum((t - s) ** 2)) for t, s in zip(matrices["teacher"], matrices[label]))
  assert gap("student after") < gap("student before") / 2  # the FSP stage pulled the student's flow to the teacher's


@pytest.mark.parametrize("name", execute.NOTEBOOKS)
def test_committed_notebooks_carry_clean_outputs_of_a_real_run(name):
  nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1))  # run top to bottom, once
  outputs = [o for c in code for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
  text = json.dumps(nb.cells)
  assert not re.search(r"(/work/|/home/|/tmp/|/root/|/content/|[A-Z]:\\\\)", text), "an absolute path"
  assert "InitializeLog" not in text and '"execution": {' not in text
  assert len(text) < 1_500_000
  assert "colab-badge.svg" in nb.cells[0].source and "pip" in code[0].source  # Colab: badge and install
  readme = open(os.path.join(ROOT, "README.md")).read()
  assert f"notebooks/{name}" in readme

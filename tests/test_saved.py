"""The distilled network as a deliverable: saved by a run, loaded to predict from raw images without the
dataset, exported (StableHLO, SavedModel) with its preprocessing, and timed against its teacher."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

import fitnets_jax
from fitnets_jax import FitnetsError, data, preprocessing, saved
from fitnets_jax.tools import export, report

from conftest import tiny_digits

_, _, TEST_IMAGES, TEST_LABELS = data.digits_arrays()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A finished FitNets run on digits: its teacher and student saved."""
  work = str(tmp_path_factory.mktemp("saved") / "run")
  summary = fitnets_jax.run(tiny_digits("fitnets", num_devices=1), work)
  return work, summary


def test_a_run_saves_its_student_and_teacher_to_predict_from_raw_images(run_dir):
  work, summary = run_dir
  # summary.json says what ran it and when: versions, the device kind, the first start, the end, the total.
  assert summary["environment"]["jax"] == jax.__version__ and summary["environment"]["backend"] == "cpu"
  assert summary["environment"]["device_kind"] and summary["environment"]["fitnets_jax"]
  assert summary["time"]["started"] <= summary["time"]["finished"]
  assert summary["time"]["wall_time_s"] == pytest.approx(
    sum(s["wall_time_s"] for s in summary["stages"].values()), abs=0.01
  )
  for role, record in (("student", summary["student"]), ("teacher", summary["teacher"])):
    folder = os.path.join(work, role)
    assert sorted(os.listdir(folder)) == ["SHA256SUMS", "network.json", "preprocessing.npz", "variables"]
    info = json.load(open(os.path.join(folder, "network.json")))
    assert (info["model"], info["num_classes"], info["image_shape"], info["dataset"]) == (
      record["model"],
      10,
      [8, 8, 1],
      "digits",
    )
    assert info["preprocessing"]["kind"] == "standardize" and info["test_accuracy"] == record["test_accuracy"]
    for path in (work, folder):  # the run's workdir with the role, or the network's own folder
      model = saved.load_model(path, role)
      logits = model.predict(TEST_IMAGES)
      assert logits.shape == (360, 10) and logits.dtype == np.float32
      # The run evaluated the same images through tf.data's preprocessing; predict does it in JAX.
      assert np.mean(logits.argmax(-1) == TEST_LABELS) == pytest.approx(record["test_accuracy"], abs=1 / 360)
  model = saved.load_model(work)
  np.testing.assert_allclose(model.predict(TEST_IMAGES[:1]), model.predict(TEST_IMAGES)[:1], rtol=1e-5, atol=1e-5)


def test_predict_needs_nothing_of_the_dataset_or_the_config(run_dir, tmp_path, monkeypatch):
  work, _ = run_dir
  alone = str(tmp_path / "student")
  shutil.copytree(os.path.join(work, "student"), alone)  # the folder alone, elsewhere
  expected = saved.load_model(work).predict(TEST_IMAGES)

  def no_data(*args, **kwargs):
    raise AssertionError("the dataset was read")

  monkeypatch.setattr(data, "load", no_data)
  monkeypatch.setattr(data, "digits_arrays", no_data)
  np.testing.assert_array_equal(saved.load_model(alone).predict(TEST_IMAGES), expected)


def test_a_run_on_numpy_arrays_through_the_python_api(tmp_path):
  x, y, xt, yt = data.digits_arrays()
  config = tiny_digits("scratch", num_devices=1, eval_batch_size=100, **{"dataset.name": "arrays"})
  summary = fitnets_jax.run(config, str(tmp_path / "arrays"), data.Arrays(x[:640], y[:640], xt[:100], yt[:100]))
  assert summary["dataset"] == "arrays"
  model = fitnets_jax.load_model(str(tmp_path / "arrays"))
  assert np.mean(model.predict(xt[:100]).argmax(-1) == yt[:100]) == pytest.approx(
    summary["student"]["test_accuracy"], abs=0.01
  )


def test_bad_inputs_to_load_and_predict_are_one_paragraph(run_dir, tmp_path):
  work, _ = run_dir
  model = saved.load_model(work)
  with pytest.raises(
    FitnetsError, match=r"takes a batch of raw images of shape \(batch, 8, 8, 1\).*got shape \(8, 8, 1\)"
  ):
    model.predict(TEST_IMAGES[0])
  with pytest.raises(FitnetsError, match=r"takes raw uint8 images .* got dtype float32"):
    model.predict(TEST_IMAGES.astype(np.float32))
  with pytest.raises(FitnetsError, match=r"holds no saved network 'net3'.*It holds: student, teacher"):
    saved.load_model(work, "net3")
  with pytest.raises(FitnetsError, match=r"has no exit heads: only a network trained with method=byot"):
    model.predict_exits(TEST_IMAGES)


def edited_copy(work, tmp_path, name, edit, resign=False):
  """A copy of the run's student folder with `edit(folder)` applied; with `resign`, SHA256SUMS is written
  again, as someone who edits consistently would (the edit then has to be caught by the other checks)."""

  folder = str(tmp_path / name)
  shutil.copytree(os.path.join(work, "student"), folder)
  edit(folder)
  if resign:
    saved.write_manifest(folder)
  return folder


def edit_json(folder, change):
  path = os.path.join(folder, "network.json")
  info = json.load(open(path))
  change(info)
  json.dump(info, open(path, "w"))


def test_every_file_of_a_saved_network_is_verified_before_it_is_used(run_dir, tmp_path):
  """network.json and preprocessing.npz are under SHA256SUMS: a changed preprocessing kind or a shifted
  mean would otherwise give logits off by tens; an npz of pickled objects, a model renamed or resized,
  and a model of an unknown module are refused even when SHA256SUMS was rewritten to match."""
  work, _ = run_dir

  def shift_mean(folder):
    arrays = dict(np.load(os.path.join(folder, "preprocessing.npz")))
    arrays["mean"] = arrays["mean"] + 0.5
    np.savez(os.path.join(folder, "preprocessing.npz"), **arrays)

  kind = lambda f: edit_json(f, lambda info: info["preprocessing"].update(kind="none"))
  for name, edit in (("kind", kind), ("mean", shift_mean)):
    folder = edited_copy(work, tmp_path, name, edit)
    with pytest.raises(FitnetsError, match=r"differs from the file that was saved .*SHA256SUMS"):
      fitnets_jax.load_model(folder)
  pickled = lambda f: np.savez(os.path.join(f, "preprocessing.npz"), mean=np.array([{"a": 1}], object), std=[1.0])
  folder = edited_copy(work, tmp_path, "pickled", pickled, resign=True)
  with pytest.raises(FitnetsError, match=r"preprocessing.npz cannot be read as plain arrays"):
    fitnets_jax.load_model(folder)
  renamed = lambda f: edit_json(f, lambda info: info.update(model="digits_student_bn"))
  folder = edited_copy(work, tmp_path, "renamed", renamed, resign=True)
  with pytest.raises(FitnetsError, match=r"the saved variables do not fit the model 'digits_student_bn'"):
    fitnets_jax.load_model(folder)
  resized = lambda f: edit_json(f, lambda info: info.update(num_classes=12))
  folder = edited_copy(work, tmp_path, "resized", resized, resign=True)
  with pytest.raises(FitnetsError, match=r"\['params'\]\['logits'\]\['bias'\] has shape \(10,\) saved but \(12,\)"):
    fitnets_jax.load_model(folder)
  # The CLI tools read through the same checks: one paragraph, exit 2.
  folder = edited_copy(work, tmp_path, "cli", shift_mean)
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "fitnets_jax.tools.export",
      "--workdir",
      folder,
      "--format",
      "stablehlo",
      "--out",
      str(tmp_path / "x"),
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 2 and "differs from the file that was saved" in result.stderr
  assert "Traceback" not in result.stderr


def test_a_saved_network_never_makes_load_model_import_code_it_names(run_dir, tmp_path):
  work, _ = run_dir
  foreign = lambda f: edit_json(f, lambda info: info.update(model="antigravity_for_tests:factory"))
  folder = edited_copy(work, tmp_path, "foreign", foreign, resign=True)
  with pytest.raises(FitnetsError, match=r"module 'antigravity_for_tests' is not imported; loading it would run"):
    fitnets_jax.load_model(folder)
  assert "antigravity_for_tests" not in sys.modules
  with pytest.raises(FitnetsError, match=r"antigravity_for_tests:factory.*ModuleNotFoundError"):
    fitnets_jax.load_model(folder, trust_code=True)  # trusted: imported (here it does not exist)


@pytest.mark.parametrize(
  "kind,overrides",
  [
    ("standardize", {}),
    ("gcn_zca", {"zca_epsilon": 0.1}),
    ("gcn_lcn", {"gcn_scale": 1.0}),
    ("gcn_lcn", {"gcn_scale": 1.0, "lcn_all_channels": True}),
  ],
)
def test_the_preprocessing_in_jax_matches_tf_data_and_survives_saving(kind, overrides, tmp_path):
  from fitnets_jax.config import base_config

  cfg = base_config().dataset
  cfg.update(dict(preprocess=kind, **overrides))
  images = np.random.default_rng(1).integers(0, 256, (16, 9, 9, 3), dtype=np.uint8)
  fitted = preprocessing.fit(cfg, images)
  fitted.save(str(tmp_path))
  loaded = preprocessing.Preprocessing.load(str(tmp_path), json.loads(json.dumps(fitted.describe())))
  in_tf = np.asarray(fitted.tf(tf.constant(images.astype(np.float32) / 255.0)))
  np.testing.assert_allclose(np.asarray(loaded.images_to_input(images)), in_tf, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_exports_reload_and_give_the_models_logits(run_dir, tmp_path, fmt):
  work, _ = run_dir
  out = str(tmp_path / fmt)
  export.export(work, "student", fmt, out)
  reference = saved.load_model(work).predict(TEST_IMAGES)
  if fmt == "stablehlo":
    exported = jax.export.deserialize(bytearray(open(os.path.join(out, export.STABLEHLO_FILE), "rb").read()))
    call = lambda x: np.asarray(exported.call(x))
  else:
    loaded = tf.saved_model.load(out)
    call = lambda x: next(iter(loaded.signatures["serving_default"](images=tf.constant(x)).values())).numpy()
  for batch in (TEST_IMAGES, TEST_IMAGES[:1]):  # any batch size: the batch dimension is symbolic
    np.testing.assert_allclose(call(batch), reference[: len(batch)], rtol=1e-5, atol=1e-5)
  assert json.load(open(os.path.join(out, "network.json")))["model"] == "digits_student"


def test_export_refuses_bad_arguments(run_dir, tmp_path):
  work, _ = run_dir
  with pytest.raises(FitnetsError, match=r"--format='onnx' is not valid; choose one of: 'stablehlo', 'savedmodel'"):
    export.export(work, "student", "onnx", str(tmp_path / "x"))
  with pytest.raises(FitnetsError, match=r"--platforms='cuda' applies to --format=stablehlo"):
    export.export(work, "student", "savedmodel", str(tmp_path / "x"), "cuda")
  assert not os.path.exists(tmp_path / "x")


def test_the_report_measures_the_speed_up_of_saved_networks(run_dir, tmp_path):
  work, _ = run_dir
  rows = report.write([work], str(tmp_path / "report"), curves=False, speed_batches=(1, 32))
  teacher, student = rows
  assert [m["batch"] for m in student["measured"]] == [1, 32] and all(m["speedup"] > 0 for m in student["measured"])
  assert [m["speedup"] for m in teacher["measured"]] == [1.0, 1.0]  # the teacher against itself
  text = open(tmp_path / "report" / "report.md").read()
  assert "measured speed-up (batch 1 / 32)" in text and "speed-up (MACs)" in text

"""TFLite/LiteRT export: round trips per quantization, raw-pixel input, sidecars, errors, QAT.

One tiny real run (MNIST, 256 training examples, 2 epochs, two student modes)
is trained once per session and every test exports from it.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from export import calibration
from export import tflite
from export import verify as verify_lib
from tests.support import litert_run
from tests.conftest import ROOT

# Under pytest-xdist (`-n`) this file's tests stay on one worker: they share trained runs in
# session fixtures that each worker would otherwise build again.
pytestmark = pytest.mark.xdist_group("test_export")

MODES = ("conventional", "significance")


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
  """A finished tiny run: teacher, significance, run_config.json, two students."""
  from tf_srkd.run import config as config_lib  # pylint: disable=import-outside-toplevel
  from tf_srkd.run import pipeline  # pylint: disable=import-outside-toplevel

  out = str(tmp_path_factory.mktemp("export_run") / "run")
  config = config_lib.Config.of(dataset="mnist", epochs=2, train_examples=256, batch_size=64,
                                eval_batch_size=256, verbose=0, mlflow=False, modes=MODES,
                                output_dir=out)
  pipeline.run(config)
  return out


@pytest.fixture(scope="session")
def student_path(run_dir):
  return os.path.join(run_dir, "students", "conventional", "model.keras")


@pytest.fixture(scope="session")
def test_split():
  return tflite.load_split("mnist", "test", 0)


# -- round trips -------------------------------------------------------------------------


# int8 (calibration) and float16 take the longest: the fast tier keeps float32 and dynamic.
@pytest.mark.parametrize("quantization", [
    pytest.param(q, marks=pytest.mark.slow) if q in ("int8", "float16") else q
    for q in tflite.QUANTIZATIONS])
def test_each_quantization_round_trips_in_litert(student_path, test_split, tmp_path,
                                                 quantization):
  output = str(tmp_path / f"student_{quantization}.tflite")
  result = tflite.export_model(student_path, output, quantization)

  assert os.path.isfile(output)
  assert os.path.getsize(output) == result["size_bytes"] > 0
  interpreter = litert_run.load(output)
  (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
  assert list(inp["shape"]) == [1, 28, 28, 1] and inp["dtype"] == np.uint8
  assert list(out["shape"]) == [1, 10]
  assert interpreter.get_signature_list() == {
      "serving_default": {"inputs": ["image"], "outputs": ["probabilities"]}}

  v = result["verification"]
  assert v["test_examples"] == test_split.size == 10000  # The whole test split.
  assert v["num_threads"] == 1 and v["latency_ms_median"] > 0
  assert abs(v["keras_test_accuracy"] - v["tflite_test_accuracy"]) < 0.03
  probabilities = litert_run.run(interpreter, test_split.images[:200])
  np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=0.05)
  if quantization == "float32":
    assert v["identical_argmax"] and v["argmax_agreement"] == 1.0
    assert v["max_abs_probability_diff"] < 1e-5
    assert out["dtype"] == np.float32 and result["method"] == "none"
  elif quantization == "int8":
    assert result["full_integer"] and result["method"] == "ptq"
    assert out["dtype"] == np.int8
    in_scale, in_zero = inp["quantization"]
    assert in_zero == 0 and abs(in_scale * 255 - 1) < 1e-6  # uint8 input = raw pixels.
    assert result["output"]["quantization"] == {"scale": 1 / 256, "zero_point": -128}
    assert v["argmax_agreement"] > 0.9
    assert result["calibration"]["method"] == "random"
    assert result["calibration"]["num_samples"] == tflite.DEFAULT_CALIBRATION_SAMPLES
  else:
    assert out["dtype"] == np.float32 and v["argmax_agreement"] > 0.98


def test_raw_uint8_input_gives_the_keras_class_on_the_float_path(student_path, test_split,
                                                                  tmp_path):
  import keras  # pylint: disable=import-outside-toplevel

  output = str(tmp_path / "float.tflite")
  tflite.export_model(student_path, output, "float32", test_examples=500)
  images = test_split.images[:500]
  assert images.dtype == np.uint8
  # Raw pixels, no scaling by the caller.
  probabilities = litert_run.run(litert_run.load(output), images)
  model = keras.models.load_model(student_path, compile=False)
  logits = np.asarray(model(images.astype(np.float32) / 255.0, training=False))
  np.testing.assert_array_equal(probabilities.argmax(-1), logits.argmax(-1))
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(probabilities, expected / expected.sum(-1, keepdims=True),
                             atol=1e-5)


def test_labels_and_sidecar_are_written(run_dir, student_path, tmp_path):
  from tf_srkd.data import datasets  # pylint: disable=import-outside-toplevel

  output = str(tmp_path / "out" / "model.tflite")
  result = tflite.export_model(student_path, output, "int8", test_examples=300)
  with open(tmp_path / "out" / "labels.txt", encoding="utf-8") as f:
    assert f.read().splitlines() == list(datasets.get_dataset_spec("mnist").class_names)
  with open(tmp_path / "out" / "model.json", encoding="utf-8") as f:
    sidecar = json.load(f)
  assert sidecar == {k: v for k, v in result.items() if k != "paths"}
  assert sidecar["input"]["dtype"] == "uint8" and sidecar["input"]["shape"] == [1, 28, 28, 1]
  assert sidecar["input"]["quantization"]["zero_point"] == 0
  assert sidecar["output"]["dtype"] == "int8" and sidecar["output"]["name"] == "probabilities"
  assert sidecar["class_names"] == [str(d) for d in range(10)]
  assert sidecar["labels_file"] == "labels.txt"
  source = sidecar["source"]
  assert source["run_dir"] == os.path.abspath(run_dir)
  assert source["mode"] == "conventional" and source["role"] == "student"
  assert source["architecture"] == "lenet5_half" and source["dataset"] == "mnist"
  assert source["run_config"]["train_examples"] == 256
  for key in ("tflite_test_accuracy", "keras_test_accuracy", "argmax_agreement",
              "latency_ms_median", "size_bytes"):
    assert key in sidecar["verification"]
  assert sidecar["verification"]["size_bytes"] == os.path.getsize(output)
  assert sorted(os.listdir(tmp_path / "out")) == ["labels.txt", "model.json", "model.tflite"]


def test_export_run_writes_every_student(run_dir):
  results = tflite.export_run(run_dir, ["float32", "int8"], test_examples=300)
  assert sorted(results) == sorted(MODES)
  for mode in MODES:
    directory = os.path.join(run_dir, "students", mode, "tflite")
    assert sorted(os.listdir(directory)) == [
        "labels.txt", "model_float32.json", "model_float32.tflite", "model_int8.json",
        "model_int8.tflite"]
    assert results[mode]["int8"]["source"]["mode"] == mode
    assert results[mode]["int8"]["size_bytes"] <= 0.30 * results[mode]["float32"]["size_bytes"]


# -- calibration ----------------------------------------------------------------------------


def test_significant_calibration_uses_the_teachers_top_samples(run_dir, student_path, tmp_path):
  significance = np.load(os.path.join(run_dir, "teacher", "significance.npy"))
  result = tflite.export_model(student_path, str(tmp_path / "m.tflite"), "int8",
                               calibration="significant", num_calibration_samples=16,
                               test_examples=300)
  block = result["calibration"]
  assert block["method"] == "significant" and block["num_samples"] == 16
  top = np.sort(significance)[::-1][:16]
  assert block["mean_significance"] == pytest.approx(float(top.mean()), rel=1e-6)
  assert result["full_integer"]


def test_calibration_indices():
  significance = np.array([0.1, 0.9, 0.5, 0.9, 0.0], np.float32)
  np.testing.assert_array_equal(
      tflite.calibration_indices("significant", 3, 5, significance), [1, 3, 2])
  a = tflite.calibration_indices("random", 4, 100, seed=3)
  assert len(set(a.tolist())) == 4 and a.max() < 100
  np.testing.assert_array_equal(a, tflite.calibration_indices("random", 4, 100, seed=3))
  assert len(tflite.calibration_indices("random", 500, 100)) == 100
  with pytest.raises(tflite.ExportError, match="significance has 5 entries"):
    tflite.calibration_indices("significant", 3, 6, significance)
  with pytest.raises(tflite.ExportError, match="--calibration=best"):
    tflite.calibration_indices("best", 3, 5)


def test_range_anchor_only_when_the_pixels_do_not_span_0_to_255():
  full = np.zeros((2, 4, 4, 1), np.uint8)
  full[1, 0, 0, 0] = 255
  same, added = calibration.with_range_anchor(full)
  assert not added and same is full
  dim = (full // 2) + 1
  anchored, added = calibration.with_range_anchor(dim)
  assert added and anchored.shape[0] == 3 and anchored.min() == 0 and anchored.max() == 255
  np.testing.assert_array_equal(anchored[:2], dim)


# -- errors: clear message, nothing written -------------------------------------------------------


def test_missing_model_is_a_clear_error(tmp_path):
  output = tmp_path / "out" / "m.tflite"
  with pytest.raises(tflite.ExportError, match="no such file"):
    tflite.export_model(str(tmp_path / "nope" / "model.keras"), str(output), "float32")
  assert not (tmp_path / "out").exists()


def test_unknown_quantization_is_a_clear_error(student_path, tmp_path):
  with pytest.raises(tflite.ExportError, match="--quantization=int4: unknown"):
    tflite.export_model(student_path, str(tmp_path / "m.tflite"), "int4")
  with pytest.raises(tflite.ExportError, match="--quantization=bf16"):
    tflite.export_all(student_path, str(tmp_path / "all"), ["float32", "bf16"])
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", ["regressor", "wrong_input", "not_a_model"])
def test_non_classifier_model_is_a_clear_error(tmp_path, kind):
  import keras  # pylint: disable=import-outside-toplevel

  path = str(tmp_path / "model.keras")
  if kind == "not_a_model":
    with open(path, "wb") as f:
      f.write(b"not a zip")
    match = "could not load a Keras model"
  else:
    shape, units = ((28, 28, 1), 1) if kind == "regressor" else ((32, 32, 3), 10)
    model = keras.Sequential([keras.Input(shape), keras.layers.Flatten(),
                              keras.layers.Dense(units)])
    model.save(path)
    match = "not a mnist classifier"
  output = tmp_path / "out" / "m.tflite"
  with pytest.raises(tflite.ExportError, match=match):
    tflite.export_model(path, str(output), "float32", dataset="mnist")
  assert not (tmp_path / "out").exists()


def test_bare_model_needs_a_dataset(run_dir, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel

  bare = str(tmp_path / "bare.keras")
  shutil.copy(os.path.join(run_dir, "students", "conventional", "model.keras"), bare)
  with pytest.raises(tflite.ExportError, match="pass --dataset"):
    tflite.export_model(bare, str(tmp_path / "m.tflite"), "float32")
  with pytest.raises(tflite.ExportError, match="--calibration=significant: needs"):
    tflite.export_model(bare, str(tmp_path / "m.tflite"), "int8", dataset="mnist",
                        calibration="significant")
  result = tflite.export_model(bare, str(tmp_path / "m.tflite"), "dynamic", dataset="mnist",
                               test_examples=200)
  assert result["source"]["role"] == "model" and result["source"]["run_dir"] is None


def test_failed_verification_writes_nothing(student_path, tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise tflite.ExportError("verification broke")

  monkeypatch.setattr(verify_lib, "verify", broken)
  with pytest.raises(tflite.ExportError, match="verification broke"):
    tflite.export_model(student_path, str(tmp_path / "out" / "m.tflite"), "float32",
                        test_examples=100)
  assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


@pytest.mark.slow
def test_cli_round_trip_and_error(student_path, tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  output = tmp_path / "cli" / "student.tflite"
  ok = subprocess.run([sys.executable, "-m", "export.tflite", f"--model={student_path}",
                       "--quantization=float16", f"--output={output}", "--test_examples=200"],
                      cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "float16" in ok.stdout and output.exists()
  assert (tmp_path / "cli" / "student.json").exists()
  bad = subprocess.run([sys.executable, "-m", "export.tflite", f"--model={student_path}",
                        "--quantization=int3", f"--output={tmp_path / 'bad' / 'x.tflite'}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  assert bad.returncode == 2
  assert "error: --quantization=int3: unknown" in bad.stderr
  assert not (tmp_path / "bad").exists()


# -- MLflow ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_model_uri_and_logging_into_the_run(student_path, tmp_path):
  """A student logged as the pipeline does (`mlflow.keras.log_model(name="model")`, the
  dataset as a param, the mode as a tag) exports from `runs:/<id>/model` and the numbers
  and files land in that run: in the store the export is given, not MLflow's global one."""
  import keras  # pylint: disable=import-outside-toplevel
  import mlflow  # pylint: disable=import-outside-toplevel

  from tf_srkd.tracking import mlflow_store  # pylint: disable=import-outside-toplevel

  uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
  with mlflow_store.fluent_tracking_uri(uri):
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("export-test",
                                          artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment, tags={"mode": "conventional"}) as run:
      mlflow.log_param("dataset", "mnist")
      mlflow.keras.log_model(keras.models.load_model(student_path, compile=False), name="model")
  run_id = run.info.run_id
  assert mlflow.get_tracking_uri() != uri
  result = tflite.export_model(f"runs:/{run_id}/model", str(tmp_path / "m.tflite"), "dynamic",
                               test_examples=200, mlflow_run_id=run_id, tracking_uri=uri)
  assert result["mlflow_logged"]
  assert result["source"]["mlflow_run_id"] == run_id and result["source"]["mode"] == "conventional"
  client = mlflow.MlflowClient(tracking_uri=uri)
  metrics = client.get_run(run_id).data.metrics
  assert metrics["tflite_dynamic_accuracy"] == result["verification"]["tflite_test_accuracy"]
  assert metrics["tflite_dynamic_size_bytes"] == result["size_bytes"]
  logged = sorted(a.path for a in client.list_artifacts(run_id, "tflite"))
  assert logged == ["tflite/labels.txt", "tflite/m.json", "tflite/m.tflite"]


# -- tfmot QAT ------------------------------------------------------------------------------


@pytest.mark.slow
def test_importing_export_does_not_import_tfmot():
  code = ("import os, sys; import export, export.tflite, export.qat; "
          "assert 'tensorflow_model_optimization' not in sys.modules, 'tfmot imported'; "
          "assert 'TF_USE_LEGACY_KERAS' not in os.environ, 'legacy keras switched on'")
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  env["PYTHONPATH"] = ROOT
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_tf_keras_twin_has_identical_outputs(student_path, test_split):
  import tf_keras  # pylint: disable=import-outside-toplevel

  from export import qat  # pylint: disable=import-outside-toplevel

  student = tflite.load_student(student_path)
  twin, diff = qat.tf_keras_twin(student, tf_keras, test_split.images[:256])
  assert diff == 0.0
  assert isinstance(twin, tf_keras.Model) and twin.count_params() == student.model.count_params()


@pytest.mark.slow
def test_qat_export_in_a_subprocess(run_dir, tmp_path):
  student = os.path.join(run_dir, "students", "significance", "model.keras")
  output = str(tmp_path / "qat" / "model_int8_qat.tflite")
  result = tflite.export_qat(student, output, qat_epochs=1, test_examples=500)
  assert result["quantization"] == "int8" and result["method"] == "qat"
  assert result["full_integer"]
  assert result["input"]["dtype"] == "uint8" and result["input"]["quantization"]["zero_point"] == 0
  assert abs(result["input"]["quantization"]["scale"] * 255 - 1) < 1e-6
  assert result["qat"]["tf_keras_twin_max_abs_diff"] == 0.0
  assert result["qat"]["weight_by_significance"] and result["qat"]["epochs"] == 1
  assert result["qat"]["train_examples"] == 256
  assert result["verification"]["test_examples"] == 500
  interpreter = litert_run.load(output)
  assert interpreter.get_output_details()[0]["dtype"] == np.int8
  assert sorted(os.listdir(tmp_path / "qat")) == ["labels.txt", "model_int8_qat.json",
                                                  "model_int8_qat.tflite"]


@pytest.mark.slow
def test_qat_rejects_a_model_outside_a_run(run_dir, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel

  bare = str(tmp_path / "bare.keras")
  shutil.copy(os.path.join(run_dir, "students", "conventional", "model.keras"), bare)
  with pytest.raises(tflite.ExportError, match="QAT needs a student inside a run directory"):
    tflite.export_qat(bare, str(tmp_path / "q" / "m.tflite"), dataset="mnist")
  assert not (tmp_path / "q").exists()

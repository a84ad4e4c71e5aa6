"""Export with splits on disk (`--max_in_memory_mb`): calibration reads only its rows,
verification reads the test split in chunks, same file and numbers as from memory."""

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


@pytest.mark.parametrize("method", calibration.CALIBRATIONS)
def test_calibration_reads_only_its_rows_from_a_split_on_disk(method, monkeypatch):
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import datasets  # pylint: disable=import-outside-toplevel

  spec = datasets.get_dataset_spec("mnist")
  memory = tflite.load_split(spec, "train", 200)
  stored = tflite.load_split(spec, "train", 200, max_in_memory_mb=0)
  assert isinstance(memory.images, np.ndarray) and data.is_stored(stored.images)
  read = []
  read_rows = stored.images.read_rows
  monkeypatch.setattr(stored.images, "read_rows", lambda ids: read.append(len(ids)) or
                      read_rows(ids))
  monkeypatch.setattr(stored.images, "read_range", None)  # Never the whole split.
  significance = np.random.default_rng(1).random(200).astype(np.float32)
  a = calibration.calibration_set(spec, memory, method, 50, 3, significance)
  b = calibration.calibration_set(spec, stored, method, 50, 3, significance)
  assert read == [50]
  np.testing.assert_array_equal(a[0], b[0])
  assert a[1] == b[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A run directory (200 training examples) with an untrained student and a significance:
  what an export reads, without training anything."""
  import keras  # pylint: disable=import-outside-toplevel

  from tf_srkd.storage import io_utils  # pylint: disable=import-outside-toplevel
  from tf_srkd.storage import layout  # pylint: disable=import-outside-toplevel

  run = layout.RunDir(str(tmp_path_factory.mktemp("tiny_run")))
  io_utils.write_json(run.run_config, {"dataset": "mnist", "train_examples": 200})
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, strides=2),
                            keras.layers.Flatten(), keras.layers.Dense(10)])
  os.makedirs(run.student("conventional").path)
  io_utils.save_keras(run.student("conventional").model, model)
  os.makedirs(run.teacher.path)
  io_utils.save_npy(run.teacher.significance,
                    np.random.default_rng(0).random(200).astype(np.float32))
  return run


def test_export_from_splits_on_disk_equals_export_from_memory(tiny_run, tmp_path, monkeypatch):
  """max_in_memory_mb=0: calibration and verification read the splits from disk (the test
  split in chunks) and give the same file and the same numbers."""
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import streaming  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(verify_lib, "CHUNK_ROWS", 64)  # 300 test images: 5 chunks, the last short.
  ranges = []
  read_range = streaming.StoredArray.read_range
  monkeypatch.setattr(streaming.StoredArray, "read_range", lambda self, start, stop: (
      ranges.append((int(start), int(stop))) or read_range(self, start, stop)))

  def whole(*_):
    raise AssertionError("a split on disk was read whole")

  monkeypatch.setattr(streaming.StoredArray, "__array__", whole)
  seen = []
  real_verify, real_calibration = verify_lib.verify, calibration.calibration_set
  monkeypatch.setattr(verify_lib, "verify", lambda tflite_bytes, images, *args, **kwargs: (
      seen.append(("test", images)) or real_verify(tflite_bytes, images, *args, **kwargs)))
  monkeypatch.setattr(calibration, "calibration_set", lambda spec, train, *args: (
      seen.append(("train", train.images)) or real_calibration(spec, train, *args)))
  model = tiny_run.student("conventional").model
  results = {}
  for name, limit in (("memory", None), ("disk", 0)):
    results[name] = tflite.export_model(model, str(tmp_path / name / "m.tflite"), "int8",
                                        calibration="significant", test_examples=300,
                                        max_in_memory_mb=limit)
  assert [(split, data.is_stored(images)) for split, images in seen] == [
      ("train", False), ("test", False), ("train", True), ("test", True)]
  assert len(seen[1][1]) == len(seen[3][1]) == 300
  # Keras' outputs in one inference batch (512 > 300 rows), then verification by chunks.
  assert ranges == [(0, 300), (0, 64), (64, 128), (128, 192), (192, 256), (256, 300)]
  memory, disk = results["memory"], results["disk"]
  assert (tmp_path / "memory/m.tflite").read_bytes() == (tmp_path / "disk/m.tflite").read_bytes()
  assert memory["calibration"] == disk["calibration"]
  timing = ("latency_ms_median", "latency_ms_p90")
  assert ({k: v for k, v in memory["verification"].items() if k not in timing}
          == {k: v for k, v in disk["verification"].items() if k not in timing})
  # And the same as running the file over those images here, one by one.
  test = tflite.load_split("mnist", "test", 300)
  interpreter = litert_run.load(str(tmp_path / "disk/m.tflite"))
  predicted = litert_run.run(interpreter, test.images).argmax(-1)
  assert disk["verification"]["tflite_test_accuracy"] == float(np.mean(predicted == test.labels))
  assert disk["verification"]["test_examples"] == 300


def test_the_runs_export_passes_its_max_in_memory_mb(tmp_path, monkeypatch):
  """`--export` (tf_srkd.main) exports with the run's --max_in_memory_mb."""
  from export import api  # pylint: disable=import-outside-toplevel
  from tf_srkd.run import config as config_lib  # pylint: disable=import-outside-toplevel
  from tf_srkd.cli import main as main_lib  # pylint: disable=import-outside-toplevel
  from tf_srkd.tracking import base as tracking  # pylint: disable=import-outside-toplevel

  calls = []
  monkeypatch.setattr(api, "export_run", lambda *args, **kwargs: calls.append(kwargs) or {})
  config = config_lib.Config.of(output_dir=str(tmp_path), export=("float32",), max_in_memory_mb=7)
  main_lib.export_students(config, ["conventional"], tracking.NullTracker())
  assert [c["max_in_memory_mb"] for c in calls] == [7]


def test_max_in_memory_mb_accepts_the_default_zero_and_inf():
  for value in (None, 0, 7.5, float("inf")):
    assert tflite.check_max_in_memory_mb(value) == value


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("-inf")])
def test_a_bad_max_in_memory_mb_is_refused_before_anything_is_written(tiny_run, tmp_path, value):
  output = tmp_path / "out" / "m.tflite"
  with pytest.raises(tflite.ExportError, match=r"--max_in_memory_mb=.*expected a number >= 0"):
    tflite.export_model(tiny_run.student("conventional").model, str(output), "float32",
                        max_in_memory_mb=value)
  assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_cli_refuses_a_bad_max_in_memory_mb_with_status_2(tiny_run, tmp_path):
  output = tmp_path / "cli" / "m.tflite"
  result = subprocess.run(
      [sys.executable, "-m", "export.tflite", f"--model={tiny_run.student('conventional').model}",
       "--quantization=float32", f"--output={output}", "--max_in_memory_mb=-1"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == ["error: --max_in_memory_mb=-1.0: expected a number >= 0"], result.stderr[-2000:]
  assert not (tmp_path / "cli").exists()

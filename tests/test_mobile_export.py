"""A BatchNorm / hard-swish / squeeze-excite student exports to a full-integer int8 .tflite
whose ops are integer (issue 12)."""

import os

import pytest

from export import api as export_api
from tf_srkd import model_sources

MNIST = (28, 28, 1)


def _export_int8(name, tmp_path):
  path = str(tmp_path / "student.keras")
  model_sources.build(name, MNIST, 10).save(path)
  return export_api.export_model(path, str(tmp_path / "student_int8.tflite"), "int8",
                                 dataset="mnist", test_examples=50, num_calibration_samples=16)


def _assert_integer(result):
  assert result["full_integer"], result["ops"]  # No float tensor anywhere in the file.
  assert result["input"]["dtype"] == "uint8"
  assert "DEQUANTIZE" not in result["ops"], result["ops"]
  assert os.path.getsize(result["paths"]["tflite"]) == result["size_bytes"]


def test_tiny_bn_hard_swish_se_student_is_full_integer(tmp_path):
  result = _export_int8("tests.model_factories:tiny_cnn", tmp_path)
  _assert_integer(result)
  assert "HARD_SWISH" in result["ops"], result["ops"]
  assert result["verification"]["test_examples"] == 50


@pytest.mark.slow
def test_mobilenet_v3_small_student_is_full_integer(tmp_path):
  result = _export_int8("MobileNetV3Small", tmp_path)
  _assert_integer(result)
  assert "HARD_SWISH" in result["ops"], result["ops"]

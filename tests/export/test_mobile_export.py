"""A BatchNorm / hard-swish / squeeze-excite student exports to a full-integer int8 .tflite
whose ops are integer."""

import json
import os

import keras
import pytest

from export import api as export_api
from tf_srkd.models import sources as model_sources

MNIST = (28, 28, 1)


def _export_int8(name, tmp_path):
  # Seeded: the int8 scales, and so whether XNNPACK takes the file, follow the initial weights.
  keras.utils.set_random_seed(0)
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
  result = _export_int8("tests.support.model_factories:tiny_cnn", tmp_path)
  _assert_integer(result)
  assert "HARD_SWISH" in result["ops"], result["ops"]
  assert result["verification"]["test_examples"] == 50
  assert result["verification"]["kernels"] == "xnnpack"
  assert result["verification"]["xnnpack_refusal"] is None


def test_a_model_xnnpack_refuses_is_verified_on_builtin_kernels_and_says_so(tmp_path, caplog):
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

  result = _export_int8("tests.support.model_factories:dead_squeeze_cnn", tmp_path)
  _assert_integer(result)
  # The written file really is one XNNPACK refuses (if a LiteRT release starts accepting it,
  # this factory no longer exercises the fallback: find another collapsed-range model).
  with pytest.raises(RuntimeError, match="XNNPACK"):
    Interpreter(model_path=result["paths"]["tflite"]).allocate_tensors()
  verification = result["verification"]
  assert verification["kernels"] == "builtin"
  assert "XNNPACK" in verification["xnnpack_refusal"]
  assert verification["argmax_agreement"] > 0.5  # The built-in kernels really ran the model.
  with open(result["paths"]["sidecar"]) as f:
    assert json.load(f)["verification"]["kernels"] == "builtin"
  assert any("XNNPACK refused" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_mobilenet_v3_small_student_is_full_integer(tmp_path):
  result = _export_int8("MobileNetV3Small", tmp_path)
  _assert_integer(result)
  assert "HARD_SWISH" in result["ops"], result["ops"]

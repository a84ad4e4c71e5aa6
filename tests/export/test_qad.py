"""Quantization-aware distillation: the tf_keras twin of any functional student, the
student's own objective and gate under fake quantization, and `--qad_epochs` end to end."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from export import fake_quant
from export import qat_process
from export import tflite
from export import twin as twin_lib
from export.errors import ExportError
from tests.conftest import ROOT
from tests.support import litert_run
from tf_srkd.models import sources

pytestmark = pytest.mark.xdist_group("test_qad")


def _images(shape, n=16, seed=0):
  return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def test_twin_of_a_keras_applications_student_matches_it():
  import tf_keras  # pylint: disable=import-outside-toplevel

  model = sources.build("MobileNetV3Small", (32, 32, 3), 10)
  twin = twin_lib.build_twin(model, tf_keras)
  # Flat: tfmot refuses nested models, and cannot clone TFOpLambda layers.
  assert not any(isinstance(layer, tf_keras.Model) for layer in twin.layers)
  kinds = [type(layer).__name__ for layer in twin.layers]
  assert "TFOpLambda" not in kinds and kinds.count("HardSwish") > 10
  diff = twin_lib.check_twin(model, twin, _images((32, 32, 3)))
  assert diff <= twin_lib.TOLERANCE
  assert set(twin_lib.weighted_layers(model)) <= {l.name for l in twin.layers}


def test_twin_of_a_registry_student_is_exact():
  import tf_keras  # pylint: disable=import-outside-toplevel

  from tf_srkd.models import zoo  # pylint: disable=import-outside-toplevel

  model = zoo.build_model("lenet5_half", (28, 28, 1), 10)
  twin = twin_lib.build_twin(model, tf_keras)
  assert twin_lib.check_twin(model, twin, _images((28, 28, 1)), exact=True) == 0.0
  assert twin.count_params() == model.count_params()


def test_twin_maps_arithmetic_with_constants_exactly():
  import tf_keras  # pylint: disable=import-outside-toplevel

  inputs = keras.Input((4, 4, 2))
  x = keras.layers.Conv2D(3, 1, name="conv")(inputs)
  y = (x + 3.0) * 0.5 - 1.0
  y = 2.0 - y / 4.0
  z = keras.layers.Activation("hard_sigmoid")(x) + keras.layers.Activation("hard_silu")(y)
  model = keras.Model(inputs, keras.layers.Flatten()(z * x))
  twin = twin_lib.build_twin(model, tf_keras)
  images = _images((4, 4, 2)) * 10 - 5  # Both sides of the hard activations' knees.
  np.testing.assert_allclose(np.asarray(twin(images)), np.asarray(model(images)), atol=1e-5)


def test_twin_names_what_it_cannot_copy():
  import tf_keras  # pylint: disable=import-outside-toplevel

  inputs = keras.Input((4, 4, 1))
  model = keras.Model(inputs, keras.layers.Flatten()(keras.ops.sin(inputs)))
  with pytest.raises(ExportError, match=r"operation sin \(Sin"):
    twin_lib.build_twin(model, tf_keras)

  class Custom(keras.layers.Layer):

    def call(self, x):
      return x * 2

  model = keras.Model(inputs, Custom(name="mine")(inputs))
  with pytest.raises(ExportError, match="layer mine"):
    twin_lib.build_twin(model, tf_keras)


def test_objective_follows_the_run_and_mode():
  from export import fine_tune  # pylint: disable=import-outside-toplevel
  from tf_srkd.core import modes  # pylint: disable=import-outside-toplevel

  cfg = {"epochs": 200, "distill_epochs": 50, "temperature": 4.0, "kd_lambda": 0.5,
         "kd_scale_temperature_squared": "false", "distill_alpha": 0.1,
         "distill_loss_normaliser": "batch", "gate_temperature": 2.0}
  hybrid = fine_tune.objective_of(cfg, modes.get_mode("hybrid"))
  assert (hybrid.regulate, hybrid.weight_by_significance, hybrid.first_epoch) == (True, True, 50)
  assert (hybrid.temperature, hybrid.kd_lambda, hybrid.scale_temperature_squared) == (4.0, 0.5,
                                                                                       False)
  assert (hybrid.alpha, hybrid.normaliser, hybrid.gate_temperature) == (0.1, "batch", 2.0)
  assert "self-regulated" in hybrid.describe() and "significance" in hybrid.describe()
  plain = fine_tune.objective_of({"epochs": 3}, modes.get_mode("conventional"))
  assert (plain.regulate, plain.first_epoch, plain.normaliser) == (False, 3, "participants")
  labels = fine_tune.objective_of(cfg, modes.get_mode("hybrid"), labels_only=True)
  assert not (labels.distill or labels.regulate or labels.weight_by_significance)


@pytest.mark.parametrize("regulate", [False, True])
def test_fine_tuning_traces_its_step_once(regulate, monkeypatch):
  """The optimizer's slots exist before the first step: a tf.function that creates
  variables is traced twice, and a fake-quantized MobileNet's trace costs seconds.
  Without the gate every sample takes part."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tf_keras  # pylint: disable=import-outside-toplevel

  from export import fine_tune  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel

  steps, function = [], tf.function
  monkeypatch.setattr(tf, "function", lambda fn: steps.append(function(fn)) or steps[-1])
  rng = np.random.default_rng(0)
  train = data.SplitArrays(rng.integers(0, 256, (96, 8, 8, 1), dtype=np.uint8),
                           rng.integers(0, 3, 96).astype(np.int32))
  model = tf_keras.Sequential([tf_keras.layers.Flatten(input_shape=(8, 8, 1)),
                               tf_keras.layers.Dense(3)])
  teacher_logits = rng.normal(size=(96, 3)).astype(np.float32)
  history, shares = fine_tune.fine_tune(
      model, tf_keras, train, teacher_logits, None,
      fine_tune.Objective(regulate=regulate, alpha=0.5, first_epoch=1), epochs=2,
      learning_rate=1e-3, batch_size=32, seed=0)
  assert len(history) == len(shares) == 2 and all(np.isfinite(history))
  assert all(0 < share <= 1 for share in shares) if regulate else shares == [1.0, 1.0]
  assert len(steps) == 1 and steps[0].experimental_get_tracing_count() == 1


def test_export_qat_names_a_bad_objective_before_starting(tmp_path):
  with pytest.raises(ExportError, match="--qat_objective=teacher: expected one of "
                     "distillation, labels"):
    qat_process.export_qat("any.keras", str(tmp_path / "q" / "m.tflite"),
                           qat_objective="teacher")
  assert not (tmp_path / "q").exists()
  assert fake_quant.OUTPUT_QUANTIZED == ("Rescaling", "Multiply", "Subtract", "HardSwish")


_FAKE_QUANT_SCRIPT = """
import numpy as np
from export import fake_quant, qat, twin
from tests.support import model_factories
model = model_factories.mobilenet_v3_block((32, 32, 3), 10)
tfmot, tf_keras = qat.import_tfmot()
twin_model = twin.build_twin(model, tf_keras)
capped = {"quant_" + l.name for l in twin_model.layers
          if type(l).__name__ == "ReLU" and l.max_value is not None and float(l.max_value) == 6}
quantized = fake_quant.quantize(twin_model, tfmot, tf_keras)
qat.pin_input_range(quantized)
images = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3)).astype(np.float32)
ranges = fake_quant.calibrate_ranges(quantized, [images[:16], images[16:]], tfmot)
values = {v.name.split(":")[0]: float(np.max(v.numpy())) for v in quantized.non_trainable_weights}
relu6 = [v for k, v in values.items() if k.split("/")[0] in capped and k.endswith("/output_max")]
outputs = [k for k in values if k.endswith("/output_max")]
print("RANGES", ranges, len(outputs), fake_quant.ema_decay(tfmot), len(relu6), max(relu6))
"""


@pytest.mark.slow
def test_fake_quantized_mobilenet_v3_pieces_take_their_ranges_from_the_batches():
  # tfmot switches its process to legacy Keras: a subprocess, as export_qat runs it.
  # MobileNetV3's pieces once each, in seconds; a whole MobileNetV3Small's ranges and
  # conversion are test_qad_of_a_mobilenet_v3_student_is_full_integer's.
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", _FAKE_QUANT_SCRIPT], cwd=ROOT, env=env,
                        capture_output=True, text=True, check=False, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  ranges, outputs, decay, capped, high = proc.stdout.split("RANGES ")[-1].split("\n")[0].split()
  # Every activation range starts from the batches, not tfmot's [-6, 6]: the hard
  # sigmoid's ReLU6 sees x + 3 with x near 0 here, so its range ends near 3, not at 6.
  assert int(ranges) >= int(outputs) >= 7 and float(decay) == 0.999
  assert int(capped) == 1 and 2.5 < float(high) < 4.0


@pytest.fixture(scope="module")
def qad_run(tmp_path_factory):
  """A tiny run through the CLI's `run` with --export=int8 --qad_epochs=1, in hybrid mode
  (gate and significance; the ungated fine-tuning is test_fine_tuning_traces_its_step_once's)."""
  from tf_srkd.cli import main as cli_main  # pylint: disable=import-outside-toplevel
  from tf_srkd.run import config as config_lib  # pylint: disable=import-outside-toplevel

  out = str(tmp_path_factory.mktemp("qad") / "run")
  config = config_lib.Config.of(dataset="mnist", epochs=2, train_examples=512, batch_size=64,
                                eval_batch_size=256, verbose=0, mlflow=False,
                                modes=("hybrid",), output_dir=out, export=("int8",),
                                qad_epochs=1, export_at_chance=True)
  cli_main.run(config)
  return out


@pytest.mark.slow
def test_qad_epochs_exports_a_gated_full_integer_student(qad_run):
  tflite_dir = os.path.join(qad_run, "students", "hybrid", "tflite")
  assert {"model_int8.tflite", "model_int8_qat.tflite"} <= set(os.listdir(tflite_dir))
  with open(os.path.join(tflite_dir, "model_int8_qat.json"), encoding="utf-8") as f:
    sidecar = json.load(f)
  assert sidecar["full_integer"] and sidecar["input"]["dtype"] == "uint8"
  qad = sidecar["qat"]
  assert qad["self_regulation_gate"] is True and qad["first_epoch"] == 2
  share = qad["participation_per_epoch"][0]
  # The gate keeps the misclassified and the unsure: some, not all, of 512 rows.
  assert 0.0 < share < 1.0
  interpreter = litert_run.load(os.path.join(tflite_dir, "model_int8_qat.tflite"))
  assert interpreter.get_output_details()[0]["dtype"] == np.int8


@pytest.mark.slow
def test_qad_of_a_mobilenet_v3_student_is_full_integer(qad_run, tmp_path):
  # The fixture's run with a MobileNetV3Small in its student's place: QAD distils it from
  # the run's teacher with the run's gate and significance. Its accuracy is not the point
  # (an application student trained through the pipeline is test_first_hour's), its ops are.
  run = shutil.copytree(qad_run, tmp_path / "run")
  student = run / "students" / "hybrid" / "model.keras"
  sources.build("MobileNetV3Small", (28, 28, 1), 10).save(student)
  result = tflite.export_qat(str(student), str(tmp_path / "q" / "model_int8_qat.tflite"),
                             qat_epochs=1, test_examples=256)
  assert result["full_integer"] and result["qat"]["self_regulation_gate"]
  assert result["qat"]["tf_keras_twin_max_abs_diff"] <= 1e-3
  assert result["qat"]["range_calibration"]["ranges"] > 100
  # Hard-swish is TFLite's one integer op, not four ops with a tensor each between them.
  assert "DEQUANTIZE" not in result["ops"] and {
      "CONV_2D", "DEPTHWISE_CONV_2D", "MUL", "ADD", "HARD_SWISH"} <= set(result["ops"])
  quantization = result["input"]["quantization"]  # Raw uint8 pixels in.
  assert result["input"]["dtype"] == "uint8" and quantization["zero_point"] == 0
  assert abs(quantization["scale"] * 255.0 - 1.0) < 1e-6

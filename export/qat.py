"""Quantization-aware training (tfmot) of a student, exported as a full-integer `.tflite`.

    python -m export.qat --model=<run>/students/<mode>/model.keras \
        --output=<run>/students/<mode>/tflite/model_int8_qat.tflite --qat_epochs=1

Run this as its own process (`export.api.export_qat` does): importing
tensorflow-model-optimization 0.8.1 sets TF_USE_LEGACY_KERAS=1 for the process,
and it only accepts tf_keras models. Nothing imports tfmot at module import
time, not even this module.

This is quantization-aware *distillation*: the fake-quantized student is
trained against its teacher under its own mode's objective and gate.

Steps:
  1. Load the Keras 3 student and draw it as a flat tf_keras model
     (`export.twin`: any functional or Sequential model of built-in layers,
     `keras.applications` students included); copy the weights by layer name and
     require the two to agree on real test images (exactly, for the registry's).
  2. Fake-quantize it with tfmot's default 8-bit scheme (`export.fake_quant`).
     The input quantizer's range is pinned to [0, 1] so the int8 model's uint8
     input is the raw pixel; every other activation range starts from 32
     training batches (`fake_quant.calibrate_ranges`), not from tfmot's [-6, 6].
  3. Fine-tune for `--qat_epochs` on the run's transfer set with the student's
     own objective (`fine_tune.Objective`, read from the run's flags): KL to the teacher's
     soft targets at temperature tau (+ tau^2 scaling as configured) + lambda * CE,
     weighted by the teacher's significance in the `significance` and `hybrid`
     modes, and, in the `regulated` and `hybrid` modes, gated as in training: a
     sample takes part iff the fake-quantized student misclassifies it or its
     margin is below eta(n), n continuing the student's epochs. The loss is
     normalised as `--distill_loss_normaliser` says. Only the paper's logit KD
     term is used: a run's feature terms (`--distillation_loss=feature:...`) are
     not reproduced here (docs/export.md).
  4. Convert to int8 (uint8 raw-pixel input, int8 probabilities) and verify in
     LiteRT against the original Keras student, as every export does.
"""

import os
import sys
import time

import numpy as np

from export import api
from export import convert as convert_lib
from export import fake_quant
from export import fine_tune as fine_tune_lib
from export import sidecar as sidecar_lib
from export import source
from export import twin as twin_lib
from export.errors import ExportError
from tf_srkd.core import modes as modes_lib
from tf_srkd.data import arrays as data
from tf_srkd.storage import layout


#: Training batches whose activation ranges start the fake-quant ranges.
RANGE_BATCHES = 32


def import_tfmot():
  """(tfmot, tf_keras); switches this process to legacy Keras for `tf.keras`."""
  import tensorflow_model_optimization as tfmot  # pylint: disable=import-outside-toplevel
  import tf_keras  # pylint: disable=import-outside-toplevel

  return tfmot, tf_keras


def tf_keras_twin(student: source.Student, tf_keras, check_images: np.ndarray):
  """The student as a flat tf_keras model with the very same weights (`export.twin`).

  Returns:
    (twin, max_abs_diff) where max_abs_diff, measured on `check_images`, is within
    `twin.TOLERANCE` (0 for the registry's students).

  Raises:
    ExportError: a layer or operation without a twin, mismatched layers, or outputs that
      differ.
  """
  twin = twin_lib.build_twin(student.model, tf_keras)
  return twin, twin_lib.check_twin(student.model, twin, data.preprocess(check_images).numpy())


def pin_input_range(quantized_model):
  """Sets the input quantizer's range to exactly [0, 1] (= raw pixels / 255).

  tfmot's input QuantizeLayer keeps the running min/max of all values it saw
  (starting at 0); starting it at [0, 1] keeps it there for [0, 1] images, so
  the exported uint8 input has scale 1/255 and zero point 0.
  """
  layer = next((l for l in quantized_model.layers if type(l).__name__ == "QuantizeLayer"),
               quantized_model.layers[0])
  pinned = 0
  for w in layer.weights:
    short = w.name.split("/")[-1].split(":")[0]
    if short.endswith("_min"):
      w.assign(0.0)
      pinned += 1
    elif short.endswith("_max"):
      w.assign(1.0)
      pinned += 1
  if pinned != 2:
    raise ExportError(f"could not pin the input range of {layer.name} "
                      f"({[w.name for w in layer.weights]})")


def load_teacher_logits(student: source.Student, train_images: np.ndarray) -> np.ndarray:
  """The run's teacher's logits on the transfer set (the soft targets of the fine-tuning)."""
  import keras  # pylint: disable=import-outside-toplevel

  teacher_path = layout.StageDir(source.teacher_dir_of(student.run_dir)).model
  if not os.path.isfile(teacher_path):
    raise ExportError(f"QAT distils from the run's teacher; no teacher at {teacher_path}")
  teacher = keras.models.load_model(teacher_path, compile=False)
  return np.asarray(teacher.predict(data.image_batches(train_images, 1024), verbose=0),
                    np.float32)


def convert_qat(qmodel, image_shape) -> bytes:
  """The fine-tuned fake-quant model -> full-integer `.tflite` (uint8 in, int8 out).

  No representative dataset: every range comes from the QAT fake-quant ops.
  (`supported_ops` is left at its default because TF 2.21's converter checks
  for a representative dataset before it looks at the fake-quant ops; the
  result is nevertheless integer-only, which `check_raw_pixel_input` verifies.)
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  # The converter saves this module as a SavedModel first. Holding the variables alone
  # (not the tf_keras model) spares that save a trace of every layer's call function:
  # the same bytes, in a quarter of the time on MobileNetV3Small.
  module = tf.Module()
  module.weights = list(qmodel.variables)

  @tf.function(input_signature=[tf.TensorSpec([1, *image_shape], tf.float32,
                                              name=convert_lib.INPUT_NAME)])
  def serve(x):
    return {convert_lib.OUTPUT_NAME: tf.nn.softmax(qmodel(x, training=False), axis=-1)}

  converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()],
                                                              module)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.inference_input_type = tf.uint8
  converter.inference_output_type = tf.int8
  try:
    return converter.convert()
  except Exception as e:  # pylint: disable=broad-except
    raise ExportError(f"TFLite conversion of the QAT model failed: "
                      f"{convert_lib.conversion_error(e)}") from e


def export_qat_model(model, output: str, qat_epochs: int = 1, *, qat_learning_rate: float = 1e-4,
                     batch_size: int = 0, dataset=None, test_examples: int = 0,
                     dense_per_channel: bool = False, mlflow_run_id=None, tracking_uri=None,
                     seed: int = 0, qat_objective: str = "distillation") -> dict:
  """QAT + int8 export in *this* process (which it switches to legacy tf.keras).

  Call `export.api.export_qat` instead from any process that uses Keras 3
  afterwards. Arguments as there. Returns the result dict (sidecar + paths).
  """
  del dense_per_channel  # QAT decides per-channel-ness with its fake-quant ops.
  sidecar_lib.check_output(output)
  if int(qat_epochs) < 1:
    raise ExportError(f"--qat_epochs={qat_epochs}: expected an integer >= 1")
  student = source.load_student(model, dataset, tracking_uri)
  if student.role != "student" or not student.run_dir:
    raise ExportError(f"--model={model}: QAT needs a student inside a run directory "
                      "(<run>/students/<mode>/model.keras): it distils from the run's teacher")
  mode = modes_lib.get_mode(student.mode) if student.mode in modes_lib.MODES else None
  if mode is None:
    raise ExportError(f"--model={model}: unknown distillation mode {student.mode!r}")
  cfg = student.run_config
  began = time.time()
  tfmot, tf_keras = import_tfmot()
  # In memory whatever their size: QAT takes its splits as arrays (data.image_batches, slices).
  ctx = api.model_context(student, test_examples, max_in_memory_mb=float("inf"))
  twin, diff = tf_keras_twin(student, tf_keras, ctx.test_images[:512])
  train = ctx.data.split("train", source.train_examples_of(student))
  teacher_logits = load_teacher_logits(student, train.images)
  significance = None
  if mode.weight_by_significance:
    significance = source.load_significance(student)
    if significance.shape[0] != train.size:
      raise ExportError(f"the significance has {significance.shape[0]} entries, the transfer "
                        f"set {train.size}")
  tf_keras.utils.set_random_seed(seed)
  try:
    qmodel = fake_quant.quantize(twin, tfmot, tf_keras)
  except (RuntimeError, ValueError) as e:
    raise ExportError(f"{student.model_ref}: tensorflow-model-optimization cannot quantize it: "
                      f"{' '.join(str(e).split())[:300]}") from e
  pin_input_range(qmodel)
  batch_size = int(batch_size) or int(cfg.get("batch_size") or 0) or 512
  rows = np.sort(np.random.default_rng(seed).permutation(train.size)[:RANGE_BATCHES * batch_size])
  calibrated = fake_quant.calibrate_ranges(
      qmodel, data.image_batches(train.images[rows], batch_size), tfmot)
  objective = fine_tune_lib.objective_of(cfg, mode, labels_only=qat_objective == "labels")
  history, shares = fine_tune_lib.fine_tune(qmodel, tf_keras, train, teacher_logits, significance, objective,
                              epochs=int(qat_epochs), learning_rate=qat_learning_rate,
                              batch_size=batch_size, seed=seed)
  qat_keras_predicted = np.asarray(qmodel.predict(
      data.image_batches(ctx.test_images, 1024), verbose=0)).argmax(axis=-1)
  tflite_bytes = convert_qat(qmodel, student.image_shape)
  details, verification = api.verified(ctx, tflite_bytes, "int8")
  qat = {
      "epochs": int(qat_epochs),
      "learning_rate": float(qat_learning_rate),
      "optimizer": "Adam",
      "batch_size": batch_size,
      "seed": int(seed),
      "train_examples": int(train.size),
      "qat_objective": qat_objective,
      "objective": objective.describe(),
      "temperature": objective.temperature,
      "kd_lambda": objective.kd_lambda,
      "weight_by_significance": objective.weight_by_significance,
      "self_regulation_gate": objective.regulate,
      "distill_alpha": objective.alpha,
      "first_epoch": objective.first_epoch,
      "loss_normaliser": objective.normaliser,
      # What the run distilled with; the fine-tuning uses its logit KD term only.
      "run_distillation_loss": cfg.get("distillation_loss") or ["logits"],
      "loss_per_epoch": history,
      # Share of the transfer set inside the backward pass, per epoch (1 without the gate).
      "participation_per_epoch": shares,
      "zeta": float(np.mean(shares)) if shares else None,
      # The fine-tuned fake-quant model in tf_keras: separates the gain of the
      # extra training from the cost of quantization.
      "fake_quant_keras_test_accuracy": float(np.mean(qat_keras_predicted == ctx.test_labels)),
      "tf_keras_twin_max_abs_diff": diff,
      # Activation ranges started from this many training batches (export.fake_quant).
      "range_calibration": {"ranges": calibrated, "batches": int(-(-len(rows) // batch_size))},
      "tfmot": _version("tensorflow-model-optimization"),
      "tf_keras": _version("tf-keras"),
      "wall_time_s": time.time() - began,
  }
  return api.write_and_log(ctx, output, tflite_bytes, "int8", details, verification, qat=qat,
                           mlflow_run_id=mlflow_run_id, mlflow_key="int8_qat",
                           tracking_uri=tracking_uri)


def _version(package):
  try:
    from importlib import metadata  # pylint: disable=import-outside-toplevel

    return metadata.version(package)
  except Exception:  # pylint: disable=broad-except
    return None


def _define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_string("model", None, "<run>/students/<mode>/model.keras (or a runs:/ URI).")
  flags.DEFINE_string("output", None, "The int8 .tflite file to write.")
  flags.DEFINE_integer("qat_epochs", 1, "Epochs of quantization-aware fine-tuning.")
  flags.DEFINE_float("qat_learning_rate", 1e-4, "Adam learning rate of the fine-tuning.")
  flags.DEFINE_integer("batch_size", 0, "Batch size (0: the run's --batch_size).")
  flags.DEFINE_string("dataset", None, "Dataset, when it cannot be read from the run.")
  flags.DEFINE_integer("test_examples", 0, "Verify on the first K test examples (0: all).")
  flags.DEFINE_bool("dense_per_channel", False, "Ignored (QAT fixes per-channel-ness).")
  flags.DEFINE_string("mlflow_run_id", None, "Log the numbers and files into this MLflow run.")
  flags.DEFINE_string("mlflow_tracking_uri", None, "The MLflow store of --mlflow_run_id and of a "
                      "runs:/ --model (default: $MLFLOW_TRACKING_URI, else MLflow's default).")
  flags.DEFINE_integer("seed", 0, "Seed of the fine-tuning.")
  flags.DEFINE_enum("qat_objective", "distillation", list(api.QAT_OBJECTIVES),
                    "distillation: the student's own KD objective, significance and gate "
                    "(quantization-aware distillation); labels: cross-entropy only (plain QAT).")


def main(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel

  del argv
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

  f = flags.FLAGS
  absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    result = export_qat_model(
        f.model, f.output, f.qat_epochs, qat_learning_rate=f.qat_learning_rate,
        batch_size=f.batch_size, dataset=f.dataset, test_examples=f.test_examples,
        mlflow_run_id=f.mlflow_run_id, tracking_uri=f.mlflow_tracking_uri, seed=f.seed,
        qat_objective=f.qat_objective)
  except ExportError as e:
    # The parent process (`export.api`) shows this line to the user as the error.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(api.format_results([("int8_qat", result)]))
  print(f"wrote {result['paths']['tflite']}")


if __name__ == "__main__":
  import atexit  # pylint: disable=g-import-not-at-top
  import gc  # pylint: disable=g-import-not-at-top

  from absl import app  # pylint: disable=g-import-not-at-top

  # A command: end without CPython's last full collection over TensorFlow's million
  # objects (~1.3 s; `tf_srkd.cli.environment.skip_the_final_collection` says why).
  atexit.register(gc.freeze)
  _define_flags()
  app.run(main)

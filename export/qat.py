"""Quantization-aware training (tfmot) of a student, exported as a full-integer `.tflite`.

    python -m export.qat --model=<run>/students/<mode>/model.keras \
        --output=<run>/students/<mode>/tflite/model_int8_qat.tflite --qat_epochs=1

Run this as its own process (`export.api.export_qat` does): importing
tensorflow-model-optimization 0.8.1 sets TF_USE_LEGACY_KERAS=1 for the process,
and it only accepts tf_keras models. Nothing imports tfmot at module import
time, not even this module.

Steps:
  1. Load the Keras 3 student and render the same architecture as a tf_keras
     model from the registry definition (`models.build_model(...,
     keras_module=tf_keras)`); copy the weights layer by layer and require a
     max abs difference of exactly 0 between the two on real test images.
  2. `tfmot.quantization.keras.quantize_model` it. The input quantizer's range
     is pinned to [0, 1] so the int8 model's uint8 input is the raw pixel.
  3. Fine-tune for `--qat_epochs` on the run's transfer set with the
     distillation objective of the student's mode: KL to the teacher's soft
     targets at temperature tau (+ tau^2 scaling as configured) + lambda * CE,
     each sample weighted by the teacher's significance in the `significance`
     and `hybrid` modes, normalised by the batch size. The self-regulating gate
     of the `regulated`/`hybrid` modes is not applied here: every sample takes
     part in the short fine-tuning (documented in docs/export.md).
  4. Convert to int8 (uint8 raw-pixel input, int8 probabilities) and verify in
     LiteRT against the original Keras student, as every export does.
"""

import os
import sys
import time

import numpy as np

from export import api
from export import convert as convert_lib
from export import sidecar as sidecar_lib
from export import source
from export.errors import ExportError
from tf_srkd.data import arrays as data
from tf_srkd.storage import layout
from tf_srkd.core import losses
from tf_srkd.models import zoo as models
from tf_srkd.core import modes as modes_lib


def import_tfmot():
  """(tfmot, tf_keras); switches this process to legacy Keras for `tf.keras`."""
  import tensorflow_model_optimization as tfmot  # pylint: disable=import-outside-toplevel
  import tf_keras  # pylint: disable=import-outside-toplevel

  return tfmot, tf_keras


def tf_keras_twin(student: source.Student, tf_keras, check_images: np.ndarray):
  """The student's architecture as a tf_keras model with the very same weights.

  Returns:
    (twin, max_abs_diff) where max_abs_diff, measured on `check_images`, is 0.

  Raises:
    ExportError: unknown architecture, mismatched layers, or outputs that differ.
  """
  if student.architecture not in models.MODELS:
    raise ExportError(f"--model={student.model_ref}: QAT needs the architecture's registry name "
                      f"(got {student.architecture!r}; expected one of {sorted(models.MODELS)})")
  twin = models.build_model(student.architecture, student.image_shape, student.spec.num_classes,
                            keras_module=tf_keras)
  source = [layer for layer in student.model.layers if layer.weights]
  target = {layer.name: layer for layer in twin.layers if layer.weights}
  if sorted(l.name for l in source) != sorted(target):
    raise ExportError(f"{student.model_ref}: its layers {[l.name for l in source]} do not match "
                      f"the registry's {student.architecture} ({sorted(target)})")
  for layer in source:
    weights = layer.get_weights()
    expected = [tuple(w.shape) for w in target[layer.name].get_weights()]
    if [tuple(w.shape) for w in weights] != expected:
      raise ExportError(f"{student.model_ref}: layer {layer.name} has weight shapes "
                        f"{[w.shape for w in weights]}, the tf_keras twin {expected}")
    target[layer.name].set_weights(weights)
  images = data.preprocess(check_images).numpy()
  a = np.asarray(student.model(images, training=False))
  b = np.asarray(twin(images, training=False))
  diff = float(np.max(np.abs(a - b)))
  if diff != 0.0:
    raise ExportError(f"the tf_keras twin of {student.model_ref} differs from it by {diff} "
                      f"(expected exactly 0)")
  return twin, diff


def pin_input_range(quantized_model):
  """Sets the input quantizer's range to exactly [0, 1] (= raw pixels / 255).

  tfmot's input QuantizeLayer keeps the running min/max of all values it saw
  (starting at 0); starting it at [0, 1] keeps it there for [0, 1] images, so
  the exported uint8 input has scale 1/255 and zero point 0.
  """
  layer = quantized_model.layers[0]
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


def fine_tune(qmodel, tf_keras, train, teacher_logits, significance, *, epochs, learning_rate,
              batch_size, seed, temperature, kd_lambda, scale_temperature_squared):
  """Distillation fine-tuning of the quantize-wrapped model; returns per-epoch mean losses."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  extras = {"teacher_logits": teacher_logits}
  if significance is not None:
    extras["significance"] = significance.astype(np.float32)
  dataset = data.train_dataset(train, batch_size, seed, 0, epochs, extras)
  optimizer = tf_keras.optimizers.Adam(learning_rate)
  variables = qmodel.trainable_variables

  @tf.function
  def step(features, labels):
    with tf.GradientTape() as tape:
      logits = qmodel(features["image"], training=True)
      total, _, _ = losses.distillation_loss(labels, features["teacher_logits"], logits,
                                             temperature, kd_lambda, scale_temperature_squared)
      weights = (tf.cast(features["significance"], tf.float32) if "significance" in features
                 else tf.ones_like(total))
      loss = losses.normalised_loss(total, weights, tf.size(labels))
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  steps = data.steps_per_epoch(train.size, batch_size)
  history, running = [], []
  for i, (features, labels) in enumerate(dataset):
    running.append(float(step(features, labels)))
    if (i + 1) % steps == 0:
      history.append(float(np.mean(running)))
      running = []
  return history


def convert_qat(qmodel, image_shape) -> bytes:
  """The fine-tuned fake-quant model -> full-integer `.tflite` (uint8 in, int8 out).

  No representative dataset: every range comes from the QAT fake-quant ops.
  (`supported_ops` is left at its default because TF 2.21's converter checks
  for a representative dataset before it looks at the fake-quant ops; the
  result is nevertheless integer-only, which `check_raw_pixel_input` verifies.)
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  module = tf.Module()
  module.model = qmodel

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
                     seed: int = 0) -> dict:
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
  qmodel = tfmot.quantization.keras.quantize_model(twin)
  pin_input_range(qmodel)
  batch_size = int(batch_size) or int(cfg.get("batch_size") or 0) or 512
  temperature = float(cfg.get("temperature", 20.0))
  kd_lambda = float(cfg.get("kd_lambda", 0.3))
  scale_t2 = cfg.get("kd_scale_temperature_squared", True)
  scale_t2 = scale_t2 if isinstance(scale_t2, bool) else str(scale_t2).lower() == "true"
  history = fine_tune(qmodel, tf_keras, train, teacher_logits, significance,
                      epochs=int(qat_epochs), learning_rate=qat_learning_rate,
                      batch_size=batch_size, seed=seed, temperature=temperature,
                      kd_lambda=kd_lambda, scale_temperature_squared=scale_t2)
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
      "objective": "distillation: KL(teacher/tau || student/tau)"
                   f"{' * tau^2' if scale_t2 else ''} + lambda * CE"
                   f"{', weighted by significance' if mode.weight_by_significance else ''}",
      "temperature": temperature,
      "kd_lambda": kd_lambda,
      "weight_by_significance": bool(mode.weight_by_significance),
      "self_regulation_gate": False,
      "loss_per_epoch": history,
      # The fine-tuned fake-quant model in tf_keras: separates the gain of the
      # extra training from the cost of quantization.
      "fake_quant_keras_test_accuracy": float(np.mean(qat_keras_predicted == ctx.test_labels)),
      "tf_keras_twin_max_abs_diff": diff,
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
        mlflow_run_id=f.mlflow_run_id, tracking_uri=f.mlflow_tracking_uri, seed=f.seed)
  except ExportError as e:
    # The parent process (`export.api`) shows this line to the user as the error.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(api.format_results([("int8_qat", result)]))
  print(f"wrote {result['paths']['tflite']}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top

  _define_flags()
  app.run(main)

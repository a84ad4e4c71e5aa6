"""Conversion: a Keras classifier -> a `.tflite` flatbuffer that takes raw pixels.

Every model written here has one signature, `serving_default`, with input
`image` (uint8 [1, H, W, C], raw pixels 0..255) and output `probabilities`
([1, num_classes] softmax). Scaling to [0, 1] is inside the graph: a Cast and
a multiply for float32 / dynamic / float16; for int8 the input tensor's
quantization (scale 1/255, zero point 0) *is* the scaling.
"""

import tempfile
import warnings
from typing import Optional

import numpy as np

from export.errors import ExportError
from tf_srkd.run import config as config_lib

#: The quantizations this package writes (defined with the run's flags, which check them).
QUANTIZATIONS = config_lib.QUANTIZATIONS
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
SIGNATURE_KEY = "serving_default"
#: The input quantization that makes an int8 model take raw pixels: q = pixel.
RAW_PIXEL_SCALE = 1.0 / 255.0


def check_quantization(quantization: str):
  """Raises ExportError unless `quantization` is one of QUANTIZATIONS."""
  if quantization not in QUANTIZATIONS:
    raise ExportError(f"--quantization={quantization}: unknown; expected one of "
                      f"{', '.join(QUANTIZATIONS)}")


def check_quantizations(quantizations) -> list:
  """The distinct, stripped names of a (comma-split) list, each checked.

  Raises:
    ExportError: an empty list or an unknown name.
  """
  quantizations = list(dict.fromkeys(q.strip() for q in quantizations if q.strip()))
  if not quantizations:
    raise ExportError(f"--quantization: expected one or more of {', '.join(QUANTIZATIONS)}")
  for q in quantizations:
    check_quantization(q)
  return quantizations


def convert(student, quantization: str, calibration_images: Optional[np.ndarray] = None,
            dense_per_channel: bool = False) -> bytes:
  """Converts the Keras model to a `.tflite` flatbuffer (in memory).

  Args:
    student: the loaded model (`source.Student`).
    quantization: float32 | dynamic | float16 | int8.
    calibration_images: uint8 [n, H, W, C] raw pixels (int8 only).
    dense_per_channel: int8 only: per-channel weight scales for dense layers
      too (TFLite's default). Off by default: per-tensor dense scales cost no
      measurable accuracy here and keep ~12 bytes per output unit and tensor out
      of the file (about 11 % of a LeNet-5-half int8 file).

  Returns:
    The serialized model.

  Raises:
    ExportError: an unknown quantization, int8 without calibration images, or
      a failed conversion.
  """
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel

  check_quantization(quantization)
  model = student.model
  shape = [1, *student.image_shape]

  def probabilities(x):
    y = model(x, training=False)
    return y if student.outputs_probabilities else tf.nn.softmax(y, axis=-1)

  if quantization == "int8":
    if calibration_images is None or len(calibration_images) == 0:
      raise ExportError("--quantization=int8: needs calibration images")
    # The float graph takes [0, 1] images; the converter's uint8 input
    # quantization (scale 1/255, zero point 0) turns raw pixels into exactly that.
    signature = tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)

    def serve(x):
      return {OUTPUT_NAME: probabilities(x)}
  else:
    signature = tf.TensorSpec(shape, tf.uint8, name=INPUT_NAME)

    def serve(x):
      return {OUTPUT_NAME: probabilities(data.preprocess(x))}

  with tempfile.TemporaryDirectory(prefix="tf_srkd_savedmodel_") as saved_model_dir:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE_KEY, serve, input_signature=[signature])
    archive.write_out(saved_model_dir, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    if quantization != "float32":
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
      converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
      images = np.asarray(calibration_images, dtype=np.uint8)

      def representative_dataset():
        for i in range(images.shape[0]):
          yield {INPUT_NAME: data.preprocess(images[i:i + 1]).numpy()}

      converter.representative_dataset = representative_dataset
      converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
      converter.inference_input_type = tf.uint8
      converter.inference_output_type = tf.int8
      converter._experimental_disable_per_channel_quantization_for_dense_layers = (  # pylint: disable=protected-access
          not dense_per_channel)
    try:
      with warnings.catch_warnings():
        # The converter's own calibrator still uses tf.lite.Interpreter.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return converter.convert()
    except Exception as e:  # The converter raises ConverterError and others.
      raise ExportError(f"TFLite conversion ({quantization}) of {student.model_ref} failed: "
                        f"{conversion_error(e)}") from e


def conversion_error(error) -> str:
  """`Type: last line` of a converter exception (its last line names the cause)."""
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[-1] if text else ''}"

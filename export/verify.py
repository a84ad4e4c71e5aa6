"""LiteRT verification: run a `.tflite` over the test split and compare it with Keras.

Nothing is written before a model passes here: its accuracy, the Keras model's
accuracy, their argmax agreement, the file size and the median single-image
latency go into the sidecar.
"""

import logging
import time

import numpy as np

from export.errors import ExportError

#: Test images read at a time from a split on disk (256 x 224x224 RGB uint8 pixels = 36.75 MiB).
CHUNK_ROWS = 256


def _quantization_of(detail):
  scale, zero_point = detail["quantization"]
  if scale == 0 and zero_point == 0:
    return None
  return {"scale": float(scale), "zero_point": int(zero_point)}


def io_details(tflite_bytes: bytes) -> dict:
  """Input/output tensors of a `.tflite` model, as the sidecar records them."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

  interpreter = Interpreter(model_content=tflite_bytes)
  (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
  float_tensors = [t["name"] for t in interpreter.get_tensor_details()
                   if np.dtype(t["dtype"]) in (np.float32, np.float16)]
  return {
      "signatures": interpreter.get_signature_list(),
      "input": {"tensor": inp["name"], "shape": [int(d) for d in inp["shape"]],
                "dtype": np.dtype(inp["dtype"]).name, "quantization": _quantization_of(inp)},
      "output": {"tensor": out["name"], "shape": [int(d) for d in out["shape"]],
                 "dtype": np.dtype(out["dtype"]).name, "quantization": _quantization_of(out)},
      "full_integer": not float_tensors,
      "ops": sorted({op["op_name"] for op in interpreter._get_ops_details()}),  # pylint: disable=protected-access
  }


def check_raw_pixel_input(details: dict):
  """An int8 model must take raw uint8 pixels: input scale 1/255, zero point 0."""
  q = details["input"]["quantization"]
  if (details["input"]["dtype"] != "uint8" or q is None or q["zero_point"] != 0
      or abs(q["scale"] * 255.0 - 1.0) > 1e-6):
    raise ExportError(f"int8 export: the input is {details['input']['dtype']} with quantization "
                      f"{q}, not raw uint8 pixels (scale 1/255, zero point 0)")
  if not details["full_integer"]:
    raise ExportError("int8 export: the converted model still has float tensors")


def keras_logits(model, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
  """A Keras model's outputs on raw uint8 images (as the training code sees them)."""
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel

  return data.predict_logits(model, images, batch_size)


def _softmax(logits):
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def allocated_interpreter(tflite_bytes: bytes, num_threads: int = 1):
  """A LiteRT interpreter with its tensors allocated, on XNNPACK where XNNPACK takes the model.

  XNNPACK (LiteRT's default CPU delegate) refuses some valid int8 models when it prepares
  them: a calibration range that collapsed to zero (a ReLU branch that never fired on the
  calibration images gives a scale of ~1e-8) leads to a requantisation factor outside what its
  integer kernels support. LiteRT's built-in kernels run such a model, so verification falls
  back to them and says so, rather than refusing a file that a phone without XNNPACK runs.

  Args:
    tflite_bytes: the model.
    num_threads: interpreter threads.

  Returns:
    (interpreter, refusal): `refusal` is None on XNNPACK, else XNNPACK's error message.
  """
  from ai_edge_litert import interpreter as litert  # pylint: disable=import-outside-toplevel

  interpreter = litert.Interpreter(model_content=tflite_bytes, num_threads=num_threads)
  try:
    interpreter.allocate_tensors()
    return interpreter, None
  except RuntimeError as error:
    if "XNNPACK" not in str(error):
      raise
    refusal = " ".join(str(error).split())
  interpreter = litert.Interpreter(
      model_content=tflite_bytes, num_threads=num_threads,
      experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
  interpreter.allocate_tensors()
  return interpreter, refusal


def verify(tflite_bytes: bytes, images: np.ndarray, labels: np.ndarray,
           keras_outputs: np.ndarray, keras_outputs_are_probabilities: bool = False,
           num_threads: int = 1) -> dict:
  """Runs the `.tflite` on every image (batch 1) in LiteRT and compares with Keras.

  Args:
    tflite_bytes: the model.
    images: uint8 [N, H, W, C] raw test pixels: an array, or a split on disk
      (`tf_srkd.data.streaming.StoredArray`, read `CHUNK_ROWS` rows at a time).
    labels: int [N].
    keras_outputs: the Keras model's logits (or probabilities) on `images`.
    keras_outputs_are_probabilities: `keras_outputs` are already probabilities.
    num_threads: interpreter threads (1: the latency of one phone core).

  Returns:
    Accuracies, argmax agreement, the largest probability difference, the
    median / 90th-percentile single-image `invoke()` latency in milliseconds, and
    which kernels ran (`xnnpack`, or `builtin` with XNNPACK's refusal, see
    `allocated_interpreter`).

  Raises:
    ExportError: the model does not take uint8 images of the test split's shape.
  """
  interpreter, xnnpack_refusal = allocated_interpreter(tflite_bytes, num_threads)
  (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
  expected = [1, *images.shape[1:]]
  if list(inp["shape"]) != expected or np.dtype(inp["dtype"]) != np.uint8:
    raise ExportError(f"the .tflite input is {np.dtype(inp['dtype']).name} {list(inp['shape'])}, "
                      f"expected uint8 {expected}")
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel

  n = images.shape[0]
  probabilities = np.empty((n, int(out["shape"][-1])), np.float32)
  seconds = np.empty(n, np.float64)
  scale, zero_point = out["quantization"]
  for first in range(0, n, CHUNK_ROWS):
    # One image at a time either way; a split on disk is never in memory whole.
    chunk = data.read_range(images, first, min(first + CHUNK_ROWS, n))
    for k in range(chunk.shape[0]):
      interpreter.set_tensor(inp["index"], chunk[k:k + 1])
      start = time.perf_counter()
      interpreter.invoke()
      seconds[first + k] = time.perf_counter() - start
      value = interpreter.get_tensor(out["index"])[0]
      if scale:
        value = scale * (value.astype(np.float32) - zero_point)
      probabilities[first + k] = value
  predicted = probabilities.argmax(axis=-1)
  keras_probabilities = (keras_outputs if keras_outputs_are_probabilities
                         else _softmax(np.asarray(keras_outputs, np.float64)))
  keras_predicted = np.asarray(keras_outputs).argmax(axis=-1)
  agreement = float(np.mean(predicted == keras_predicted))
  return {
      "test_examples": int(n),
      "tflite_test_accuracy": float(np.mean(predicted == labels)),
      "keras_test_accuracy": float(np.mean(keras_predicted == labels)),
      "argmax_agreement": agreement,
      "identical_argmax": bool(agreement == 1.0),
      "max_abs_probability_diff": float(np.max(np.abs(probabilities - keras_probabilities))),
      "latency_ms_median": float(np.median(seconds) * 1e3),
      "latency_ms_p90": float(np.percentile(seconds, 90) * 1e3),
      "num_threads": int(num_threads),
      "kernels": "builtin" if xnnpack_refusal else "xnnpack",
      "xnnpack_refusal": xnnpack_refusal,
  }


def warn_if_xnnpack_refused(name: str, verification: dict):
  """Logs that XNNPACK refused an export (see `verify.allocated_interpreter`)."""
  if not verification.get("xnnpack_refusal"):
    return
  logging.warning(
      "%s export: XNNPACK refused the model (%s); verified on LiteRT's built-in kernels, and the "
      "latency is theirs. An app that applies XNNPACK may fail the same way; the usual cause is "
      "a channel that never activates on the calibration images (more of them: "
      "tf-srkd-export --num_calibration_samples).", name, verification["xnnpack_refusal"])

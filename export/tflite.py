"""Trained student -> `.tflite` for phones, verified in LiteRT.

    python -m export.tflite --model=<run>/students/<mode>/model.keras \
        --quantization=int8 --output=student_int8.tflite
    python -m export.tflite --model=runs:/<run_id>/model --all --output=<dir>
    python -m export.tflite --run_dir=<run> --quantization=int8,float32 [--qat_epochs=1]

The same from Python: `export_model`, `export_all`, `export_run`, `export_qat`.

What a `.tflite` written here is (details in docs/export.md):

  * input `image`: uint8 [1, H, W, C], raw pixels 0..255, the dataset's shape.
    Scaling to [0, 1] is inside the model: a Cast and a multiply for float32 /
    dynamic / float16; for int8 the input tensor's quantization (scale 1/255,
    zero point 0) *is* the scaling, so the model is integer-only end to end.
  * output `probabilities`: [1, num_classes] softmax probabilities (float32;
    int8 with scale 1/256, zero point -128 for int8 models).
  * next to it: `labels.txt` (one class name per line, index = class) and
    `<name>.json`, the sidecar (I/O, quantization parameters, class names,
    source run and the verification numbers).

Verification is part of every export: the converted model runs in
`ai_edge_litert.interpreter.Interpreter` (1 thread, batch 1) over the whole test
split, and its accuracy, the Keras model's accuracy, their argmax agreement, the
file size and the median single-image latency go into the sidecar (and into an
MLflow run when one is given). Nothing is written before conversion and
verification succeed, and every file is written atomically.

Quantization-aware training needs tensorflow-model-optimization, which only
works on tf_keras models and switches the process to legacy Keras when
imported; it therefore runs in a subprocess (`python -m export.qat`, started by
`export_qat`) and is never imported here.
"""

import dataclasses
import functools
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Optional

import numpy as np

from tf_srkd import datasets
from tf_srkd import io_utils

QUANTIZATIONS = ("float32", "dynamic", "float16", "int8")
CALIBRATIONS = ("random", "significant")
DEFAULT_CALIBRATION_SAMPLES = 200
SIDECAR_VERSION = 1
LABELS_FILE = "labels.txt"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
SIGNATURE_KEY = "serving_default"
#: The input quantization that makes an int8 model take raw pixels: q = pixel.
RAW_PIXEL_SCALE = 1.0 / 255.0
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ExportError(ValueError):
  """Bad export input or a failed check; the message says what and where."""


# -- the model to export ---------------------------------------------------------


@dataclasses.dataclass
class Student:
  """A loaded model plus what is known about where it came from.

  Attributes:
    model: the Keras 3 network (logits, or probabilities when it ends in softmax).
    model_ref: what the caller passed (a path or an MLflow URI).
    model_path: the local `.keras` file.
    spec: the dataset's registry entry (shape, class names).
    architecture: registry name of the network (for the tf_keras twin of QAT).
    run_dir: the run's output directory, when the model sits in one.
    role: "student", "teacher" or "model" (a bare file).
    mode: the distillation mode of a student.
    run_config: `<run>/run_config.json` (or the MLflow run's params), else {}.
    source_run_id: the MLflow run the model was downloaded from.
    outputs_probabilities: the network already ends in a softmax.
  """

  model: object
  model_ref: str
  model_path: str
  spec: datasets.DatasetSpec
  architecture: Optional[str]
  run_dir: Optional[str] = None
  role: str = "model"
  mode: Optional[str] = None
  run_config: dict = dataclasses.field(default_factory=dict)
  source_run_id: Optional[str] = None
  outputs_probabilities: bool = False

  @property
  def image_shape(self):
    return tuple(self.spec.image_shape)

  def source(self) -> dict:
    """The sidecar's `source` block."""
    return {
        "model": self.model_ref,
        "model_path": os.path.abspath(self.model_path),
        "run_dir": os.path.abspath(self.run_dir) if self.run_dir else None,
        "role": self.role,
        "mode": self.mode,
        "dataset": self.spec.name,
        "architecture": self.architecture,
        "params": int(self.model.count_params()),
        "mlflow_run_id": self.source_run_id,
        "run_config": self.run_config or None,
    }


def _is_mlflow_uri(ref: str) -> bool:
  return any(ref.startswith(s) for s in MLFLOW_SCHEMES)


def _run_context(model_path):
  """(run_dir, role, mode, run_config) from the output-directory layout."""
  stage_dir = os.path.dirname(os.path.abspath(model_path))
  parent = os.path.dirname(stage_dir)
  if os.path.basename(parent) == "students":
    run_dir, role = os.path.dirname(parent), "student"
    mode = os.path.basename(stage_dir)
    metrics_path = os.path.join(stage_dir, "metrics.json")
    if os.path.exists(metrics_path):
      mode = io_utils.read_json(metrics_path).get("mode", mode)
  elif os.path.basename(stage_dir) == "teacher":
    run_dir, role, mode = parent, "teacher", None
  else:
    return None, "model", None, {}
  config_path = os.path.join(run_dir, "run_config.json")
  run_config = io_utils.read_json(config_path) if os.path.exists(config_path) else {}
  return run_dir, role, mode, run_config


def _download_mlflow_model(uri):
  """Downloads an MLflow model/artifact URI; returns (local .keras, run id, params)."""
  import mlflow  # pylint: disable=import-outside-toplevel

  destination = tempfile.mkdtemp(prefix="tf_srkd_export_")
  try:
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=destination)
  except Exception as e:  # MLflow raises several types for a missing run/artifact.
    raise ExportError(f"--model={uri}: could not download it from MLflow "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
  if os.path.isfile(local):
    found = [local] if local.endswith(".keras") else []
  else:
    found = sorted(os.path.join(d, f) for d, _, files in os.walk(local)
                   for f in files if f.endswith(".keras"))
  if len(found) != 1:
    raise ExportError(f"--model={uri}: expected exactly one .keras file in the MLflow artifact, "
                      f"found {len(found)}")
  run_id, params = None, {}
  if uri.startswith("runs:/"):
    run_id = uri[len("runs:/"):].split("/", 1)[0]
    try:
      run = mlflow.MlflowClient().get_run(run_id)
      params = dict(run.data.params)
      if "mode" in run.data.tags:
        params["mode"] = run.data.tags["mode"]
    except Exception:  # pylint: disable=broad-except
      logging.warning("could not read the params of MLflow run %s", run_id)
  return found[0], run_id, params


def _check_classifier(model, spec, where):
  """Raises ExportError unless `model` maps one image batch to class scores."""
  import keras  # pylint: disable=import-outside-toplevel

  if not isinstance(model, keras.Model):
    raise ExportError(f"{where}: not a Keras model ({type(model).__name__})")
  inputs, outputs = list(model.inputs or []), list(model.outputs or [])
  if len(inputs) != 1 or len(outputs) != 1:
    raise ExportError(f"{where}: not an image classifier: expected one input and one output, "
                      f"got {len(inputs)} and {len(outputs)}")
  in_shape = tuple(inputs[0].shape)[1:]
  out_shape = tuple(outputs[0].shape)[1:]
  if tuple(in_shape) != tuple(spec.image_shape):
    raise ExportError(f"{where}: not a {spec.name} classifier: its input is "
                      f"{(None,) + tuple(in_shape)}, the dataset's images are "
                      f"{(None,) + tuple(spec.image_shape)}")
  if out_shape != (spec.num_classes,):
    raise ExportError(f"{where}: not a {spec.name} classifier: its output is "
                      f"{(None,) + tuple(out_shape)}, expected (None, {spec.num_classes}) class "
                      f"scores")


def _ends_in_softmax(model) -> bool:
  import keras  # pylint: disable=import-outside-toplevel

  last = model.layers[-1] if model.layers else None
  if isinstance(last, keras.layers.Softmax):
    return True
  activation = getattr(last, "activation", None)
  return getattr(activation, "__name__", "") == "softmax"


def load_student(model_ref: str, dataset: Optional[str] = None) -> Student:
  """Loads the model to export and its context.

  Args:
    model_ref: a `.keras` file (e.g. `<run>/students/<mode>/model.keras`), a stage
      directory holding `model.keras`, or an MLflow URI (`runs:/<id>/<path>`).
    dataset: the dataset name; needed only when it cannot be read from the
      run (`run_config.json` or the MLflow run's params).

  Raises:
    ExportError: missing file, unloadable model, unknown dataset, or a model
      that is not a classifier of the dataset's images.
  """
  import keras  # pylint: disable=import-outside-toplevel

  if not model_ref:
    raise ExportError("--model: expected a .keras file, a stage directory or a runs:/ URI")
  source_run_id, run_dir, role, mode, run_config = None, None, "model", None, {}
  if _is_mlflow_uri(model_ref):
    path, source_run_id, params = _download_mlflow_model(model_ref)
    run_config = {k: params[k] for k in ("dataset", "train_examples", "student_model",
                                         "teacher_model", "temperature", "kd_lambda")
                  if k in params}
    mode = params.get("mode")
    role = "student" if mode else "model"
  else:
    path = model_ref
    if os.path.isdir(path):
      path = os.path.join(path, "model.keras")
    if not os.path.isfile(path):
      raise ExportError(f"--model={model_ref}: no such file (expected a .keras model, e.g. "
                        "<run>/students/<mode>/model.keras)")
    run_dir, role, mode, run_config = _run_context(path)
  known = run_config.get("dataset")
  if dataset and known and dataset != known:
    raise ExportError(f"--dataset={dataset}: the model's run was trained on {known}")
  name = dataset or known
  if not name:
    raise ExportError(f"--model={model_ref}: cannot tell which dataset it classifies (no "
                      f"run_config.json next to it); pass --dataset, one of "
                      f"{', '.join(sorted(datasets.DATASETS))}")
  try:
    spec = datasets.get_dataset_spec(name)
  except KeyError as e:
    raise ExportError(f"--dataset={name}: unknown; expected one of "
                      f"{', '.join(sorted(datasets.DATASETS))}") from e
  try:
    model = keras.models.load_model(path, compile=False)
  except Exception as e:  # Keras raises many types for a bad file.
    raise ExportError(f"--model={model_ref}: could not load a Keras model from {path} "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
  _check_classifier(model, spec, f"--model={model_ref}")
  from tf_srkd import models  # pylint: disable=import-outside-toplevel

  architecture = {"student": run_config.get("student_model"),
                  "teacher": run_config.get("teacher_model")}.get(role)
  if not architecture and model.name in models.MODELS:
    architecture = model.name
  return Student(model=model, model_ref=model_ref, model_path=path, spec=spec,
                 architecture=architecture, run_dir=run_dir, role=role, mode=mode,
                 run_config=dict(run_config), source_run_id=source_run_id,
                 outputs_probabilities=_ends_in_softmax(model))


# -- data ------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def load_split(dataset: str, split: str, limit: int = 0):
  """`tf_srkd.data.load_split`, cached: every export of a run reuses the arrays."""
  from tf_srkd import data  # pylint: disable=import-outside-toplevel

  try:
    return data.load_split(datasets.get_dataset_spec(dataset), split, int(limit))
  except data.DataError as e:
    raise ExportError(str(e)) from e


def train_examples_of(student: Student) -> int:
  """How many training examples the model's run used (0: the whole split)."""
  try:
    return int(student.run_config.get("train_examples") or 0)
  except (TypeError, ValueError):
    return 0


def teacher_dir_of(run_dir: str) -> str:
  """The directory holding the run's teacher (`--teacher_dir` runs point elsewhere)."""
  from tf_srkd import config as config_lib  # pylint: disable=import-outside-toplevel
  from tf_srkd import layout  # pylint: disable=import-outside-toplevel

  run = layout.RunDir(run_dir)
  configured = config_lib.read_flagfile(run.flags).teacher_dir if os.path.exists(run.flags) else None
  return layout.teacher_of(run, configured).path


def load_significance(student: Student, significance_path: Optional[str] = None) -> np.ndarray:
  """The teacher's significance of each training sample (by sample id)."""
  path = significance_path
  if not path:
    if not student.run_dir:
      raise ExportError("--calibration=significant: needs the teacher's significance; the model "
                        "is not inside a run directory, so pass --significance=<teacher>/"
                        "significance.npy")
    path = os.path.join(teacher_dir_of(student.run_dir), "significance.npy")
  if not os.path.isfile(path):
    raise ExportError(f"--calibration=significant: no significance file at {path}")
  significance = np.load(path)
  if significance.ndim != 1:
    raise ExportError(f"{path}: expected a 1-D array, got shape {significance.shape}")
  return significance.astype(np.float32)


def calibration_indices(method: str, num_samples: int, num_train: int,
                        significance: Optional[np.ndarray] = None, seed: int = 0) -> np.ndarray:
  """Sample ids of the int8 calibration set.

  `random`: `num_samples` ids drawn without replacement (seeded).
  `significant`: the `num_samples` ids the teacher found most significant
  (ties broken by the lower id, so the choice is deterministic).
  """
  if method not in CALIBRATIONS:
    raise ExportError(f"--calibration={method}: expected one of {', '.join(CALIBRATIONS)}")
  n = min(int(num_samples), int(num_train))
  if method == "random":
    return np.sort(np.random.default_rng(seed).choice(num_train, size=n, replace=False))
  if significance is None or significance.shape[0] != num_train:
    have = None if significance is None else significance.shape[0]
    raise ExportError(f"--calibration=significant: the significance has {have} entries but the "
                      f"run's training split has {num_train} examples")
  return np.argsort(-significance, kind="stable")[:n]


def _with_range_anchor(images: np.ndarray):
  """Makes the calibration set span the pixel range [0, 255] exactly.

  The int8 input's quantization comes from the calibration set's min/max; only
  when it spans [0, 255] is the uint8 input exactly the raw pixel. Real data
  almost always does; when not, one extra sample (a copy of the first one with
  one pixel set to 0 and one to 255) is appended. Returns (images, added).
  """
  if images.min() == 0 and images.max() == 255:
    return images, False
  anchor = images[:1].copy()
  flat = anchor.reshape(-1)
  flat[0], flat[-1] = 0, 255
  return np.concatenate([images, anchor]), True


# -- conversion --------------------------------------------------------------------


def check_quantization(quantization: str):
  if quantization not in QUANTIZATIONS:
    raise ExportError(f"--quantization={quantization}: unknown; expected one of "
                      f"{', '.join(QUANTIZATIONS)}")


def convert(student: Student, quantization: str, calibration_images: Optional[np.ndarray] = None,
            dense_per_channel: bool = False) -> bytes:
  """Converts the Keras model to a `.tflite` flatbuffer (in memory).

  Args:
    student: the loaded model.
    quantization: float32 | dynamic | float16 | int8.
    calibration_images: uint8 [n, H, W, C] raw pixels (int8 only).
    dense_per_channel: int8 only: per-channel weight scales for dense layers
      too (TFLite's default). Off by default: per-tensor dense scales cost no
      measurable accuracy here and keep ~12 bytes per output unit and tensor out
      of the file (about 11 % of a LeNet-5-half int8 file).

  Returns:
    The serialized model.
  """
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from tf_srkd import data  # pylint: disable=import-outside-toplevel

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
                        f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e) else ''}"
                        ) from e


# -- verification ---------------------------------------------------------------------


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


def keras_logits(student: Student, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
  """The Keras model's outputs on raw uint8 images (as the training code sees them)."""
  from tf_srkd import data  # pylint: disable=import-outside-toplevel

  return np.asarray(student.model.predict(data.image_batches(images, batch_size), verbose=0),
                    dtype=np.float32)


def _softmax(logits):
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def verify(tflite_bytes: bytes, images: np.ndarray, labels: np.ndarray,
           keras_outputs: np.ndarray, keras_outputs_are_probabilities: bool = False,
           num_threads: int = 1) -> dict:
  """Runs the `.tflite` on every image (batch 1) in LiteRT and compares with Keras.

  Args:
    tflite_bytes: the model.
    images: uint8 [N, H, W, C] raw test pixels.
    labels: int [N].
    keras_outputs: the Keras model's logits (or probabilities) on `images`.
    keras_outputs_are_probabilities: `keras_outputs` are already probabilities.
    num_threads: interpreter threads (1: the latency of one phone core).

  Returns:
    Accuracies, argmax agreement, the largest probability difference, and the
    median / 90th-percentile single-image `invoke()` latency in milliseconds.
  """
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

  interpreter = Interpreter(model_content=tflite_bytes, num_threads=num_threads)
  interpreter.allocate_tensors()
  (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
  expected = [1, *images.shape[1:]]
  if list(inp["shape"]) != expected or np.dtype(inp["dtype"]) != np.uint8:
    raise ExportError(f"the .tflite input is {np.dtype(inp['dtype']).name} {list(inp['shape'])}, "
                      f"expected uint8 {expected}")
  n = images.shape[0]
  probabilities = np.empty((n, int(out["shape"][-1])), np.float32)
  seconds = np.empty(n, np.float64)
  scale, zero_point = out["quantization"]
  for i in range(n):
    interpreter.set_tensor(inp["index"], images[i:i + 1])
    start = time.perf_counter()
    interpreter.invoke()
    seconds[i] = time.perf_counter() - start
    value = interpreter.get_tensor(out["index"])[0]
    if scale:
      value = scale * (value.astype(np.float32) - zero_point)
    probabilities[i] = value
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
  }


# -- writing -------------------------------------------------------------------------


def sidecar_path(output: str) -> str:
  return os.path.splitext(output)[0] + ".json"


def _versions():
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
  try:
    from importlib import metadata  # pylint: disable=import-outside-toplevel

    versions["ai_edge_litert"] = metadata.version("ai-edge-litert")
  except Exception:  # pylint: disable=broad-except
    pass
  return versions


def build_sidecar(student: Student, output: str, tflite_bytes: bytes, quantization: str,
                  details: dict, verification: dict, calibration: Optional[dict] = None,
                  qat: Optional[dict] = None) -> dict:
  """The JSON written next to the `.tflite` (format documented in docs/export.md)."""
  h, w, c = student.image_shape
  input_q = details["input"]["quantization"]
  output_q = details["output"]["quantization"]
  if quantization == "int8":
    scaling = ("none needed: feed raw pixels; the uint8 input's quantization (scale 1/255, "
               "zero point 0) maps pixel q to q/255, the [0, 1] image the network was trained on")
  else:
    scaling = "none needed: feed raw pixels; Cast + 1/255 scaling run inside the model"
  return {
      "format_version": SIDECAR_VERSION,
      "file": os.path.basename(output),
      "size_bytes": len(tflite_bytes),
      "sha256": hashlib.sha256(tflite_bytes).hexdigest(),
      "quantization": quantization,
      "method": "qat" if qat else ("ptq" if quantization != "float32" else "none"),
      "full_integer": bool(details["full_integer"]),
      "signature": SIGNATURE_KEY,
      "input": {
          "name": INPUT_NAME,
          "tensor": details["input"]["tensor"],
          "shape": details["input"]["shape"],
          "dtype": details["input"]["dtype"],
          "layout": "NHWC",
          "height": h, "width": w, "channels": c,
          "value_range": [0, 255],
          "description": "raw image pixels, batch 1",
          "preprocessing": scaling,
          "quantization": input_q,
      },
      "output": {
          "name": OUTPUT_NAME,
          "tensor": details["output"]["tensor"],
          "shape": details["output"]["shape"],
          "dtype": details["output"]["dtype"],
          "description": "class probabilities (softmax); index i is line i of labels.txt",
          "quantization": output_q,
          "dequantize": ("probability = scale * (q - zero_point)" if output_q else None),
      },
      "class_names": list(student.spec.class_names),
      "labels_file": LABELS_FILE,
      "calibration": calibration,
      "qat": qat,
      "ops": details["ops"],
      "source": student.source(),
      "verification": dict(verification, size_bytes=len(tflite_bytes)),
      "exporter": _versions(),
  }


def write_export(output: str, tflite_bytes: bytes, sidecar: dict, class_names) -> dict:
  """Writes the `.tflite`, `labels.txt` and the sidecar, each atomically (sidecar last)."""
  with io_utils.atomic_path(output, suffix=".tflite") as tmp:
    with open(tmp, "wb") as f:
      f.write(tflite_bytes)
  labels = os.path.join(os.path.dirname(os.path.abspath(output)), LABELS_FILE)
  io_utils.write_text(labels, "".join(f"{name}\n" for name in class_names))
  meta = sidecar_path(output)
  io_utils.write_json(meta, sidecar)
  for path in (output, labels, meta):
    _make_readable(path)
  return {"tflite": output, "labels": labels, "sidecar": meta}


def _make_readable(path):
  """io_utils' temporary files are created 0600; a shipped model should be 0644 (umask)."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o666 & ~umask)


def metric_prefix(key: str) -> str:
  return f"tflite_{key}"


def log_to_mlflow(run_id: str, key: str, result: dict):
  """Logs one export's numbers and files into an existing MLflow run.

  Metrics are `tflite_<key>_{accuracy,keras_accuracy,agreement,size_bytes,
  latency_ms}`; the `.tflite`, its sidecar and labels go under `tflite/`.
  Returns True when everything was logged (failures are warned about, not raised:
  the exported files are already complete).
  """
  try:
    import mlflow  # pylint: disable=import-outside-toplevel

    client = mlflow.MlflowClient()
    v = result["verification"]
    prefix = metric_prefix(key)
    for name, value in (("accuracy", v["tflite_test_accuracy"]),
                        ("keras_accuracy", v["keras_test_accuracy"]),
                        ("agreement", v["argmax_agreement"]),
                        ("size_bytes", v["size_bytes"]),
                        ("latency_ms", v["latency_ms_median"])):
      client.log_metric(run_id, f"{prefix}_{name}", float(value))
    for path in (result["paths"]["tflite"], result["paths"]["sidecar"], result["paths"]["labels"]):
      client.log_artifact(run_id, path, artifact_path="tflite")
    return True
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("could not log the %s export to MLflow run %s: %s", key, run_id, e)
    return False


# -- the export entry points -------------------------------------------------------------


@dataclasses.dataclass
class _Context:
  """Per-model data shared by its exports: test split, Keras outputs, calibration pool."""

  student: Student
  test_images: np.ndarray
  test_labels: np.ndarray
  keras_outputs: np.ndarray


def _context(student: Student, test_examples: int = 0) -> _Context:
  test = load_split(student.spec.name, "test", int(test_examples))
  return _Context(student, test.images, test.labels, keras_logits(student, test.images))


def _calibration_set(student: Student, calibration: str, num_samples: int, seed: int,
                     significance_path: Optional[str]):
  """(uint8 images, sidecar block) for int8 calibration from the training split."""
  if calibration not in CALIBRATIONS:
    raise ExportError(f"--calibration={calibration}: expected one of {', '.join(CALIBRATIONS)}")
  if int(num_samples) < 1:
    raise ExportError(f"--num_calibration_samples={num_samples}: expected an integer >= 1")
  limit = train_examples_of(student)
  significance = None
  if calibration == "significant":
    significance = load_significance(student, significance_path)
    if not limit:
      limit = significance.shape[0]
  train = load_split(student.spec.name, "train", limit)
  ids = calibration_indices(calibration, num_samples, train.size, significance, seed)
  images, anchored = _with_range_anchor(train.images[ids])
  block = {
      "method": calibration,
      "num_samples": int(ids.shape[0]),
      "pool": f"{student.spec.name} train split, first {train.size} examples (the run's "
              f"transfer set)",
      "seed": int(seed) if calibration == "random" else None,
      "range_anchor_added": bool(anchored),
      "class_counts": np.bincount(train.labels[ids], minlength=student.spec.num_classes).tolist(),
  }
  if significance is not None:
    block["mean_significance"] = float(np.mean(significance[ids]))
  return images, block


def _check_output(output: str, what: str = "--output"):
  if not output or not output.endswith(".tflite"):
    raise ExportError(f"{what}={output}: expected a file name ending in .tflite")
  if os.path.isdir(output):
    raise ExportError(f"{what}={output}: is a directory")


def _export_one(ctx: _Context, output: str, quantization: str, *, calibration="random",
                num_calibration_samples=DEFAULT_CALIBRATION_SAMPLES, calibration_seed=0,
                significance_path=None, dense_per_channel=False, mlflow_run_id=None,
                mlflow_key=None) -> dict:
  student = ctx.student
  calibration_images, calibration_block = None, None
  if quantization == "int8":
    calibration_images, calibration_block = _calibration_set(
        student, calibration, num_calibration_samples, calibration_seed, significance_path)
    calibration_block["dense_per_channel"] = bool(dense_per_channel)
  tflite_bytes = convert(student, quantization, calibration_images, dense_per_channel)
  details = io_details(tflite_bytes)
  if quantization == "int8":
    check_raw_pixel_input(details)
  verification = verify(tflite_bytes, ctx.test_images, ctx.test_labels, ctx.keras_outputs,
                        student.outputs_probabilities)
  sidecar = build_sidecar(student, output, tflite_bytes, quantization, details, verification,
                          calibration=calibration_block)
  paths = write_export(output, tflite_bytes, sidecar, student.spec.class_names)
  result = dict(sidecar, paths=paths)
  if mlflow_run_id:
    result["mlflow_logged"] = log_to_mlflow(mlflow_run_id, mlflow_key or quantization, result)
  return result


def check_raw_pixel_input(details: dict):
  """An int8 model must take raw uint8 pixels: input scale 1/255, zero point 0."""
  q = details["input"]["quantization"]
  if (details["input"]["dtype"] != "uint8" or q is None or q["zero_point"] != 0
      or abs(q["scale"] * 255.0 - 1.0) > 1e-6):
    raise ExportError(f"int8 export: the input is {details['input']['dtype']} with quantization "
                      f"{q}, not raw uint8 pixels (scale 1/255, zero point 0)")
  if not details["full_integer"]:
    raise ExportError("int8 export: the converted model still has float tensors")


def export_model(model, output: str, quantization: str = "float32", *,
                 calibration: str = "random",
                 num_calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
                 calibration_seed: int = 0, dataset: Optional[str] = None,
                 significance_path: Optional[str] = None, dense_per_channel: bool = False,
                 test_examples: int = 0, mlflow_run_id: Optional[str] = None) -> dict:
  """Exports one model to one verified `.tflite` (+ labels.txt + sidecar JSON).

  Args:
    model: a `.keras` path, stage directory, `runs:/` URI, or a `Student`.
    output: the `.tflite` file to write.
    quantization: float32 | dynamic | float16 | int8.
    calibration: int8 calibration set: random | significant (the teacher's
      highest-significance training samples).
    num_calibration_samples: size of the int8 calibration set.
    calibration_seed: seed of the random calibration draw.
    dataset: dataset name when the model is not inside a run directory.
    significance_path: significance.npy for `significant` outside a run.
    dense_per_channel: int8: per-channel dense weight scales (see `convert`).
    test_examples: verify on the first K test examples (0: the whole split).
    mlflow_run_id: also log the numbers and files into this MLflow run.

  Returns:
    The sidecar dict plus `paths` (tflite, labels, sidecar).

  Raises:
    ExportError: bad arguments, a bad model, or a failed conversion/check; in
      that case nothing is written.
  """
  check_quantization(quantization)
  _check_output(output)
  if calibration not in CALIBRATIONS:
    raise ExportError(f"--calibration={calibration}: expected one of {', '.join(CALIBRATIONS)}")
  student = model if isinstance(model, Student) else load_student(model, dataset)
  ctx = _context(student, test_examples)
  return _export_one(ctx, output, quantization, calibration=calibration,
                     num_calibration_samples=num_calibration_samples,
                     calibration_seed=calibration_seed, significance_path=significance_path,
                     dense_per_channel=dense_per_channel, mlflow_run_id=mlflow_run_id)


def file_name(quantization: str, qat: bool = False) -> str:
  return f"model_{quantization}{'_qat' if qat else ''}.tflite"


def _check_quantizations(quantizations):
  quantizations = list(dict.fromkeys(q.strip() for q in quantizations if q.strip()))
  if not quantizations:
    raise ExportError(f"--quantization: expected one or more of {', '.join(QUANTIZATIONS)}")
  for q in quantizations:
    check_quantization(q)
  return quantizations


def export_all(model, output_dir: str, quantizations=QUANTIZATIONS, *, qat_epochs: int = 0,
               mlflow_run_id: Optional[str] = None, dataset: Optional[str] = None,
               test_examples: int = 0, qat_options: Optional[dict] = None, **kwargs) -> dict:
  """Exports one model in several quantizations into `output_dir/model_<q>.tflite`.

  With `qat_epochs > 0`, also `model_int8_qat.tflite` (see `export_qat`).
  Keyword arguments are those of `export_model`. Returns {key: result} with key
  the quantization, or `int8_qat`.
  """
  quantizations = _check_quantizations(quantizations)
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ExportError(f"--output={output_dir}: expected a directory for several exports")
  student = model if isinstance(model, Student) else load_student(model, dataset)
  ctx = _context(student, test_examples)
  results = {}
  for q in quantizations:
    results[q] = _export_one(ctx, os.path.join(output_dir, file_name(q)), q,
                             mlflow_run_id=mlflow_run_id, **kwargs)
  if qat_epochs:
    results["int8_qat"] = export_qat(student.model_ref, os.path.join(output_dir,
                                                                      file_name("int8", True)),
                                     qat_epochs=qat_epochs, dataset=dataset,
                                     test_examples=test_examples, mlflow_run_id=mlflow_run_id,
                                     dense_per_channel=kwargs.get("dense_per_channel", False),
                                     **(qat_options or {}))
  return results


def export_run(run_dir: str, quantizations=QUANTIZATIONS, calibration: str = "random", *,
               modes=None, qat_epochs: int = 0, mlflow_run_ids: Optional[dict] = None,
               **kwargs) -> dict:
  """Exports every `students/<mode>/model.keras` of a finished run.

  Files go to `students/<mode>/tflite/model_<q>.tflite` (+ labels.txt and one
  sidecar per file; `model_int8_qat.tflite` when `qat_epochs > 0`).

  Args:
    run_dir: the run's output directory.
    quantizations: subset of QUANTIZATIONS.
    calibration: int8 calibration set, random | significant.
    modes: only these modes (default: every student found).
    qat_epochs: > 0 also runs quantization-aware training (subprocess).
    mlflow_run_ids: optional {mode: MLflow run id} to log each student's exports.
    **kwargs: further `export_model` arguments.

  Returns:
    {mode: {quantization or "int8_qat": result dict}}.
  """
  quantizations = _check_quantizations(quantizations)
  students_dir = os.path.join(run_dir, "students")
  found = sorted(d for d in (os.listdir(students_dir) if os.path.isdir(students_dir) else [])
                 if os.path.isfile(os.path.join(students_dir, d, "model.keras")))
  if modes:
    missing = [m for m in modes if m not in found]
    if missing:
      raise ExportError(f"{run_dir}: no trained student for mode(s) {', '.join(missing)}")
    found = [m for m in found if m in modes]
  if not found:
    raise ExportError(f"{run_dir}: no students/<mode>/model.keras to export")
  results = {}
  for mode in found:
    stage_dir = os.path.join(students_dir, mode)
    results[mode] = export_all(os.path.join(stage_dir, "model.keras"),
                               os.path.join(stage_dir, "tflite"), quantizations,
                               calibration=calibration, qat_epochs=qat_epochs,
                               mlflow_run_id=(mlflow_run_ids or {}).get(mode), **kwargs)
  return results


def export_qat(model: str, output: str, qat_epochs: int = 1, *, qat_learning_rate: float = 1e-4,
               batch_size: int = 0, dataset: Optional[str] = None, test_examples: int = 0,
               dense_per_channel: bool = False, mlflow_run_id: Optional[str] = None,
               seed: int = 0, timeout: Optional[float] = None) -> dict:
  """Quantization-aware training + int8 export, in a subprocess (`python -m export.qat`).

  tensorflow-model-optimization only handles tf_keras models and switches its
  process to legacy Keras, so it never runs in the caller's process. See
  `export/qat.py` for what the subprocess does.

  Returns:
    The QAT export's result (the sidecar dict plus `paths`).

  Raises:
    ExportError: bad arguments or a failed subprocess (its last lines quoted).
  """
  _check_output(output)
  if int(qat_epochs) < 1:
    raise ExportError(f"--qat_epochs={qat_epochs}: expected an integer >= 1")
  if isinstance(model, Student):
    model = model.model_ref
  args = [sys.executable, "-m", "export.qat", f"--model={model}", f"--output={output}",
          f"--qat_epochs={int(qat_epochs)}", f"--qat_learning_rate={qat_learning_rate}",
          f"--batch_size={int(batch_size)}", f"--test_examples={int(test_examples)}",
          f"--seed={int(seed)}", "--dense_per_channel" if dense_per_channel else
          "--nodense_per_channel"]
  if dataset:
    args.append(f"--dataset={dataset}")
  if mlflow_run_id:
    args.append(f"--mlflow_run_id={mlflow_run_id}")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  proc = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)
  if proc.returncode != 0:
    lines = [l for l in (proc.stderr or "").strip().splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    tail = "\n".join(errors or lines[-15:])
    raise ExportError(f"QAT export of {model} failed (exit {proc.returncode}):\n{tail}")
  meta = sidecar_path(output)
  result = io_utils.read_json(meta)
  result["paths"] = {"tflite": output, "sidecar": meta,
                     "labels": os.path.join(os.path.dirname(os.path.abspath(output)), LABELS_FILE)}
  return result


# -- command line ------------------------------------------------------------------------


def format_results(rows) -> str:
  """A fixed-width table of (name, result) pairs."""
  lines = [f"{'export':<34} {'size_KB':>8} {'tflite_acc':>10} {'keras_acc':>9} {'agree':>7} "
           f"{'lat_ms':>7}"]
  for name, r in rows:
    v = r["verification"]
    lines.append(f"{name:<34} {v['size_bytes'] / 1024:>8.1f} {v['tflite_test_accuracy']:>10.4f} "
                 f"{v['keras_test_accuracy']:>9.4f} {v['argmax_agreement']:>7.4f} "
                 f"{v['latency_ms_median']:>7.3f}")
  return "\n".join(lines)


def _define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_string("model", None, "A .keras model (e.g. <run>/students/<mode>/model.keras), "
                      "its directory, or an MLflow URI runs:/<run_id>/<path>.")
  flags.DEFINE_string("run_dir", None, "Export every student of this run into "
                      "students/<mode>/tflite/ (instead of --model).")
  flags.DEFINE_string("quantization", "float32", "float32, dynamic, float16 or int8 (a comma "
                      "list writes several files into the --output directory).")
  flags.DEFINE_bool("all", False, "Write all four quantizations into the --output directory.")
  flags.DEFINE_string("output", None, "The .tflite file (one quantization) or a directory.")
  flags.DEFINE_string("calibration", "random", "int8 calibration set: random training samples, "
                      "or the teacher's most significant ones (significant).")
  flags.DEFINE_integer("num_calibration_samples", DEFAULT_CALIBRATION_SAMPLES,
                       "int8 calibration set size.")
  flags.DEFINE_integer("calibration_seed", 0, "Seed of the random calibration draw.")
  flags.DEFINE_string("significance", None, "significance.npy for --calibration=significant "
                      "when the model is not inside a run directory.")
  flags.DEFINE_string("dataset", None, "Dataset, when the model is not inside a run directory.")
  flags.DEFINE_bool("dense_per_channel", False, "int8: per-channel weight scales for dense "
                    "layers too (bigger file).")
  flags.DEFINE_integer("qat_epochs", 0, "> 0: also quantization-aware training for this many "
                       "epochs and a *_qat int8 export (runs python -m export.qat).")
  flags.DEFINE_float("qat_learning_rate", 1e-4, "Adam learning rate of the QAT fine-tuning.")
  flags.DEFINE_integer("test_examples", 0, "Verify on the first K test examples (0: all).")
  flags.DEFINE_string("mlflow_run_id", None, "Log the numbers and files into this MLflow run.")


def main(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel

  del argv
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

  f = flags.FLAGS
  absl_logging.set_verbosity(absl_logging.WARNING)
  common = dict(calibration=f.calibration, num_calibration_samples=f.num_calibration_samples,
                calibration_seed=f.calibration_seed, significance_path=f.significance,
                dense_per_channel=f.dense_per_channel, test_examples=f.test_examples)
  try:
    quantizations = list(QUANTIZATIONS) if f["all"].value else _check_quantizations(
        f.quantization.split(","))
    if f.calibration not in CALIBRATIONS:
      raise ExportError(f"--calibration={f.calibration}: expected one of "
                        f"{', '.join(CALIBRATIONS)}")
    qat_options = {"qat_learning_rate": f.qat_learning_rate}
    rows = []
    if f.run_dir:
      if f.model:
        raise ExportError("pass either --model or --run_dir, not both")
      if f.mlflow_run_id:
        raise ExportError("--mlflow_run_id: one run per model; with --run_dir use "
                          "export.tflite.export_run(..., mlflow_run_ids={mode: run_id})")
      results = export_run(f.run_dir, quantizations, qat_epochs=f.qat_epochs,
                           dataset=f.dataset, qat_options=qat_options, **common)
      rows = [(f"{mode}/{key}", r) for mode, by_key in results.items() for key, r in by_key.items()]
    else:
      if not f.model:
        raise ExportError("--model (or --run_dir) is required")
      if not f.output:
        raise ExportError("--output is required")
      if len(quantizations) == 1 and not f["all"].value and f.output.endswith(".tflite"):
        rows.append((quantizations[0], export_model(
            f.model, f.output, quantizations[0], dataset=f.dataset,
            mlflow_run_id=f.mlflow_run_id, **common)))
        if f.qat_epochs:
          if quantizations[0] != "int8":
            raise ExportError("--qat_epochs: QAT exports int8; use --quantization=int8 or --all")
          output = os.path.splitext(f.output)[0] + "_qat.tflite"
          rows.append(("int8_qat", export_qat(
              f.model, output, f.qat_epochs, dataset=f.dataset, test_examples=f.test_examples,
              dense_per_channel=f.dense_per_channel, mlflow_run_id=f.mlflow_run_id,
              **qat_options)))
      else:
        if f.output.endswith(".tflite"):
          raise ExportError(f"--output={f.output}: several quantizations need a directory")
        results = export_all(f.model, f.output, quantizations, qat_epochs=f.qat_epochs,
                             dataset=f.dataset, mlflow_run_id=f.mlflow_run_id,
                             qat_options=qat_options, **common)
        rows = list(results.items())
  except ExportError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_results(rows))
  for _, r in rows:
    print(f"wrote {r['paths']['tflite']}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top

  _define_flags()
  app.run(main)

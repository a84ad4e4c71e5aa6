"""Exporting, start to end: resolve the model, calibrate, convert, verify, write, log.

  export_model(model, output, quantization)    one verified .tflite (+ labels, sidecar)
  export_all(model, output_dir, quantizations) several, as output_dir/model_<q>.tflite
  export_run(run_dir, quantizations)           every students/<mode>/ of a run -> its tflite/
  export_qat(model, output)                    QAT + int8, in a subprocess (export.qat)

Each step is its own module (`source`, `calibration`, `convert`, `verify`,
`sidecar`, `mlflow_log`); this one strings them together. The data splits an
export needs are loaded once per call (`ExportData`) and dropped with it; a
split above `max_in_memory_mb` stays on disk as in training (`tf_srkd.data.streaming`):
calibration reads only its rows, verification reads the test split in chunks.

Quantization-aware training needs tensorflow-model-optimization, which only
works on tf_keras models and switches the process to legacy Keras when
imported; it therefore runs in a subprocess and is never imported here.
"""

import dataclasses
import json
import math
import numbers
import os
from typing import Optional

import numpy as np

from export import calibration as calibration_lib
from export import convert as convert_lib
from export import mlflow_log
from export.qat_process import QAT_OBJECTIVES  # pylint: disable=unused-import  # re-exported
from export.qat_process import export_qat
from export import sidecar as sidecar_lib
from export import source
from export import verify as verify_lib
from export.errors import ExportError
from tf_srkd.data import datasets
from tf_srkd.storage import layout


def check_max_in_memory_mb(value: Optional[float]) -> Optional[float]:
  """`value` if it is None (the default) or a number >= 0 (inf: always in memory, as QAT
  asks); ExportError otherwise."""
  if value is not None and not (isinstance(value, numbers.Real) and not isinstance(value, bool)
                                and not math.isnan(value) and value >= 0):
    raise ExportError(f"--max_in_memory_mb={value}: expected a number >= 0")
  return value


def load_split(dataset, split: str, limit: int = 0, max_in_memory_mb: Optional[float] = None):
  """A split of a dataset (a registered name or a resolved `DatasetSpec`), with
  ExportError for a missing one.

  Args:
    dataset: the dataset.
    split: "train" or "test".
    limit: if > 0, only the first `limit` examples.
    max_in_memory_mb: a split whose uint8 pixels exceed this stays on disk
      (`tf_srkd.data.streaming.load`; 0: always); None: the default of tf-srkd's
      `--max_in_memory_mb`.

  Returns:
    `data.SplitArrays`; its `images` an ndarray, or a `streaming.StoredArray`.
  """
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import streaming  # pylint: disable=import-outside-toplevel

  spec = dataset if isinstance(dataset, datasets.DatasetSpec) else datasets.get_dataset_spec(dataset)
  if check_max_in_memory_mb(max_in_memory_mb) is None:
    max_in_memory_mb = streaming.DEFAULT_MAX_IN_MEMORY_MB
  try:
    return streaming.load(spec, split, int(limit), max_in_memory_mb=max_in_memory_mb)
  except data.DataError as e:
    raise ExportError(str(e)) from e


class ExportData:
  """The splits of one dataset (a name or a `DatasetSpec`) that a call's exports share,
  each loaded on first use (on disk above `max_in_memory_mb`, see `load_split`)."""

  def __init__(self, dataset, max_in_memory_mb: Optional[float] = None):
    self.dataset = dataset
    self.max_in_memory_mb = check_max_in_memory_mb(max_in_memory_mb)
    self._splits = {}

  def split(self, name: str, limit: int = 0):
    """The first `limit` examples (0: all) of split `name`, loaded once."""
    key = (name, int(limit))
    if key not in self._splits:
      self._splits[key] = load_split(self.dataset, name, limit, self.max_in_memory_mb)
    return self._splits[key]


@dataclasses.dataclass
class ModelContext:
  """What every export of one model shares: the model, the test split, Keras' outputs.

  `test_images` is an ndarray, or a `streaming.StoredArray` for a test split on disk.
  """

  student: source.Student
  test_images: object
  test_labels: np.ndarray
  keras_outputs: np.ndarray
  data: ExportData


def model_context(student: source.Student, test_examples: int = 0,
                  data: Optional[ExportData] = None,
                  max_in_memory_mb: Optional[float] = None) -> ModelContext:
  """The test split (its first `test_examples`; 0: all) and the Keras model's outputs on it.

  `data` shares splits already loaded; otherwise they are loaded here, on disk
  above `max_in_memory_mb` (see `load_split`).
  """
  data = data if data is not None and data.dataset == student.spec else ExportData(
      student.spec, max_in_memory_mb)
  test = data.split("test", test_examples)
  return ModelContext(student, test.images, test.labels,
                      verify_lib.keras_logits(student.model, test.images), data)


def calibration_images(ctx: ModelContext, method: str, num_samples: int, seed: int,
                       significance_path: Optional[str] = None):
  """(uint8 images, sidecar block) for int8 calibration from the run's transfer set."""
  calibration_lib.check_calibration(method, num_samples)
  student = ctx.student
  limit = source.train_examples_of(student)
  significance = None
  if method == "significant":
    significance = source.load_significance(student, significance_path)
    limit = limit or significance.shape[0]
  return calibration_lib.calibration_set(student.spec, ctx.data.split("train", limit), method,
                                         num_samples, seed, significance)


def verified(ctx: ModelContext, tflite_bytes: bytes, quantization: str):
  """(io details, verification) of a converted model; raises ExportError if it fails."""
  details = verify_lib.io_details(tflite_bytes)
  if quantization == "int8":
    verify_lib.check_raw_pixel_input(details)
  verification = verify_lib.verify(tflite_bytes, ctx.test_images, ctx.test_labels,
                                   ctx.keras_outputs, ctx.student.outputs_probabilities)
  verify_lib.warn_if_xnnpack_refused(quantization, verification)
  return details, verification


def write_and_log(ctx: ModelContext, output: str, tflite_bytes: bytes, quantization: str,
                  details: dict, verification: dict, *, calibration: Optional[dict] = None,
                  qat: Optional[dict] = None, mlflow_run_id: Optional[str] = None,
                  mlflow_key: Optional[str] = None, tracking_uri: Optional[str] = None) -> dict:
  """Writes a verified export and logs it into `mlflow_run_id` (if given).

  Returns:
    The sidecar dict plus `paths` (and `mlflow_logged` when logged).
  """
  sidecar = sidecar_lib.build_sidecar(ctx.student, output, tflite_bytes, quantization, details,
                                      verification, calibration=calibration, qat=qat)
  paths = sidecar_lib.write_export(output, tflite_bytes, sidecar, ctx.student.spec.class_names)
  result = dict(sidecar, paths=paths)
  if mlflow_run_id:
    result["mlflow_logged"] = mlflow_log.log_export(mlflow_run_id, mlflow_key or quantization,
                                                    result, tracking_uri)
  return result


def export_one(ctx: ModelContext, output: str, quantization: str, *, calibration="random",
               num_calibration_samples=calibration_lib.DEFAULT_CALIBRATION_SAMPLES,
               calibration_seed=0, significance_path=None, dense_per_channel=False,
               mlflow_run_id=None, tracking_uri=None) -> dict:
  """One quantization of a loaded model: calibrate, convert, verify, write, log."""
  calibration_set, block = None, None
  if quantization == "int8":
    calibration_set, block = calibration_images(ctx, calibration, num_calibration_samples,
                                                calibration_seed, significance_path)
    block["dense_per_channel"] = bool(dense_per_channel)
  tflite_bytes = convert_lib.convert(ctx.student, quantization, calibration_set,
                                     dense_per_channel)
  details, verification = verified(ctx, tflite_bytes, quantization)
  return write_and_log(ctx, output, tflite_bytes, quantization, details, verification,
                       calibration=block, mlflow_run_id=mlflow_run_id, tracking_uri=tracking_uri)


def export_model(model, output: str, quantization: str = "float32", *,
                 calibration: str = "random",
                 num_calibration_samples: int = calibration_lib.DEFAULT_CALIBRATION_SAMPLES,
                 calibration_seed: int = 0, dataset: Optional[str] = None,
                 significance_path: Optional[str] = None, dense_per_channel: bool = False,
                 test_examples: int = 0, mlflow_run_id: Optional[str] = None,
                 tracking_uri: Optional[str] = None,
                 max_in_memory_mb: Optional[float] = None) -> dict:
  """Exports one model to one verified `.tflite` (+ labels.txt + sidecar JSON).

  Args:
    model: a `.keras` path, stage directory, `runs:/` URI, or a `source.Student`.
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
    tracking_uri: the MLflow store of `mlflow_run_id` and of a `runs:/` model
      (default: $MLFLOW_TRACKING_URI, else MLflow's default).
    max_in_memory_mb: splits above this many MiB of pixels stay on disk
      (`load_split`; None: tf-srkd's default); the results are the same.

  Returns:
    The sidecar dict plus `paths` (tflite, labels, sidecar).

  Raises:
    ExportError: bad arguments, a bad model, or a failed conversion/check; in
      that case nothing is written.
  """
  convert_lib.check_quantization(quantization)
  sidecar_lib.check_output(output)
  calibration_lib.check_calibration(calibration)
  student = (model if isinstance(model, source.Student)
             else source.load_student(model, dataset, tracking_uri))
  return export_one(model_context(student, test_examples, max_in_memory_mb=max_in_memory_mb),
                    output, quantization,
                    calibration=calibration, num_calibration_samples=num_calibration_samples,
                    calibration_seed=calibration_seed, significance_path=significance_path,
                    dense_per_channel=dense_per_channel, mlflow_run_id=mlflow_run_id,
                    tracking_uri=tracking_uri)


def export_all(model, output_dir: str, quantizations=convert_lib.QUANTIZATIONS, *,
               qat_epochs: int = 0, mlflow_run_id: Optional[str] = None,
               dataset: Optional[str] = None, test_examples: int = 0,
               qat_options: Optional[dict] = None, tracking_uri: Optional[str] = None,
               data: Optional[ExportData] = None, max_in_memory_mb: Optional[float] = None,
               **kwargs) -> dict:
  """Exports one model in several quantizations into `output_dir/model_<q>.tflite`.

  With `qat_epochs > 0`, also `model_int8_qat.tflite` (see `export_qat`; QAT
  keeps its splits in memory). Keyword arguments are those of `export_model`;
  `data` shares loaded splits between calls. Returns {key: result} with key the
  quantization, or `int8_qat`.
  """
  quantizations = convert_lib.check_quantizations(quantizations)
  calibration_lib.check_calibration(kwargs.get("calibration", "random"))
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ExportError(f"--output={output_dir}: expected a directory for several exports")
  student = (model if isinstance(model, source.Student)
             else source.load_student(model, dataset, tracking_uri))
  ctx = model_context(student, test_examples, data, max_in_memory_mb)
  results = {}
  for q in quantizations:
    results[q] = export_one(ctx, os.path.join(output_dir, sidecar_lib.file_name(q)), q,
                            mlflow_run_id=mlflow_run_id, tracking_uri=tracking_uri, **kwargs)
  if qat_epochs:
    results["int8_qat"] = export_qat(
        student.model_ref, os.path.join(output_dir, sidecar_lib.file_name("int8", True)),
        qat_epochs=qat_epochs, dataset=dataset, test_examples=test_examples,
        mlflow_run_id=mlflow_run_id, tracking_uri=tracking_uri,
        dense_per_channel=kwargs.get("dense_per_channel", False), **(qat_options or {}))
  return results


def export_run(run_dir: str, quantizations=convert_lib.QUANTIZATIONS, calibration: str = "random",
               *, modes=None, qat_epochs: int = 0, mlflow_run_ids: Optional[dict] = None,
               tracking_uri: Optional[str] = None, max_in_memory_mb: Optional[float] = None,
               export_at_chance: bool = False, **kwargs) -> dict:
  """Exports every `students/<mode>/model.keras` of a finished run.

  A student whose `metrics.json` marks it at chance (`at_chance`: its test accuracy
  is not clearly above 1 / classes) is left out unless `export_at_chance`; the others
  are written first, then ExportError names the ones left out.

  Files go to `students/<mode>/tflite/model_<q>.tflite` (+ labels.txt and one
  sidecar per file; `model_int8_qat.tflite` when `qat_epochs > 0`).

  Args:
    run_dir: the run's output directory.
    quantizations: subset of QUANTIZATIONS.
    calibration: int8 calibration set, random | significant.
    modes: only these modes (default: every student found).
    qat_epochs: > 0 also runs quantization-aware training (subprocess).
    mlflow_run_ids: optional {mode: MLflow run id} to log each student's exports.
    tracking_uri: the MLflow store of those runs (default: the environment's).
    max_in_memory_mb: splits above this many MiB of pixels stay on disk (the
      run's `--max_in_memory_mb`; None: its default).
    export_at_chance: also export students at chance.
    **kwargs: further `export_model` arguments.

  Returns:
    {mode: {quantization or "int8_qat": result dict}}.
  """
  quantizations = convert_lib.check_quantizations(quantizations)
  run = layout.RunDir(run_dir)
  found = run.trained_students()
  if modes:
    missing = [m for m in modes if m not in found]
    if missing:
      raise ExportError(f"{run_dir}: no trained student for mode(s) {', '.join(missing)}")
    found = [m for m in found if m in modes]
  if not found:
    raise ExportError(f"{run_dir}: no students/<mode>/model.keras to export")
  held = [] if export_at_chance else [m for m in found if _at_chance(run.student(m))]
  results, data = {}, None
  for mode in (m for m in found if m not in held):
    stage = run.student(mode)
    student = source.load_student(stage.model, kwargs.get("dataset"), tracking_uri)
    # One load of each split for every student.
    data = data or ExportData(student.spec, max_in_memory_mb)
    results[mode] = export_all(student, stage.tflite, quantizations, calibration=calibration,
                               qat_epochs=qat_epochs, data=data, tracking_uri=tracking_uri,
                               max_in_memory_mb=max_in_memory_mb,
                               mlflow_run_id=(mlflow_run_ids or {}).get(mode), **kwargs)
  if held:
    raise ExportError(f"{run_dir}: not exported: student(s) {', '.join(held)} at chance (their "
                      "metrics.json: at_chance); pass --export_at_chance to export them"
                      + (f"; the others were written ({', '.join(results)})" if results else ""))
  return results


def _at_chance(stage) -> bool:
  """Whether a student's metrics.json marks it at chance."""
  if not os.path.exists(stage.metrics):
    return False
  with open(stage.metrics, encoding="utf-8") as f:
    return bool(json.load(f).get("at_chance"))


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

"""The model to export and where it came from: a `.keras` file, a run's stage, or MLflow.

`load_student` resolves what the caller passed into a `Student`: the loaded
network, its dataset, its architecture's registry name and, when the model
sits in a run directory (`tf_srkd.storage.layout`), the run, its role and mode, the
run's settings and the teacher's significance.
"""

import dataclasses
import os
from typing import Optional

import numpy as np

from export import mlflow_log
from export.errors import ExportError
from tf_srkd.run import config as config_lib
from tf_srkd.run import config_flags
from tf_srkd.data import datasets
from tf_srkd.storage import layout
from tf_srkd.models import zoo as models
from tf_srkd.storage import checked_reads

#: Run settings an MLflow run's params provide in place of run_config.json.
_RUN_PARAMS = ("dataset", "train_examples", "student_model", "teacher_model", "temperature",
               "kd_lambda",
               # The data settings that shape the dataset's spec.
               "train_split", "test_split", "image_size", "channels", "test_folder",
               "validation_fraction", "seed")


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


def _checked(read, *args, **kwargs):
  """`read(*args, **kwargs)` from `tf_srkd.storage.checked_reads`, its refusal as an `ExportError`."""
  try:
    return read(*args, **kwargs)
  except config_lib.ConfigError as e:
    raise ExportError(str(e)) from e


def _run_context(model_path):
  """(run_dir, role, mode, run_config) of a model file, from the run's layout."""
  run, role, mode = layout.locate(model_path)
  if run is None:
    return None, role, None, {}
  if role == "student":
    stage = run.student(mode)
    if os.path.exists(stage.metrics):
      mode = _checked(checked_reads.read_json, stage.metrics).get("mode", mode)
  run_config = (_checked(checked_reads.read_json, run.run_config)
                if os.path.exists(run.run_config) else {})
  return run.path, role, mode, run_config


def _error_line(error) -> str:
  text = str(error)
  return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


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


def load_student(model_ref: str, dataset: Optional[str] = None,
                 tracking_uri: Optional[str] = None) -> Student:
  """Loads the model to export and its context.

  Args:
    model_ref: a `.keras` file (e.g. `<run>/students/<mode>/model.keras`), a stage
      directory holding `model.keras`, or an MLflow URI (`runs:/<id>/<path>`).
    dataset: the dataset name; needed only when it cannot be read from the
      run (`run_config.json` or the MLflow run's params).
    tracking_uri: the MLflow store of an MLflow URI (default: the environment's).

  Raises:
    ExportError: missing file, unloadable model, unknown dataset, or a model
      that is not a classifier of the dataset's images.
  """
  import keras  # pylint: disable=import-outside-toplevel

  if not model_ref:
    raise ExportError("--model: expected a .keras file, a stage directory or a runs:/ URI")
  source_run_id, run_dir, role, mode, run_config = None, None, "model", None, {}
  if mlflow_log.is_mlflow_uri(model_ref):
    path, source_run_id, params = mlflow_log.download_model(model_ref, tracking_uri)
    run_config = {k: params[k] for k in _RUN_PARAMS if k in params}
    mode = params.get("mode")
    role = "student" if mode else "model"
  else:
    path = model_ref
    if os.path.isdir(path):
      path = layout.StageDir(path).model
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
    # The run's data settings (splits, --image_size, folder options) shape the spec.
    spec = datasets.resolve_settings(run_config, name)
  except (datasets.DatasetError, KeyError) as e:
    raise ExportError(str(e) if isinstance(e, datasets.DatasetError) else
                      f"--dataset={name}: unknown") from e
  from tf_srkd.models import app_preprocessing  # pylint: disable=import-outside-toplevel,unused-import  (registers its layer)

  try:
    model = keras.models.load_model(path, compile=False)
  except Exception as e:  # Keras raises many types for a bad file.
    raise ExportError(f"--model={model_ref}: could not load a Keras model from {path} "
                      f"({_error_line(e)})") from e
  _check_classifier(model, spec, f"--model={model_ref}")
  architecture = {"student": run_config.get("student_model"),
                  "teacher": run_config.get("teacher_model")}.get(role)
  if not architecture and model.name in models.MODELS:
    architecture = model.name
  return Student(model=model, model_ref=model_ref, model_path=path, spec=spec,
                 architecture=architecture, run_dir=run_dir, role=role, mode=mode,
                 run_config=dict(run_config), source_run_id=source_run_id,
                 outputs_probabilities=_ends_in_softmax(model))


def train_examples_of(student: Student) -> int:
  """How many training examples the model's run used (0: the whole split)."""
  try:
    return int(student.run_config.get("train_examples") or 0)
  except (TypeError, ValueError):
    return 0


def teacher_dir_of(run_dir: str) -> str:
  """The directory holding the run's teacher (`--teacher_dir` runs point elsewhere)."""
  run = layout.RunDir(run_dir)
  configured = (config_flags.read_flagfile(run.flags).models.teacher_dir
                if os.path.exists(run.flags) else None)
  return layout.teacher_of(run, configured).path


def load_significance(student: Student, significance_path: Optional[str] = None) -> np.ndarray:
  """The teacher's significance of each training sample (by sample id).

  Raises:
    ExportError: no significance file (outside a run, pass `significance_path`),
      or not a 1-D array.
  """
  path = significance_path
  if not path:
    if not student.run_dir:
      raise ExportError("--calibration=significant: needs the teacher's significance; the model "
                        "is not inside a run directory, so pass --significance=<teacher>/"
                        "significance.npy")
    path = layout.StageDir(teacher_dir_of(student.run_dir)).significance
  if not os.path.isfile(path):
    raise ExportError(f"--calibration=significant: no significance file at {path}")
  # Never unpickled; any length (the run's sample count is not known here), in [0, 1].
  significance = _checked(checked_reads.load_array, path, kinds=checked_reads.FLOAT_KINDS,
                          length=None, low=0, high=1)
  return significance.astype(np.float32)

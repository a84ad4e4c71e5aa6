"""One child MLflow run: what the pipeline logs for one trained model.

Per-epoch metrics stream in as epochs end (`log_epoch`); the final metrics go
in at the last epoch's step (`log_final`) and the Keras network is logged as an
MLflow model at that same step (`log_model`), so the model's metrics in the UI
are the run's final ones. Names and units: `mlflow_schema`.
"""

import contextlib
import logging
import os
import tempfile
import time

import keras
import mlflow
import mlflow.keras
import numpy as np

from tf_srkd.tracking import mlflow_schema
from tf_srkd.tracking import plots

#: Images of the test split stored with each model as its `input_example`.
INPUT_EXAMPLE_SIZE = 2
#: Where a TFDS dataset is described: the `source` of the logged inputs.
TFDS_CATALOG = "https://www.tensorflow.org/datasets/catalog"
#: `MlflowClient.log_batch` takes at most this many metrics per call.
_BATCH_LIMIT = 1000


def now_ms() -> int:
  """A metric's timestamp: milliseconds since the epoch."""
  return int(time.time() * 1000)


class TrainingStart(keras.callbacks.Callback):
  """Logs the optimizer's settings and the model summary when training begins.

  What MLflow's Keras callback logs at that point, with the optimizer named by
  its class (`optimizer_name=Adam`) instead of Keras' instance name (`adam_1`).
  Epoch logs do not come from here: the stage's `log_epoch` receives every
  epoch, run or skipped, from the stage's `EpochHistory`.
  """

  def __init__(self, stage):
    super().__init__()
    self.stage = stage
    self.logged = False

  def on_train_begin(self, logs=None):
    if self.logged:  # `fit` runs again after skipped idle epochs.
      return
    self.logged = True
    params = mlflow_schema.optimizer_params(self.model.optimizer)
    self.stage.log_params(params)
    lines = []
    self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    self.stage.log_text("\n".join(lines), "model_summary.txt")


class MlflowStage:
  """One child run: what the pipeline logs for a trained model.

  Args:
    tracker: the `MlflowTracker` (its client, guard and model registry).
    run_id: the child run.
    title: the figures' title.
    name: the stage ("teacher", "student-hybrid"), also the logged model's name.
    tags: the run's tags, also set on the logged model.
    alpha: the stage's self-regulation rate (inf or None: it does not regulate).
    gate: the stage's gate policy (`tf_srkd.core.gates`; one other than self-regulation
      gates the stage whatever its α).
  """

  def __init__(self, tracker, run_id, title="", name="model", tags=None, alpha=None,
               gate=None):
    self.tracker = tracker
    self.run_id = run_id
    self.title = title
    self.name = name
    self.tags = dict(tags or {})
    self.regulate = mlflow_schema.regulates(alpha) or gate not in (None, "self_regulated")
    self.logged_epochs = set()
    self.held_back = {}  # {key: {epoch: value}}: diagnostics logged at the end if they vary.
    self.final_step = 0
    self.model_id = None

  @property
  def client(self):
    return self.tracker.client

  def _guard(self, what, fn, *args, **kwargs):
    return self.tracker.guard(what, fn, *args, **kwargs)

  def _plot(self, what, fn, *args, **kwargs):
    """A figure from `fn`, or None with a warning: plotting never stops a run."""
    try:
      return fn(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("MLflow: could not %s (%s)", what, e)
      return None

  @contextlib.contextmanager
  def _active(self):
    """This run as MLflow's active run, for the calls that only have a fluent form."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == self.run_id:
      yield
    else:
      with mlflow.start_run(run_id=self.run_id, nested=True):
        yield

  def callbacks(self):
    return [TrainingStart(self)]

  def log_params(self, params):
    self._guard("log params", self.client.log_batch, self.run_id,
                params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])

  def log_text(self, text, name):
    self._guard(f"log {name}", self.client.log_text, self.run_id, text, name)

  def log_epoch(self, epoch, logs):
    """One epoch's Keras logs as metrics with step=epoch (0-based); see `mlflow_schema`."""
    now, later = mlflow_schema.split_epoch_metrics(mlflow_schema.epoch_metrics(logs),
                                                   self.regulate)
    for key, value in later.items():
      self.held_back.setdefault(key, {})[int(epoch)] = value
    if now:
      self._log_metrics(f"log epoch {epoch}", now, int(epoch))
    self.logged_epochs.add(int(epoch))
    self.final_step = max(self.final_step, int(epoch))

  def log_history(self, history):
    """Logs the epochs of `history` that the callback did not (resumed or reused stages)."""
    for entry in history or ():
      if int(entry["epoch"]) not in self.logged_epochs:
        self.log_epoch(int(entry["epoch"]), entry)

  def log_metrics(self, metrics, step=None):
    values = {k: float(v) for k, v in metrics.items() if v is not None}
    if values:
      self._log_metrics("log metrics", values, step)

  def log_final(self, metrics):
    """A stage's `metrics.json` as its final metrics (`mlflow_schema.final_metrics`) at
    the last epoch's step, after the kept-back diagnostics that varied (per epoch)."""
    series = mlflow_schema.varying_series(self.held_back)
    stamp = now_ms()
    entries = [mlflow.entities.Metric(k, v, stamp, epoch)
               for k, by_epoch in sorted(series.items()) for epoch, v in sorted(by_epoch.items())]
    for start in range(0, len(entries), _BATCH_LIMIT):
      self._guard("log diagnostics", self.client.log_batch, self.run_id,
                  metrics=entries[start:start + _BATCH_LIMIT], synchronous=True)
    self.held_back = {}
    self.log_metrics(mlflow_schema.final_metrics(metrics, self.regulate), self.final_step)

  def _log_metrics(self, what, values, step):
    """Logs {name: float} at `step` (None: 0) into this stage's run, through the client."""
    stamp = now_ms()
    metrics = [mlflow.entities.Metric(k, v, stamp, step or 0) for k, v in values.items()]
    self._guard(what, self.client.log_batch, self.run_id, metrics=metrics, synchronous=True)

  def log_artifact(self, path, artifact_path=None):
    self._guard(f"log {path}", self.client.log_artifact, self.run_id, path, artifact_path)

  def log_figure(self, figure, name):
    self._guard(f"log {name}", self.client.log_figure, self.run_id, figure, name)

  def log_dict(self, value, name):
    self._guard(f"log {name}", self.client.log_dict, self.run_id, value, name)

  def _log_array(self, name, array):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, name)
      np.save(path, np.asarray(array))
      self.log_artifact(path)

  def log_datasets(self, dataset_name, splits):
    """The (split name, `arrays.SplitArrays`, context) triples of `splits` as the
    run's dataset inputs (`dataset_inputs`)."""
    self._guard("log the datasets", self.client.log_inputs, self.run_id,
                datasets=dataset_inputs(dataset_name, splits))

  def log_model(self, network, dataset_spec, example_images):
    """`mlflow.keras.log_model` at the final step: `mlflow.keras.load_model` gives `network`
    back, and the model carries the run's final metrics and tags, an input example
    (from `example_images`, uint8) and its preprocessing (`model_metadata`)."""
    metadata = model_metadata(dataset_spec, self.tags.get("role"), self.tags.get("mode"))
    example = input_example(example_images)
    model = dict(name=self.name, input_example=example, metadata=metadata, tags=self.tags,
                 step=self.final_step)

    def keep_for_upload():  # The store is away: the model waits on disk for the upload.
      return self.tracker.pending.log_model(self.run_id, network, **model)

    model_id = self._guard("log the model", self._log_model, network, model,
                           offline=keep_for_upload)
    if model_id is not None:
      self.model_id = model_id
      self.tracker.stage_model_ids[self.name] = model_id

  def _log_model(self, network, model):
    with self._active():
      return log_keras_model(network, **model).model_id

  def log_significance(self, significance, labels, class_names):
    """significance.npy + class-wise histograms (the paper's Figures 3-5)."""
    self._log_array("significance.npy", np.asarray(significance, dtype=np.float32))
    figure = self._plot("plot significance", plots.significance_histograms, significance,
                         labels, class_names, title=f"{self.title}: class-wise sample significance")
    if figure is not None:
      self.log_figure(figure, "significance_histograms.png")

  def log_participation(self, counts, history):
    """participation.npy, history.json, the per-epoch participation plot.

    Epochs in `history` that the callback did not log (a resumed stage's
    earlier epochs) are logged here, so the run's metric history is complete.
    """
    self._log_array("participation.npy", np.asarray(counts, dtype=np.int32))
    self.log_history(history)
    if history:
      self.log_dict(list(history), "history.json")
      figure = self._plot("plot participation", plots.participation_plot, history,
                           title=f"{self.title}: participation per epoch")
      if figure is not None:
        self.log_figure(figure, "participation_fraction.png")


class _KerasFlavor:
  """`mlflow.keras` for `Model.log`, creating the model directory before it is saved.

  With an `input_example`, `mlflow.keras.save_model` writes the example into the
  directory before creating it (FileNotFoundError; mlflow/mlflow#16183, open in
  MLflow 3.17); it accepts a directory that exists and is empty.
  """

  __name__ = "mlflow.keras"

  @staticmethod
  def save_model(path, **kwargs):
    kwargs.pop("validate_serving_input", None)  # `Model.log`'s own option, not the flavor's.
    os.makedirs(path, exist_ok=True)
    return mlflow.keras.save_model(path=path, **kwargs)


def log_keras_model(network, *, name, input_example, metadata, tags, step):
  """`mlflow.keras.log_model` into the active run: the run's stage logs, and the upload.

  What `mlflow.keras.log_model` does, through `_KerasFlavor` (see there). No
  serving-input validation: MLflow would reload the model and predict on the
  example, tracing one more predict function per stage, and TensorFlow warns about
  retracing from the third stage on. tests/tracking/test_mlflow_tracking.py loads
  each logged model back and checks its predictions instead.

  Returns:
    MLflow's `ModelInfo` (its `model_id` names the logged model).
  """
  requirements = [f"mlflow=={mlflow.__version__}", f"keras=={keras.__version__}"]
  if keras.backend.backend() == "tensorflow":
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    requirements.append(f"tensorflow=={tf.__version__}")
  # MLflow checks the input example with `predict`: no progress bar on the console.
  interactive = keras.utils.is_interactive_logging_enabled()
  keras.utils.disable_interactive_logging()
  try:
    return mlflow.models.Model.log(
        artifact_path=None, name=name, flavor=_KerasFlavor, model=network,
        signature=_signature(network), input_example=input_example,
        pip_requirements=requirements, metadata=metadata, tags=tags, step=step,
        validate_serving_input=False)
  finally:
    if interactive:
      keras.utils.enable_interactive_logging()


def dataset_inputs(dataset_name, splits):
  """MLflow dataset inputs for (split name, `arrays.SplitArrays`, context) triples.

  Name `<dataset>-<split>[:<examples>]`, MLflow's digest of the arrays, and the
  size (rows) in the profile, so the runs table's Dataset column shows them; the
  context (e.g. `training`, `testing`) as MLflow's context tag.
  """
  from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT  # pylint: disable=import-outside-toplevel

  inputs = []
  for split_name, split, context in splits:
    in_memory = isinstance(split.images, np.ndarray)
    # A split kept on disk (`streaming`) is described by its labels: hashing its images
    # would read them all.
    dataset = mlflow.data.from_numpy(
        split.images if in_memory else split.labels,
        targets=split.labels if in_memory else None, name=f"{dataset_name}-{split_name}",
        source=f"{TFDS_CATALOG}/{dataset_name}").to_dict()
    inputs.append(mlflow.entities.DatasetInput(
        mlflow.entities.Dataset(**dataset),
        tags=[mlflow.entities.InputTag(MLFLOW_DATASET_CONTEXT, context)]))
  return inputs


def model_metadata(dataset_spec, role, mode=None) -> dict:
  """What a logged model's `MLmodel` says about its input and output."""
  metadata = {"preprocessing": mlflow_schema.PREPROCESSING,
              "input_dtype": "float32", "input_shape": list(dataset_spec.image_shape),
              "output": f"logits over {dataset_spec.num_classes} classes (softmax for "
                        "probabilities)",
              "class_names": list(dataset_spec.class_names), "dataset": dataset_spec.name,
              "role": role}
  if mode is not None:
    metadata["mode"] = mode
  return metadata


def input_example(images) -> np.ndarray:
  """The first `INPUT_EXAMPLE_SIZE` uint8 images as the model takes them (float32 / 255).

  `images`: an array, or a split kept on disk (`streaming.StoredArray`, read by range).
  """
  n = min(INPUT_EXAMPLE_SIZE, len(images))
  head = images.read_range(0, n) if hasattr(images, "read_range") else images[:n]
  return np.asarray(head, np.float32) / 255.0


def _signature(network):
  """A tensor signature [-1, *input] -> [-1, *output] for `network`, or None."""
  try:
    from mlflow.models.signature import ModelSignature  # pylint: disable=import-outside-toplevel
    from mlflow.types.schema import Schema, TensorSpec  # pylint: disable=import-outside-toplevel

    def spec(shape, dtype, name=None):
      return Schema([TensorSpec(np.dtype(dtype), (-1,) + tuple(int(d) for d in shape[1:]), name)])

    return ModelSignature(inputs=spec(network.input_shape, network.inputs[0].dtype),
                          outputs=spec(network.output_shape, network.outputs[0].dtype))
  except Exception:  # pylint: disable=broad-except
    return None

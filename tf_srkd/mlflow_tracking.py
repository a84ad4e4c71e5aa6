"""MLflow implementation of the `tracking` interface.

One `python -m tf_srkd.main` invocation is one parent MLflow run; the teacher
and every student are child runs nested under it (`mlflow.parentRunId`). What
lands where:

  parent run    params: every resolved flag; artifacts: flags.txt, summary.json
  child runs    tags: role (teacher|student), mode (students), dataset, model,
                alpha, gate (the gate policy of a self-regulating stage); params: every resolved flag + stage_epochs, stage_alpha;
                per-epoch metrics (step = 0-based epoch): loss, accuracy,
                participation_fraction, eta, cumulative_zeta, compact_backward,
                ce_loss, kd_loss (students); final metrics: test_accuracy, zeta,
                participations, params, wall_time_s; artifacts:
                participation.npy, significance.npy (teacher),
                significance_histograms.png (teacher), participation_fraction.png
                and history.json (self-regulating runs), model_summary.txt; the
                Keras network as an MLflow model named "model"
                (`mlflow.keras.load_model("runs:/<run_id>/model")`).

The per-epoch cumulative zeta is logged as `cumulative_zeta` so that it does
not collide with the final `zeta` metric.

`connect(config)` resolves the tracking URI (`--mlflow_tracking_uri`, else
`$MLFLOW_TRACKING_URI`, else MLflow's default: `sqlite:///mlflow.db` in the
working directory), checks with a short timeout and no retries that the
store answers, and gets or creates the experiment; it raises `TrackingError`
with a one-line message otherwise, so a run fails before any training.

Once connected, every call has a short timeout and no retries. The first one
that fails (say the server goes away for an hour) is warned about in one line;
training goes on, and the tracker stops calling the store: what it could not
log is kept under `<output_dir>/mlflow_pending/` with the command that uploads
it later (`tf_srkd.mlflow_pending`). Every result is on disk anyway.
`connect(config, strict=True)` (the tests) raises instead.
"""

import contextlib
import dataclasses
import logging
import math
import os
import tempfile
import time

import mlflow
import mlflow.keras
import numpy as np

from tf_srkd import layout
from tf_srkd import mlflow_pending
from tf_srkd import mlflow_store
from tf_srkd import plots
from tf_srkd import tracking

#: Keras epoch-log names whose MLflow metric name differs.
EPOCH_METRIC_NAMES = {"zeta": "cumulative_zeta"}


class TrackingError(RuntimeError):
  """MLflow cannot be used as configured; raised by `connect` before any training."""


# -- pure helpers -----------------------------------------------------------------


def format_alpha(alpha) -> str:
  """'0.02', '0.006', 'inf' (the paper's Table I labels); None -> None."""
  if alpha is None:
    return None
  if isinstance(alpha, str):
    return alpha
  alpha = float(alpha)
  return "inf" if math.isinf(alpha) else f"{alpha:g}"


def _param_value(value) -> str:
  if isinstance(value, tuple):
    return ",".join(str(v) for v in value)
  return str(value)


def config_params(config) -> dict:
  """Every field of the resolved `Config` as MLflow params (strings).

  Also `resolved_distill_epochs` and `num_train_examples`, the values the
  flags resolve to.
  """
  params = {f.name: _param_value(getattr(config, f.name)) for f in dataclasses.fields(config)}
  params["resolved_distill_epochs"] = str(config.resolved_distill_epochs)
  params["num_train_examples"] = str(config.num_train_examples)
  return params


def epoch_metrics(logs) -> dict:
  """A Keras epoch-logs dict as MLflow metrics: floats, `zeta` -> `cumulative_zeta`."""
  metrics = {}
  for key, value in (logs or {}).items():
    if key == "epoch":
      continue
    try:
      metrics[EPOCH_METRIC_NAMES.get(key, key)] = float(value)
    except (TypeError, ValueError):
      continue
  return metrics


def parent_run_name(config) -> str:
  return f"{config.dataset} {config.stage} alpha={format_alpha(config.alpha)}"


def stage_run_name(name, model_name, alpha) -> str:
  return f"{name} {model_name} alpha={format_alpha(alpha)}"


# -- connecting -------------------------------------------------------------------


def _get_or_create_experiment(client, name, uri) -> str:
  experiment = client.get_experiment_by_name(name)
  if experiment is None:
    try:
      return client.create_experiment(
          name, artifact_location=mlflow_store.default_artifact_location(uri, name))
    except mlflow.exceptions.MlflowException:
      experiment = client.get_experiment_by_name(name)  # Created meanwhile by another run.
      if experiment is None:
        raise
  if experiment.lifecycle_stage != "active":
    raise TrackingError(
        f"MLflow experiment {name!r} is deleted; restore it (`mlflow experiments restore "
        f"--experiment-id {experiment.experiment_id}`) or pick another --mlflow_experiment")
  return experiment.experiment_id


def connect(config, strict=False):
  """An `MlflowTracker` for `config`, after checking that the store answers.

  Args:
    config: the run's `Config` (`mlflow_tracking_uri`, `experiment_name`).
    strict: raise on any later logging failure instead of warning.

  Returns:
    A connected `MlflowTracker`.

  Raises:
    TrackingError: the tracking store cannot be reached or used; the message
      names the URI and --mlflow_tracking_uri / MLFLOW_TRACKING_URI.
  """
  uri = mlflow_store.resolve_tracking_uri(config.mlflow_tracking_uri)
  try:
    with mlflow_store.fail_fast_http():
      client = mlflow.MlflowClient(tracking_uri=uri)
      experiment_id = _get_or_create_experiment(client, config.experiment_name, uri)
  except TrackingError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise TrackingError(mlflow_store.unreachable(
        uri, e, "start it, or point --mlflow_tracking_uri (or MLFLOW_TRACKING_URI) at a "
        "reachable one, or pass --nomlflow")) from e
  logging.info("MLflow: tracking to %s, experiment %r (id %s)", uri, config.experiment_name,
               experiment_id)
  return MlflowTracker(uri, experiment_id, config.experiment_name, strict=strict)


# -- the tracker ------------------------------------------------------------------


class MlflowTracker:
  """Parent run per invocation, nested child run per stage (see the module doc)."""

  def __init__(self, tracking_uri, experiment_id, experiment_name, strict=False):
    self.tracking_uri = tracking_uri
    self.experiment_id = experiment_id
    self.experiment_name = experiment_name
    self.strict = strict
    self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    self.config = None
    self.disabled = False
    self.parent_run_id = None
    self.stage_run_ids = {}
    self.pending = None  # A `mlflow_pending.PendingLog` once the store stopped answering.

  def stage_run_id(self, name):
    """The child run id of stage `name` ("teacher", "student-<mode>"), or None."""
    return self.stage_run_ids.get(name)

  def guard(self, what, fn, *args, **kwargs):
    """Calls `fn`; a failure raises when strict, else takes the tracker offline.

    Offline (after the first failure), `fn` is not called: a client call is kept
    for a later upload (see `mlflow_pending`), and None is returned.
    """
    if self.pending is None:
      try:
        return fn(*args, **kwargs)
      except Exception as e:  # pylint: disable=broad-except
        if self.strict:
          raise
        if self.config is None:  # Outside a run there is no run directory to keep it in.
          logging.warning("MLflow: could not %s (%s)", what, mlflow_store.short_error(e))
          return None
        self.pending = mlflow_pending.PendingLog(
            layout.RunDir(self.config.output_dir).mlflow_pending, self.tracking_uri)
        logging.warning("MLflow: could not %s (%s); training goes on without MLflow, what is "
                        "not logged is kept in %s", what, mlflow_store.short_error(e),
                        self.pending.directory)
    name = getattr(fn, "__name__", None)
    client_call = name is not None and fn == getattr(self.client, name, None)
    self.pending.add(what, name if client_call else None, args, kwargs)
    return None

  def _base_tags(self, config):
    return {"dataset": config.dataset, "output_dir": os.path.abspath(config.output_dir)}

  def _start(self, what, **kwargs):
    return self.guard(f"start the {what} run", mlflow.start_run,
                      experiment_id=self.experiment_id, **kwargs)

  def _end(self, run_id, error):
    if error is None:
      status = "FINISHED"
    elif isinstance(error, KeyboardInterrupt):
      status = "KILLED"
    else:
      status = "FAILED"
    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
      return
    if self.pending is None:
      self.guard("end the run", mlflow.end_run, status)  # Pops MLflow's run stack first.
    else:
      with contextlib.suppress(Exception):  # Offline: pop the run stack; the call fails fast.
        mlflow.end_run(status)
    if self.pending is not None:
      self.pending.add("end the run", "set_terminated", (run_id, status))

  @contextlib.contextmanager
  def run(self, config, flags_text):
    """The parent run; logs params, flags.txt and (on success) summary.json."""
    # MLflow's run nesting and its Keras callback and log_model are fluent-API
    # only: they see this tracker's store for the length of the run, no longer.
    with mlflow_store.fail_fast_http(mlflow_store.RUN_HTTP_ENV), \
        mlflow_store.fluent_tracking_uri(self.tracking_uri):
      try:
        with self._parent_run(config, flags_text):
          yield self
      finally:
        if self.pending is not None:
          self._upload_pending()

  def _upload_pending(self):
    """Replays what the store missed if it answers again; else prints the upload command."""
    uploaded = mlflow_pending.replay_if_reachable(self.pending)
    if uploaded is None:
      logging.warning("MLflow: %d logging calls were not made; upload them with: %s",
                      len(self.pending), self.pending.upload_command())
      return
    lost = f"; not replayable (on disk only): {', '.join(self.pending.skipped)}" \
        if self.pending.skipped else ""
    logging.warning("MLflow answers again: uploaded the %d logging calls it missed%s",
                    uploaded, lost)

  @contextlib.contextmanager
  def _parent_run(self, config, flags_text):
    self.config = config
    tags = dict(self._base_tags(config), model=config.teacher_model,
                student_model=config.student_model, alpha=format_alpha(config.alpha),
                stage=config.stage, modes=",".join(config.modes))
    active = self._start("parent", run_name=parent_run_name(config), tags=tags,
                         nested=mlflow.active_run() is not None)
    if active is None:
      self.disabled = True  # Could not start: the stages log nothing either.
      yield self
      return
    self.parent_run_id = active.info.run_id
    self.guard("log params", self.client.log_batch, self.parent_run_id,
               params=[mlflow.entities.Param(k, v) for k, v in config_params(config).items()])
    self.guard("log flags.txt", self.client.log_text, self.parent_run_id, flags_text, "flags.txt")
    error = None
    try:
      yield self
      summary = layout.RunDir(config.output_dir).summary
      if os.path.exists(summary):
        self.guard("log summary.json", self.client.log_artifact, self.parent_run_id, summary)
    except BaseException as e:
      error = e
      raise
    finally:
      self._end(self.parent_run_id, error)

  @contextlib.contextmanager
  def stage(self, name, *, role, model_name, mode=None, alpha=None, gate=None):
    """A child run of the parent for one trained model."""
    if self.config is None:
      raise RuntimeError("MlflowTracker.stage() must be called inside MlflowTracker.run()")
    if self.disabled:
      yield tracking.NullStage()
      return
    config = self.config
    tags = dict(self._base_tags(config), role=role, model=model_name, stage=name)
    if mode is not None:
      tags["mode"] = mode
    if alpha is not None:
      tags["alpha"] = format_alpha(alpha)
    if gate is not None:
      tags["gate"] = gate
    active = self._start(name, run_name=stage_run_name(name, model_name, alpha), tags=tags,
                         nested=True)
    if active is None:
      yield tracking.NullStage()
      return
    run_id = active.info.run_id
    self.stage_run_ids[name] = run_id
    epochs = config.epochs if role == "teacher" else config.resolved_distill_epochs
    params = dict(config_params(config), stage_epochs=str(epochs),
                  stage_alpha=format_alpha(alpha) or "None")
    self.guard("log params", self.client.log_batch, run_id,
               params=[mlflow.entities.Param(k, v) for k, v in params.items()])
    error = None
    try:
      yield MlflowStage(self, run_id, title=f"{config.dataset} {name} ({model_name}, "
                        f"α={format_alpha(alpha)})")
    except BaseException as e:
      error = e
      raise
    finally:
      self._end(run_id, error)


class EpochMetrics(mlflow.keras.MlflowCallback):
  """MLflow's Keras callback, for what it logs when training begins.

  `on_train_begin` (MLflow's) logs the optimizer config as params and the model
  summary. Epoch logs do not come from here: the stage's `log_epoch` receives
  every epoch, run or skipped, from the stage's `EpochHistory`.
  """

  def __init__(self, stage):
    import keras  # pylint: disable=import-outside-toplevel

    keras.callbacks.Callback.__init__(self)  # MLflow's __init__ skips it.
    super().__init__(log_every_epoch=True)
    self.stage = stage

  def on_epoch_end(self, epoch, logs=None):
    del epoch, logs  # Logged by `MlflowStage.log_epoch` (an `EpochHistory` listener).


class MlflowStage:
  """One child run: what the pipeline logs for a trained model."""

  def __init__(self, tracker, run_id, title=""):
    self.tracker = tracker
    self.run_id = run_id
    self.title = title
    self.logged_epochs = set()

  @property
  def client(self):
    return self.tracker.client

  def _guard(self, what, fn, *args, **kwargs):
    return self.tracker.guard(what, fn, *args, **kwargs)

  def callbacks(self):
    return [EpochMetrics(self)]

  def log_epoch(self, epoch, logs):
    """One epoch's Keras logs as metrics with step=epoch (0-based)."""
    metrics = epoch_metrics(logs)
    if metrics:
      self._log_metrics(f"log epoch {epoch}", metrics, int(epoch))
    self.logged_epochs.add(int(epoch))

  def log_history(self, history):
    """Logs the epochs of `history` that the callback did not (resumed or reused stages)."""
    for entry in history or ():
      if int(entry["epoch"]) not in self.logged_epochs:
        self.log_epoch(int(entry["epoch"]), entry)

  def log_metrics(self, metrics, step=None):
    values = {k: float(v) for k, v in metrics.items() if v is not None}
    if values:
      self._log_metrics("log metrics", values, step)

  def _log_metrics(self, what, values, step):
    """Logs {name: float} at `step` (None: 0) into this stage's run, through the client."""
    stamp = int(time.time() * 1000)
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

  def log_model(self, network, name="model"):
    """`mlflow.keras.log_model`, so `mlflow.keras.load_model` gives `network` back."""
    self._guard("log the model", self._log_model, network, name)

  def _log_model(self, network, name):
    import keras  # pylint: disable=import-outside-toplevel

    requirements = [f"mlflow=={mlflow.__version__}", f"keras=={keras.__version__}"]
    if keras.backend.backend() == "tensorflow":
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      requirements.append(f"tensorflow=={tf.__version__}")
    active = mlflow.active_run()
    context = (contextlib.nullcontext() if active is not None and active.info.run_id == self.run_id
               else mlflow.start_run(run_id=self.run_id, nested=True))
    with context:
      mlflow.keras.log_model(network, name=name, signature=_signature(network),
                             pip_requirements=requirements)

  def log_significance(self, significance, labels, class_names):
    """significance.npy + class-wise histograms (the paper's Figures 3-5)."""
    self._log_array("significance.npy", np.asarray(significance, dtype=np.float32))
    figure = self._guard("plot significance", plots.significance_histograms, significance,
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
      figure = self._guard("plot participation", plots.participation_plot, history,
                           title=f"{self.title}: participation per epoch")
      if figure is not None:
        self.log_figure(figure, "participation_fraction.png")


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

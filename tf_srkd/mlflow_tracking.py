"""MLflow implementation of the `tracking` interface.

One `python -m tf_srkd.main` invocation is one parent MLflow run; the teacher
and every student are child runs nested under it (`mlflow.parentRunId`). What
lands where:

  parent run    params: every resolved flag; artifacts: flags.txt, summary.json;
                metrics: the summary (`teacher_test_accuracy`, `student_<mode>_zeta`, ...)
  child runs    tags: role (teacher|student), mode (students), dataset, model,
                alpha, stage, gate (the gate policy of a self-regulating stage);
                params: every resolved flag + stage_epochs, stage_alpha,
                optimizer_*; inputs: the train and test splits
                (`mlflow.log_input`); per-epoch and final metrics
                (`mlflow_schema`); artifacts (`mlflow_stage`); the Keras network as
                an MLflow model named after the stage ("teacher", "student-hybrid"),
                logged at the final step so it carries the final metrics
                (`mlflow.keras.load_model("runs:/<run_id>/student-hybrid")`).

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
import json
import logging
import os

import mlflow

from tf_srkd import layout
from tf_srkd import mlflow_pending
from tf_srkd import mlflow_schema
from tf_srkd import mlflow_stage
from tf_srkd import mlflow_store
from tf_srkd import tracking

format_alpha = mlflow_schema.format_alpha
config_params = mlflow_schema.config_params

class TrackingError(RuntimeError):
  """MLflow cannot be used as configured; raised by `connect` before any training."""


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
    self.stage_model_ids = {}  # Stage name -> the id of its logged MLflow model.
    self.pending = None  # A `mlflow_pending.PendingLog` once the store stopped answering.

  def stage_run_id(self, name):
    """The child run id of stage `name` ("teacher", "student-<mode>"), or None."""
    return self.stage_run_ids.get(name)

  def stage_model_id(self, name):
    """The id of the MLflow model logged by stage `name`, or None."""
    return self.stage_model_ids.get(name)

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
    active = self._start("parent", run_name=mlflow_schema.parent_run_name(config), tags=tags,
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
        self._log_summary(summary)
    except BaseException as e:
      error = e
      raise
    finally:
      self._end(self.parent_run_id, error)

  def _log_summary(self, path):
    """summary.json, and its numbers as the parent's metrics (the collapsed runs table)."""
    self.guard("log summary.json", self.client.log_artifact, self.parent_run_id, path)
    with open(path, encoding="utf-8") as f:
      metrics = mlflow_schema.summary_metrics(json.load(f))
    if metrics:
      stamp = mlflow_stage.now_ms()
      self.guard("log the summary metrics", self.client.log_batch, self.parent_run_id,
                 metrics=[mlflow.entities.Metric(k, v, stamp, 0) for k, v in metrics.items()],
                 synchronous=True)

  @contextlib.contextmanager
  def stage(self, name, *, role, model_name, mode=None, alpha=None, gate=None, epochs=None):
    """A child run of the parent for one trained model (`epochs`: the stage's own epoch
    count, e.g. a pre-trained teacher's fine-tuning epochs; None: from the config)."""
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
    active = self._start(name, run_name=mlflow_schema.stage_run_name(name, model_name, alpha),
                         tags=tags, nested=True)
    if active is None:
      yield tracking.NullStage()
      return
    run_id = active.info.run_id
    self.stage_run_ids[name] = run_id
    if epochs is None:
      epochs = config.epochs if role == "teacher" else config.resolved_distill_epochs
    params = dict(config_params(config), stage_epochs=str(epochs),
                  stage_alpha=format_alpha(alpha) or "None")
    self.guard("log params", self.client.log_batch, run_id,
               params=[mlflow.entities.Param(k, v) for k, v in params.items()])
    error = None
    try:
      yield mlflow_stage.MlflowStage(
          self, run_id, title=f"{config.dataset} {name} ({model_name}, α={format_alpha(alpha)})",
          name=name, tags=tags, alpha=alpha, gate=gate)
    except BaseException as e:
      error = e
      raise
    finally:
      self._end(run_id, error)

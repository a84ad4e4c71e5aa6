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
log is kept under `<output_dir>/mlflow_pending/`, runs and models of the stages
that start meanwhile included (`mlflow_pending`), and uploaded at the end of the
run if the store answers again, else by the command printed
(`tf_srkd.tracking.mlflow_replay`). Every result is on disk anyway.
`connect(config, strict=True)` (the tests) raises instead.
"""

import contextlib
import json
import logging
import os

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tf_srkd.storage import layout
from tf_srkd.tracking import mlflow_pending
from tf_srkd.tracking import mlflow_replay
from tf_srkd.tracking import mlflow_schema
from tf_srkd.tracking import mlflow_stage
from tf_srkd.tracking import mlflow_store
from tf_srkd.tracking import base as tracking
from tf_srkd.errors import TrackingError  # pylint: disable=unused-import  (raised here; see errors)

format_alpha = mlflow_schema.format_alpha
config_params = mlflow_schema.config_params

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
    config: the run's `Config` (`tracking.mlflow_tracking_uri`, `experiment_name`).
    strict: raise on any later logging failure instead of warning.

  Returns:
    A connected `MlflowTracker`.

  Raises:
    TrackingError: the tracking store cannot be reached or used; the message
      names the URI and --mlflow_tracking_uri / MLFLOW_TRACKING_URI.
  """
  uri = mlflow_store.resolve_tracking_uri(config.tracking.mlflow_tracking_uri)
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
    self.num_train_examples = None
    self.disabled = False
    self.parent_run_id = None
    self.stage_run_ids = {}
    self.stage_model_ids = {}  # Stage name -> the id of its logged MLflow model.
    self.pending = None  # A `mlflow_pending.PendingLog` once the store stopped answering.

  def stage_run_id(self, name):
    """The child run id of stage `name` ("teacher", "student-<mode>"), or None.

    None too for a run that exists only in the pending log (the store was away).
    """
    run_id = self.stage_run_ids.get(name)
    return None if mlflow_pending.is_placeholder(run_id) else run_id

  def parent_run(self):
    """The parent run's id, or None (also while it exists only in the pending log)."""
    run_id = self.parent_run_id
    return None if mlflow_pending.is_placeholder(run_id) else run_id

  def log_parent_artifact(self, path, artifact_path=None):
    """Adds a file, or a directory's files, to the parent run's artifacts."""
    if self.parent_run_id is None:
      return
    log = self.client.log_artifacts if os.path.isdir(path) else self.client.log_artifact
    self.guard(f"log {os.path.basename(path)}", log, self.parent_run_id, path, artifact_path)

  def stage_model_id(self, name):
    """The id of the MLflow model logged by stage `name`, or None (also if still pending)."""
    model_id = self.stage_model_ids.get(name)
    return None if mlflow_pending.is_placeholder(model_id) else model_id

  def guard(self, what, fn, *args, offline=None, **kwargs):
    """Calls `fn`; a failure raises when strict, else takes the tracker offline.

    Offline (after the first failure), `fn` is not called: `offline()` is, if
    given (it keeps the call its own way and returns what `fn` would have);
    else a client call is kept for the upload (see `mlflow_pending`), and None
    is returned.
    """
    if self.pending is None:
      try:
        return fn(*args, **kwargs)
      except Exception as e:  # pylint: disable=broad-except
        if not self._go_offline(what, e):
          return None
    name = getattr(fn, "__name__", None)
    try:
      if offline is not None:
        return offline()
      client_call = name is not None and fn == getattr(self.client, name, None)
      self.pending.add(what, name if client_call else None, args, kwargs)
    except Exception as e:  # pylint: disable=broad-except  (keeping a call never stops training)
      if self.strict:
        raise
      logging.warning("MLflow: could not keep '%s' for the upload (%s); it is left out", what,
                      mlflow_store.short_error(e))
      self.pending.skipped.append(what)
    return None

  def _go_offline(self, what, error) -> bool:
    """After `what` failed: raises when strict; else starts the pending log (False: no run)."""
    if self.strict:
      raise error
    if self.config is None:  # Outside a run there is no run directory to keep it in.
      logging.warning("MLflow: could not %s (%s)", what, mlflow_store.short_error(error))
      return False
    self.pending = mlflow_pending.PendingLog(
        layout.RunDir(self.config.output_dir).mlflow_pending, self.tracking_uri)
    logging.warning("MLflow: could not %s (%s); training goes on without MLflow, what is "
                    "not logged is kept in %s", what, mlflow_store.short_error(error),
                    self.pending.directory)
    return True

  def _base_tags(self, config):
    return {"dataset": config.data.dataset, "output_dir": os.path.abspath(config.output_dir)}

  def _start(self, what, *, run_name, tags, parent_id=None):
    """Starts a run (nested under `parent_id` if given); returns its id, or None.

    With the store away, the run is kept for the upload under a placeholder id,
    with the tags `mlflow.start_run` would have given it.
    """

    def keep_for_upload():
      from mlflow.tracking.context import registry as context  # pylint: disable=import-outside-toplevel

      resolved = context.resolve_tags(tags)
      if parent_id is not None:
        resolved[MLFLOW_PARENT_RUN_ID] = parent_id
      return self.pending.create_run(self.experiment_id, run_name, resolved,
                                     start_time=mlflow_stage.now_ms())

    def start():
      return mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name, tags=tags,
                              nested=parent_id is not None).info.run_id

    return self.guard(f"start the {what} run", start, offline=keep_for_upload)

  def _end(self, run_id, error):
    if error is None:
      status = "FINISHED"
    elif isinstance(error, KeyboardInterrupt):
      status = "KILLED"
    else:
      status = "FAILED"
    end_time = mlflow_stage.now_ms()
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
      if self.pending is None:
        try:
          mlflow.end_run(status)  # Pops MLflow's run stack first.
          return
        except Exception as e:  # pylint: disable=broad-except
          if not self._go_offline("end the run", e):
            return
      else:
        with contextlib.suppress(Exception):  # Offline: pop the run stack; the call fails fast.
          mlflow.end_run(status)
    elif not mlflow_pending.is_placeholder(run_id):
      return
    if self.pending is not None:
      self.pending.add("end the run", "set_terminated", (run_id, status), {"end_time": end_time})

  @contextlib.contextmanager
  def run(self, config, flags_text, num_train_examples=None):
    """The parent run; logs params, flags.txt and (on success) summary.json.

    Args:
      config: the run's `Config`, logged as params.
      flags_text: the flagfile that reproduces the run, logged as flags.txt.
      num_train_examples: the transfer set's size as resolved (a param).
    """
    self.num_train_examples = num_train_examples
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
    uploaded = mlflow_replay.replay_if_reachable(self.pending)
    if uploaded is None:
      logging.warning("MLflow: %d logging calls were not made; upload them with: %s",
                      mlflow_replay.calls_left(self.pending.directory),
                      self.pending.upload_command())
      return
    ids = mlflow_replay.uploaded_ids(self.pending.directory)
    for table in (self.stage_run_ids, self.stage_model_ids):
      table.update({name: ids.get(value, value) for name, value in table.items()})
    if self.parent_run_id is not None:
      self.parent_run_id = ids.get(self.parent_run_id, self.parent_run_id)
    lost = f"; not replayable (on disk only): {', '.join(self.pending.skipped)}" \
        if self.pending.skipped else ""
    logging.warning("MLflow answers again: uploaded the %d logging calls it missed%s",
                    uploaded, lost)
    self.pending = None  # Nothing is pending: what follows the run (export) may log again.

  @contextlib.contextmanager
  def _parent_run(self, config, flags_text):
    self.config = config
    tags = dict(self._base_tags(config), model=config.models.teacher_model,
                student_model=config.models.student_model, alpha=format_alpha(config.gating.alpha),
                stage=config.stage, modes=",".join(config.training.modes))
    outer = mlflow.active_run()  # The caller's own run, if any, is the parent's parent.
    run_id = self._start("parent", run_name=mlflow_schema.parent_run_name(config), tags=tags,
                         parent_id=outer.info.run_id if outer is not None else None)
    if run_id is None:
      self.disabled = True  # Could not start: the stages log nothing either.
      yield self
      return
    self.parent_run_id = run_id
    self.guard("log params", self.client.log_batch, self.parent_run_id,
               params=[mlflow.entities.Param(k, v) for k, v in config_params(config, self.num_train_examples).items()])
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
    run_id = self._start(name, run_name=mlflow_schema.stage_run_name(name, model_name, alpha),
                         tags=tags, parent_id=self.parent_run_id)
    if run_id is None:
      yield tracking.NullStage()
      return
    self.stage_run_ids[name] = run_id
    if epochs is None:
      epochs = (config.training.epochs if role == "teacher"
                else config.training.resolved_distill_epochs)
    params = dict(config_params(config, self.num_train_examples), stage_epochs=str(epochs),
                  stage_alpha=format_alpha(alpha) or "None")
    self.guard("log params", self.client.log_batch, run_id,
               params=[mlflow.entities.Param(k, v) for k, v in params.items()])
    error = None
    try:
      yield mlflow_stage.MlflowStage(
          self, run_id,
          title=f"{config.data.dataset} {name} ({model_name}, α={format_alpha(alpha)})",
          name=name, tags=tags, alpha=alpha, gate=gate)
    except BaseException as e:
      error = e
      raise
    finally:
      self._end(run_id, error)

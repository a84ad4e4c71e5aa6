"""Experiment tracking interface; `NullTracker` when tracking is off.

The pipeline talks to a tracker through three calls: `run(config)` opens the
parent run, `stage(...)` opens a child run per trained model, and the stage
object logs per-epoch metrics (`log_epoch`, for every epoch whether it ran or
was skipped; `callbacks()` for what a Keras callback sees at the start of
training), final metrics, artifacts and the model. After the run, whoever
logs more into a stage's run (the `--export` of the entry point) asks for
`stage_run_id(name)` and the `tracking_uri`. The MLflow implementation lives
in `mlflow_tracking`.
"""

import contextlib


class NullStage:
  """A stage run that records nothing."""

  def callbacks(self):
    """Keras callbacks for `fit` (beyond the per-epoch logs)."""
    return []

  def log_epoch(self, epoch, logs):
    """One epoch's logs as metrics at step `epoch`."""
    del epoch, logs

  def log_metrics(self, metrics, step=None):
    del metrics, step

  def log_history(self, history):
    """Per-epoch metrics of epochs not seen by the callbacks (resumed/reused stages)."""
    del history

  def log_artifact(self, path, artifact_path=None):
    del path, artifact_path

  def log_params(self, params):
    del params

  def log_final(self, metrics):
    """A stage's `metrics.json` as its final metrics, at the last epoch's step."""
    del metrics

  def log_model(self, network, dataset_spec, example_images):
    """The network as a model at the final step; `example_images` (uint8) give its
    input example, `dataset_spec` its input description."""
    del network, dataset_spec, example_images

  def log_datasets(self, dataset_name, splits):
    """The (split name, `data.SplitArrays`, context) inputs of the stage."""
    del dataset_name, splits

  def log_figure(self, figure, name):
    del figure, name

  def log_dict(self, value, name):
    del value, name

  def log_significance(self, significance, labels, class_names):
    """Significance array + class-wise histograms (the paper's Figures 3-5)."""
    del significance, labels, class_names

  def log_participation(self, counts, history):
    """Participation counts + the per-epoch participation-fraction plot."""
    del counts, history


class NullTracker:
  """Tracking switched off (`--nomlflow`) or a non-chief worker.

  Attributes:
    tracking_uri: where the runs go (None: nowhere).
  """

  tracking_uri = None

  def stage_run_id(self, name):
    """The run id of stage `name` ("teacher", "student-<mode>") of the last run, or None."""
    del name
    return None

  def parent_run(self):
    """The id of the last run's parent run, or None."""
    return None

  @contextlib.contextmanager
  def run(self, config, flags_text, num_train_examples=None):
    """The parent run of one invocation (params from `config`, the flagfile text).

    `num_train_examples` is the transfer set's size as the run resolved it.
    """
    del config, flags_text, num_train_examples
    yield self

  def log_parent_artifact(self, path, artifact_path=None):
    """Adds a file, or a directory's files, to the parent run's artifacts (inside `run`)."""
    del path, artifact_path

  @contextlib.contextmanager
  def stage(self, name, *, role, model_name, mode=None, alpha=None, gate=None, epochs=None):
    """A child run for one trained model; yields the stage object that logs into it."""
    del name, role, model_name, mode, alpha, gate, epochs
    yield NullStage()

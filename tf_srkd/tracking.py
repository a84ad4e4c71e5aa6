"""Experiment tracking interface; `NullTracker` when tracking is off.

The pipeline talks to a tracker through three calls: `run(config)` opens the
parent run, `stage(...)` opens a child run per trained model, and the stage
object logs per-epoch metrics (as Keras callbacks), final metrics, artifacts
and the model. The MLflow implementation lives in `mlflow_tracking`.
"""

import contextlib


class NullStage:
  """A stage run that records nothing."""

  def callbacks(self):
    return []

  def log_metrics(self, metrics, step=None):
    del metrics, step

  def log_history(self, history):
    """Per-epoch metrics of epochs not seen by the callbacks (resumed/reused stages)."""
    del history

  def log_artifact(self, path, artifact_path=None):
    del path, artifact_path

  def log_model(self, network, name="model"):
    del network, name

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
  """Tracking switched off (`--nomlflow`) or a non-chief worker."""

  @contextlib.contextmanager
  def run(self, config, flags_text):
    del config, flags_text
    yield self

  @contextlib.contextmanager
  def stage(self, name, *, role, model_name, mode=None, alpha=None):
    del name, role, model_name, mode, alpha
    yield NullStage()

"""The lines a run prints for its user: what each stage trains, what it gave, where it went.

Plain `print` to stdout, not logging: these lines are the run's report (they
stay when logging is quiet, and a log file of stdout reads as a story:
a header per stage, Keras' per-epoch progress, a result line, the summary,
then where the outputs and the MLflow runs are).
"""

import math
import sys


def say(line: str):
  """One line on stdout, flushed so it keeps its place among Keras' progress lines."""
  print(line, flush=True)


def default_fit_verbosity(stream=None) -> int:
  """Keras `fit` verbosity when `--verbose` is not given.

  1 (a progress bar with ETA) when stdout is a terminal; 2 (one line per
  epoch) when it goes to a file or a pipe, where a bar's carriage returns
  would fill the log.
  """
  stream = sys.stdout if stream is None else stream
  try:
    return 1 if stream.isatty() else 2
  except (AttributeError, ValueError):  # A closed or replaced stream.
    return 2


def _regulation(alpha) -> str:
  alpha = float(alpha)
  return f"self-regulated, alpha={alpha:g}" if math.isfinite(alpha) else "every sample"


def describe_stage(name, role, model_name, mode, alpha, gate=None) -> str:
  """E.g. "teacher lenet5 (self-regulated, alpha=0.02)", "student-hybrid lenet5_half
  (hybrid distillation, self-regulated, alpha=0.02)", "teacher lenet5 (infobatch gate)"."""
  what = "" if role == "teacher" else f"{mode} distillation, "
  regulation = (_regulation(alpha) if gate in (None, "self_regulated")
                else f"{gate} gate")
  return f"{name} {model_name} ({what}{regulation})"


def stage_started(description, samples, epochs):
  """The header of a stage that trains (a resumed one adds a line of its own)."""
  say(f"== {description}: {samples:,} samples, {epochs} epochs")


def stage_reused(description, path):
  """The header of a stage that finished in an earlier run."""
  say(f"== {description}: finished earlier, reusing {path}")


def stage_finished(name, metrics, wall_s):
  """A stage's result: test accuracy, zeta (self-regulating stages) and wall time."""
  parts = [f"test accuracy {metrics['test_accuracy']:.4f}"]
  if metrics.get("zeta") is not None:
    # ζ is a fraction everywhere (MLflow, JSON, the Keras epoch lines); the percent is a gloss.
    parts.append(f"zeta {metrics['zeta']:.4f} ({100 * metrics['zeta']:.2f}%)")
  say(f"== {name} done: {', '.join(parts)}; {wall_s:.1f} s")


#: Where `mlflow ui` serves by default.
MLFLOW_UI_ADDRESS = "http://127.0.0.1:5000"


def training_runs_url(address, experiment_id) -> str:
  """The UI page of an experiment's training runs (MLflow 3 opens on its GenAI view)."""
  return f"{address.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def mlflow_ui_command(tracking_uri, experiment_id=None) -> str:
  """The command (or address) that shows runs tracked at `tracking_uri`."""
  if tracking_uri.startswith(("http://", "https://")):
    where = tracking_uri if experiment_id is None else training_runs_url(tracking_uri,
                                                                         experiment_id)
    return f"open {where} in a browser"
  command = f"mlflow ui --backend-store-uri {tracking_uri}"
  if experiment_id is not None:
    command += f", then open {training_runs_url(MLFLOW_UI_ADDRESS, experiment_id)}"
  return command


def run_finished(output_dir, wall_s, tracker=None):
  """The last lines of a run: wall time, outputs, the MLflow parent run and how to open it."""
  say(f"wall time {wall_s:.1f} s; outputs in {output_dir}")
  run_id = getattr(tracker, "parent_run", lambda: None)()
  if run_id and tracker.tracking_uri:
    say(f"MLflow parent run {run_id} in {tracker.tracking_uri}; "
        "see it with: "
        + mlflow_ui_command(tracker.tracking_uri, getattr(tracker, "experiment_id", None)))

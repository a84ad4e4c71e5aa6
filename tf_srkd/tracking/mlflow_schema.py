"""What a run puts where in MLflow: names of runs, models, params and metrics. Pure.

The one list of the names the tracker logs and the report and docs/mlflow.md read.
Units: ζ (`zeta`, `cumulative_zeta`, `*_zeta`) is always a fraction in [0, 1]
(participations / (epochs · examples), eq. 5); accuracies are fractions too.

Metrics of a child run (teacher or student):

  per epoch (step = 0-based epoch)
    loss, accuracy, ce_loss, kd_loss (students)          training losses / accuracy
    participation_fraction, eta, cumulative_zeta          self-regulating stages only
                                                          (1.0 by construction otherwise)
    compact_backward, gate_from_cache, skipped_epoch      only if they vary within the stage
  final (step = the last epoch, the step the logged model is linked to)
    test_accuracy, zeta, participations, num_parameters, wall_time_s

Imports neither TensorFlow nor MLflow.
"""

import math

#: Keras epoch-log names whose MLflow metric name differs (the final `zeta` is the stage's).
EPOCH_METRIC_NAMES = {"zeta": "cumulative_zeta"}
#: Per-epoch metrics that are constant (1.0) in a stage that does not regulate itself.
REGULATION_KEYS = ("participation_fraction", "eta", "cumulative_zeta")
#: Per-epoch diagnostics that are constant in most stages: kept back until the stage
#: ends and logged per epoch only when they changed.
DIAGNOSTIC_KEYS = ("compact_backward", "gate_from_cache", "skipped_epoch")
#: The final metrics of a stage, in the order docs/mlflow.md lists them.
FINAL_KEYS = ("test_accuracy", "zeta", "participations", "num_parameters", "wall_time_s")
#: The final metrics repeated on the parent run, per stage (`<stage>_<key>`).
SUMMARY_KEYS = ("test_accuracy", "zeta", "num_parameters")
#: How the models logged to MLflow (and the Keras files) expect their input.
PREPROCESSING = ("uint8 pixels divided by 255: float32 in [0, 1], shape [batch, height, "
                 "width, channels]; no mean/std normalisation")


def format_alpha(alpha) -> str:
  """'0.02', '0.006', 'inf' (the paper's Table I labels); None -> None."""
  if alpha is None:
    return None
  if isinstance(alpha, str):
    return alpha
  alpha = float(alpha)
  return "inf" if math.isinf(alpha) else f"{alpha:g}"


def regulates(alpha) -> bool:
  """True for a stage that regulates itself (a finite α)."""
  return alpha is not None and math.isfinite(float(alpha))


def _param_value(value) -> str:
  if isinstance(value, tuple):
    return ",".join(str(v) for v in value)
  return str(value)


def config_params(config, num_train_examples=None) -> dict:
  """Every setting of the resolved `Config` (`Config.settings()`) as MLflow params (strings).

  Also `resolved_distill_epochs` and `num_train_examples` (the transfer set's
  size, as the run resolved it), the values the flags resolve to.
  """
  params = {name: _param_value(value) for name, value in config.settings().items()}
  params["resolved_distill_epochs"] = str(config.training.resolved_distill_epochs)
  params["num_train_examples"] = str(num_train_examples or config.data.train_examples)
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


def split_epoch_metrics(metrics: dict, regulate: bool):
  """(streamed now, kept back until the stage ends) for one epoch's metrics.

  A non-regulating stage drops `REGULATION_KEYS` (1.0 every epoch: its final
  `zeta` is 1.0); `DIAGNOSTIC_KEYS` are kept back (see `varying_series`).
  """
  now, later = {}, {}
  for key, value in metrics.items():
    if key in DIAGNOSTIC_KEYS:
      later[key] = value
    elif regulate or key not in REGULATION_KEYS:
      now[key] = value
  return now, later


def varying_series(series: dict) -> dict:
  """{key: {epoch: value}} restricted to the keys whose value changed across epochs."""
  return {k: v for k, v in series.items() if len(set(v.values())) > 1}


def final_metrics(metrics: dict, regulate: bool) -> dict:
  """A stage's `metrics.json` as its final MLflow metrics (`FINAL_KEYS`).

  ζ is logged for every stage: a stage that does not regulate itself shows
  every sample in every epoch, so ζ = 1.0 and participations = epochs · examples.
  """
  out = {"test_accuracy": metrics.get("test_accuracy"), "zeta": metrics.get("zeta"),
         "participations": metrics.get("participations"),
         "num_parameters": metrics.get("params"), "wall_time_s": metrics.get("wall_time_s")}
  if metrics.get("at_chance"):  # Filter with `metrics.at_chance = 1` in the UI.
    out["at_chance"] = 1.0
  if not regulate and out["zeta"] is None:
    out["zeta"] = 1.0
    if metrics.get("epochs") and metrics.get("train_examples"):
      out["participations"] = int(metrics["epochs"]) * int(metrics["train_examples"])
  return {k: float(v) for k, v in out.items() if v is not None}


def summary_metrics(summary: dict) -> dict:
  """The parent run's metrics from `summary.json`: `<stage>_<key>` for `SUMMARY_KEYS`.

  Stages are `teacher` and `student_<mode>`; a missing ζ (a stage that does
  not regulate itself) is 1.0, as on its child run.
  """
  rows = []
  if isinstance(summary.get("teacher"), dict):
    rows.append(("teacher", summary["teacher"]))
  if isinstance(summary.get("students"), dict):  # Other entry points write other summaries.
    rows += [(f"student_{mode}", m) for mode, m in summary["students"].items()
             if isinstance(m, dict)]
  out = {}
  for stage, m in rows:
    values = {"test_accuracy": m.get("test_accuracy"),
              "zeta": 1.0 if m.get("zeta") is None and m.get("test_accuracy") is not None
                      else m.get("zeta"),
              "num_parameters": m.get("params")}
    out.update({f"{stage}_{k}": float(v) for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)})
  return out


def parent_run_name(config) -> str:
  return f"{config.data.dataset} {config.stage} alpha={format_alpha(config.gating.alpha)}"


def stage_run_name(name, model_name, alpha) -> str:
  return f"{name} {model_name} alpha={format_alpha(alpha)}"


def optimizer_params(optimizer) -> dict:
  """The optimizer's config as `optimizer_*` params, named by its class.

  Keras names instances `adam`, `adam_1`, ... in creation order, which says
  nothing and differs between stages of one run; the class name does not.
  """
  params = {f"optimizer_{k}": str(v) for k, v in optimizer.get_config().items()}
  params["optimizer_name"] = type(optimizer).__name__
  return params

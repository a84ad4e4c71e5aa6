"""MLflow for the export: download a tracked model, log an export into a run.

Both take the tracking URI they talk to (None: `mlflow_store.resolve_tracking_uri`,
i.e. $MLFLOW_TRACKING_URI or MLflow's default); neither touches MLflow's
process-global state.
"""

import logging
import os
import tempfile
from typing import Optional

from export.errors import ExportError
from tf_srkd.tracking import mlflow_store

#: Model references that are MLflow URIs rather than files.
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def is_mlflow_uri(ref: str) -> bool:
  """True for a model reference MLflow resolves (runs:/, models:/, mlflow-artifacts:/)."""
  return any(ref.startswith(s) for s in MLFLOW_SCHEMES)


def metric_prefix(key: str) -> str:
  """`tflite_<key>`: the prefix of one export's metrics in a run."""
  return f"tflite_{key}"


def download_model(uri: str, tracking_uri: Optional[str] = None):
  """Downloads an MLflow model/artifact URI; returns (local .keras, run id, run params).

  The params include the run's `mode` tag, when it has one.

  Raises:
    ExportError: the artifact cannot be downloaded or holds no single .keras file.
  """
  tracking_uri = mlflow_store.resolve_tracking_uri(tracking_uri)
  client = mlflow_store.open_client(tracking_uri)
  destination = tempfile.mkdtemp(prefix="tf_srkd_export_")
  try:
    local = _download(client, uri, destination)
  except Exception as e:  # MLflow raises several types for a missing run/artifact.
    raise ExportError(f"--model={uri}: could not download it from MLflow "
                      f"({type(e).__name__}: {mlflow_store.short_error(e)})") from e
  if os.path.isfile(local):
    found = [local] if local.endswith(".keras") else []
  else:
    found = sorted(os.path.join(d, f) for d, _, files in os.walk(local)
                   for f in files if f.endswith(".keras"))
  if len(found) != 1:
    raise ExportError(f"--model={uri}: expected exactly one .keras file in the MLflow artifact, "
                      f"found {len(found)}")
  run_id, params = None, {}
  if uri.startswith("runs:/"):
    run_id = uri[len("runs:/"):].split("/", 1)[0]
    try:
      run = client.get_run(run_id)
      params = dict(run.data.params)
      if "mode" in run.data.tags:
        params["mode"] = run.data.tags["mode"]
    except Exception:  # pylint: disable=broad-except
      logging.warning("could not read the params of MLflow run %s", run_id)
  return found[0], run_id, params


def _download(client, uri, destination) -> str:
  """Downloads `uri` from `client`'s store into `destination`; returns the local path.

  `runs:/<run>/<name>` names the model a run logged (`mlflow.keras.log_model(name=...)`,
  an MLflow 3 logged model) or else a run artifact. MLflow's own download looks
  the logged model up in the process-global store, so it is looked up here.
  """
  import mlflow  # pylint: disable=import-outside-toplevel

  if uri.startswith("runs:/"):
    run_id, _, path = uri[len("runs:/"):].partition("/")
    name, _, rest = path.partition("/")
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.search_logged_models(experiment_ids=[experiment_id],
                                         filter_string=f"name = '{name}'")
    model = next((m for m in logged if m.source_run_id == run_id), None)
    if model is not None:
      uri = model.artifact_location.rstrip("/") + (f"/{rest}" if rest else "")
  return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=destination,
                                             tracking_uri=client.tracking_uri)


def log_export(run_id: str, key: str, result: dict, tracking_uri: Optional[str] = None) -> bool:
  """Logs one export's numbers and files into an existing MLflow run.

  Metrics are `tflite_<key>_{accuracy,keras_accuracy,agreement,size_bytes,
  latency_ms}`; the `.tflite`, its sidecar and labels go under `tflite/`.

  Returns:
    True when everything was logged (failures are warned about, not raised:
    the exported files are already complete).
  """
  try:
    client = mlflow_store.open_client(mlflow_store.resolve_tracking_uri(tracking_uri))
    v = result["verification"]
    prefix = metric_prefix(key)
    for name, value in (("accuracy", v["tflite_test_accuracy"]),
                        ("keras_accuracy", v["keras_test_accuracy"]),
                        ("agreement", v["argmax_agreement"]),
                        ("size_bytes", v["size_bytes"]),
                        ("latency_ms", v["latency_ms_median"])):
      client.log_metric(run_id, f"{prefix}_{name}", float(value))
    for path in (result["paths"]["tflite"], result["paths"]["sidecar"], result["paths"]["labels"]):
      client.log_artifact(run_id, path, artifact_path="tflite")
    return True
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("could not log the %s export to MLflow run %s: %s", key, run_id,
                    mlflow_store.short_error(e))
    return False

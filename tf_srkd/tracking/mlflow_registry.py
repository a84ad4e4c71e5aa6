"""`--register_model=NAME`: each student's logged model in the MLflow Model Registry.

Student `<mode>` becomes a new version of the registered model `<NAME>-<mode>`
(one registered model per distillation mode, so its versions are comparable
runs of the same recipe). Its TFLite files (`students/<mode>/tflite/`, written
by `--export`) are first added to the logged model's artifacts under
`tflite/`, so the registered version carries them.
"""

import logging
import os

from tf_srkd.tracking import mlflow_store


def registered_name(name: str, mode: str) -> str:
  """The registered model of the `mode` student: `<name>-<mode>`."""
  return f"{name}-{mode}"


def register_student(tracking_uri, name, mode, model_id, tflite_dir=None, tags=None):
  """Registers one student's logged model; returns the `ModelVersion`, or None on failure.

  Args:
    tracking_uri: the store the model was logged to.
    name: `--register_model` (the registered model is `<name>-<mode>`).
    mode: the student's distillation mode.
    model_id: the logged model's id.
    tflite_dir: a directory of exported files to attach (None or missing: none).
    tags: tags of the model version (e.g. the run's).

  Failures are warned about, not raised: every result is on disk already.
  """
  import mlflow  # pylint: disable=import-outside-toplevel

  try:
    client = mlflow_store.open_client(tracking_uri)
    if tflite_dir and os.path.isdir(tflite_dir) and os.listdir(tflite_dir):
      client.log_model_artifacts(model_id, tflite_dir, artifact_path="tflite")
    with mlflow_store.fluent_tracking_uri(tracking_uri), mlflow_store.fail_fast_http(
        mlflow_store.RUN_HTTP_ENV):
      return mlflow.register_model(f"models:/{model_id}", registered_name(name, mode),
                                   tags={k: str(v) for k, v in (tags or {}).items()})
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("MLflow: could not register the %s student as %s (%s)", mode,
                    registered_name(name, mode), mlflow_store.short_error(e))
    return None

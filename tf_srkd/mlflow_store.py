"""Where MLflow runs live, shared by tracking and the report (imports no TensorFlow)."""

import contextlib
import os

#: A reachability check must answer fast: no retries, a short timeout per request.
FAIL_FAST_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def resolve_tracking_uri(flag_value=None) -> str:
  """--mlflow_tracking_uri, else $MLFLOW_TRACKING_URI, else MLflow's own default."""
  import mlflow  # pylint: disable=import-outside-toplevel

  return flag_value or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


@contextlib.contextmanager
def fail_fast_http():
  """No retries and a short timeout for MLflow's REST calls inside the block."""
  saved = {k: os.environ.get(k) for k in FAIL_FAST_ENV}
  os.environ.update(FAIL_FAST_ENV)
  try:
    yield
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value

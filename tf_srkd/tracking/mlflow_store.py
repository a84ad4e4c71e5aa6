"""Where MLflow runs live, and what to say when the store cannot be used.

The one owner of MLflow store resolution for tracking, the report and the
export: the tracking URI (`--mlflow_tracking_uri`, else $MLFLOW_TRACKING_URI,
else MLflow's default), what a `sqlite:///` URI points at, the fail-fast
settings of a reachability check, and the one-line messages for a store that
cannot be reached or read. Functions that log elsewhere take the URI or a
client from here; MLflow's process-global tracking URI is only ever pointed at
a store for the length of a block (`fluent_tracking_uri`), for the few MLflow
calls that have no client form. Imports no TensorFlow.
"""

import contextlib
import os
import re
from typing import Optional
from tf_srkd.errors import StoreError  # pylint: disable=unused-import  (raised here; see errors)

#: A reachability check must answer fast: no retries, a short timeout per request.
FAIL_FAST_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
CHECK_TIMEOUT_S = int(FAIL_FAST_ENV["MLFLOW_HTTP_REQUEST_TIMEOUT"])
#: Every call during a run: no retries, a short timeout, so an outage costs one timeout
#: (then the tracker stops calling) instead of MLflow's ~4 minutes of retries per call.
RUN_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
_URI_ENV = "MLFLOW_TRACKING_URI"
_SQLITE = "sqlite:///"


def resolve_tracking_uri(flag_value: Optional[str] = None) -> str:
  """--mlflow_tracking_uri, else $MLFLOW_TRACKING_URI, else MLflow's own default."""
  import mlflow  # pylint: disable=import-outside-toplevel

  return flag_value or os.environ.get(_URI_ENV) or mlflow.get_tracking_uri()


def sqlite_path(uri: str) -> Optional[str]:
  """The database file of a file-backed `sqlite:///` URI; None for any other store."""
  if not uri.startswith(_SQLITE):
    return None
  path = uri[len(_SQLITE):].split("?", 1)[0]
  if not path or path.startswith(":memory:"):
    return None
  return path


def default_artifact_location(uri: str, experiment_name: str) -> Optional[str]:
  """`<directory of the DB>/mlruns/<experiment>` for a file-backed sqlite store, else None.

  MLflow would put a new experiment's artifacts under `./mlruns` of whatever
  directory the process runs in, wherever the database lives; keeping them next
  to the database instead changes nothing for the default URI
  (`sqlite:///mlflow.db` in the working directory) and keeps an explicit
  `sqlite:////some/dir/mlflow.db` self-contained. None (MLflow's default) for
  other stores: a server decides its own artifact root.
  """
  path = sqlite_path(uri)
  if path is None:
    return None
  safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment_name).strip("._") or "experiment"
  return os.path.join(os.path.dirname(os.path.abspath(path)), "mlruns", safe_name)


def short_error(error, limit: int = 200) -> str:
  """A one-line reason: the OS error inside a connection failure, else the truncated text."""
  text = " ".join(str(error).split()) or type(error).__name__
  os_error = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
  if os_error:
    return os_error.group(0).strip()
  if "Read timed out" in text or "ConnectTimeout" in text:
    return f"no answer within {CHECK_TIMEOUT_S} s"
  return text if len(text) <= limit else text[:limit] + "..."


def unreachable(uri: str, error, advice: str) -> str:
  """The message for a store that does not answer: URI, reason, then `advice`."""
  return f"MLflow tracking store {uri} is not reachable ({short_error(error)}); {advice}"


def open_client(uri: str, must_exist: bool = False):
  """An `MlflowClient` for `uri`.

  Args:
    uri: the tracking URI.
    must_exist: refuse a sqlite database file that does not exist (reading
      one would silently create an empty database).

  Raises:
    StoreError: `must_exist` and the sqlite file is missing.
  """
  import mlflow  # pylint: disable=import-outside-toplevel

  path = sqlite_path(uri)
  if must_exist and path is not None and not os.path.exists(path):
    raise StoreError(f"{uri}: no such MLflow database (check --mlflow_tracking_uri, "
                     "MLFLOW_TRACKING_URI, or the working directory)")
  return mlflow.MlflowClient(tracking_uri=uri)


@contextlib.contextmanager
def fail_fast_http(settings=None):
  """No retries and a short timeout for MLflow's REST calls inside the block.

  Args:
    settings: the environment settings (default `FAIL_FAST_ENV`; `RUN_HTTP_ENV`).
  """
  settings = settings or FAIL_FAST_ENV
  saved = {k: os.environ.get(k) for k in settings}
  os.environ.update(settings)
  try:
    yield
  finally:
    _restore_env(saved)


@contextlib.contextmanager
def fluent_tracking_uri(uri: Optional[str]):
  """Points MLflow's fluent API (`mlflow.start_run`, `mlflow.keras.log_model`, ...) at
  `uri` inside the block (None: MLflow's default), and puts back what was there.

  Only public MLflow calls: `mlflow.set_tracking_uri` also exports the URI to
  $MLFLOW_TRACKING_URI, so afterwards the environment is restored, and an
  explicitly set URI only where it differed from the environment's.
  """
  import mlflow  # pylint: disable=import-outside-toplevel

  saved_env = {_URI_ENV: os.environ.get(_URI_ENV)}
  before = mlflow.get_tracking_uri()
  explicit = before if before != saved_env[_URI_ENV] and mlflow.is_tracking_uri_set() else None
  mlflow.set_tracking_uri(uri)
  try:
    yield
  finally:
    mlflow.set_tracking_uri(explicit)
    _restore_env(saved_env)


def _restore_env(saved):
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value

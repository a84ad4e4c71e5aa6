"""What MLflow could not take during a run, kept on disk, and the command that uploads it.

When the tracking store stops answering mid-run, the tracker stops calling it
(each call would cost a timeout per epoch) and hands every further logging call
to a `PendingLog` instead. The client calls that can be replayed (metrics,
params, texts, dicts, artifacts, run status) are appended to
`<output_dir>/mlflow_pending/calls.json`, rewritten atomically after each one so
a crash loses nothing already kept; artifacts are copied next to it (some are
temporary files). What cannot be replayed (figures, the Keras model, runs that
could not be started) is listed as skipped: every result is on disk anyway.

At the end of the run the tracker tries once to upload the kept calls itself
(`replay_if_reachable`): if the store answers again by then, nothing is left to
do. Otherwise, upload later, once the store answers again:

  python -m tf_srkd.mlflow_pending <output_dir>/mlflow_pending [--tracking_uri=URI]
"""

import json
import os
import shutil
import sys
from typing import Optional

from tf_srkd import io_utils

#: `MlflowClient` methods whose calls are kept and replayed.
REPLAYABLE = ("log_batch", "log_text", "log_dict", "log_artifact", "set_terminated")
CALLS = "calls.json"
ARTIFACTS = "artifacts"


def _entity(value):
  """An MLflow `Metric` / `Param` as a JSON dict; anything else unchanged."""
  if hasattr(value, "key") and hasattr(value, "value"):
    fields = {"key": value.key, "value": value.value}
    if hasattr(value, "step"):
      fields.update(timestamp=value.timestamp, step=value.step)
    return fields
  return value


class PendingLog:
  """The calls a tracker could not make, kept under `directory`.

  Args:
    directory: where `calls.json` and copied artifacts go (created on first use).
    tracking_uri: the store the calls were meant for (recorded for the upload).
  """

  def __init__(self, directory: str, tracking_uri: str):
    self.directory = directory
    self.tracking_uri = tracking_uri
    self.calls = []
    self.skipped = []

  def __len__(self):
    return len(self.calls) + len(self.skipped)

  def add(self, what: str, method: Optional[str], args=(), kwargs=None):
    """Keeps one call of `MlflowClient.<method>` (None, or not replayable: skipped)."""
    kwargs = dict(kwargs or {})
    if method not in REPLAYABLE:
      self.skipped.append(what)
    else:
      args = list(args)
      if method == "log_artifact":  # Copied now: the caller's file may be temporary.
        args[1] = self._keep(args[1])
      for key in ("metrics", "params"):
        if key in kwargs:
          kwargs[key] = [_entity(v) for v in kwargs[key]]
      kwargs.pop("synchronous", None)
      self.calls.append({"method": method, "args": args, "kwargs": kwargs})
    io_utils.write_json(os.path.join(self.directory, CALLS),
                        {"tracking_uri": self.tracking_uri, "calls": self.calls,
                         "skipped": self.skipped})

  def _keep(self, path):
    target_dir = os.path.join(self.directory, ARTIFACTS, str(len(self.calls)))
    os.makedirs(target_dir, exist_ok=True)
    shutil.copy2(path, target_dir)
    return os.path.relpath(os.path.join(target_dir, os.path.basename(path)), self.directory)

  def upload_command(self) -> str:
    return (f"python -m tf_srkd.mlflow_pending {self.directory} "
            f"--tracking_uri={self.tracking_uri}")


def replay(directory: str, tracking_uri: Optional[str] = None) -> int:
  """Makes the kept calls against the store; returns how many were made.

  On success `calls.json` is renamed `calls.uploaded.json`, so a second upload
  does not log everything twice. If a call fails, `calls.json` is rewritten
  with the calls not yet made (so a later upload neither repeats nor loses
  one) and the error is raised.
  """
  import mlflow  # pylint: disable=import-outside-toplevel

  path = os.path.join(directory, CALLS)
  with open(path, encoding="utf-8") as f:
    kept = json.load(f)
  client = mlflow.MlflowClient(tracking_uri=tracking_uri or kept["tracking_uri"])
  for done, call in enumerate(kept["calls"]):
    args, kwargs = list(call["args"]), dict(call["kwargs"])
    if call["method"] == "log_artifact":
      args[1] = os.path.join(directory, args[1])
    if "metrics" in kwargs:
      kwargs["metrics"] = [mlflow.entities.Metric(**m) for m in kwargs["metrics"]]
    if "params" in kwargs:
      kwargs["params"] = [mlflow.entities.Param(**p) for p in kwargs["params"]]
    try:
      getattr(client, call["method"])(*args, **kwargs)
    except Exception:
      io_utils.write_json(path, dict(kept, calls=kept["calls"][done:]))
      raise
  os.replace(path, os.path.join(directory, "calls.uploaded.json"))
  return len(kept["calls"])


def replay_if_reachable(pending: PendingLog):
  """Uploads `pending` now if its store answers; the number of calls made, else None.

  Meant for the end of a run, under `mlflow_store.fail_fast_http`: a store that
  is still away costs one fast failure, and the kept calls stay on disk for
  the printed upload command.
  """
  import mlflow  # pylint: disable=import-outside-toplevel

  if not pending.calls:
    return 0
  try:
    mlflow.MlflowClient(tracking_uri=pending.tracking_uri).search_experiments(max_results=1)
    return replay(pending.directory, pending.tracking_uri)
  except Exception:  # pylint: disable=broad-except
    return None


def main(argv):
  """`python -m tf_srkd.mlflow_pending DIR [--tracking_uri=URI]`."""
  args = [a for a in argv[1:] if not a.startswith("--tracking_uri=")]
  uris = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--tracking_uri=")]
  if len(args) != 1 or not os.path.isfile(os.path.join(args[0], CALLS)):
    print(f"usage: python -m tf_srkd.mlflow_pending <output_dir>/mlflow_pending "
          f"[--tracking_uri=URI] (a directory holding {CALLS})", file=sys.stderr)
    return 2
  print(f"uploaded {replay(args[0], uris[0] if uris else None)} MLflow calls")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))

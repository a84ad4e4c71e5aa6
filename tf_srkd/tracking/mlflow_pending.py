"""What MLflow could not take during a run, kept on disk for a later upload.

When the tracking store stops answering mid-run, the tracker stops calling it
(each call would cost a timeout per epoch) and hands every further logging call
to a `PendingLog` instead, in order, in `<output_dir>/mlflow_pending/calls.json`
(rewritten atomically after each call, so a crash loses nothing already kept):

- client calls (metrics, params, texts, dicts, dataset inputs, status) as JSON;
- files (artifacts, figures as PNG, the Keras model as `.keras`) copied next to it,
  because some are temporary;
- runs started during the outage (a stage, or the parent) as a `create_run` with
  the tags MLflow's fluent API would have given them, under a placeholder id that
  the later calls use until the upload maps it to the real run (the same for the
  logged models' ids).

`mlflow_replay` makes the calls against the store: at the end of the run if it
answers again, else with the command that `upload_command` prints.
"""

import json
import os
import shutil
import time
import uuid
from typing import Optional

from tf_srkd.storage import io_utils

#: `MlflowClient` methods whose calls are kept as they are (entities as JSON).
CLIENT_METHODS = ("log_batch", "log_text", "log_dict", "log_artifact", "log_artifacts",
                  "log_inputs", "set_terminated")
#: Kept under other names: the figure as a PNG artifact, the run and model as placeholders.
KEPT_AS = {"log_figure": "log_artifact"}
CALLS = "calls.json"
UPLOADED = "calls.uploaded.json"
ARTIFACTS = "artifacts"
#: Placeholder ids start with this; real MLflow ids are hex.
PLACEHOLDER = "pending-"
#: The tag a run created by the upload carries: where its calls were kept.
REPLAYED_TAG = "tf_srkd.replayed_from"


def is_placeholder(value) -> bool:
  """Whether `value` is a run or model id that exists only in a pending log."""
  return isinstance(value, str) and value.startswith(PLACEHOLDER)


def _entity(value):
  """An MLflow `Metric` / `Param` / `DatasetInput` as a JSON dict; anything else unchanged."""
  if hasattr(value, "dataset") and hasattr(value, "tags"):  # DatasetInput
    d = value.dataset
    return {"dataset": {"name": d.name, "digest": d.digest, "source_type": d.source_type,
                        "source": d.source, "schema": d.schema, "profile": d.profile},
            "tags": [{"key": t.key, "value": t.value} for t in value.tags]}
  if hasattr(value, "key") and hasattr(value, "value"):
    fields = {"key": value.key, "value": value.value}
    if hasattr(value, "step"):
      fields.update(timestamp=value.timestamp, step=value.step)
    return fields
  return value


def _custom_modules(network):
  """The modules of `network`'s layers that are not Keras' own (imported before loading)."""
  modules, stack = set(), [network]
  while stack:
    layer = stack.pop()
    module = type(layer).__module__
    if not module.startswith(("keras", "tf_keras", "tensorflow")):
      modules.add(module)
    stack.extend(getattr(layer, "layers", []))
  return sorted(modules)


class PendingLog:
  """The calls a tracker could not make, kept under `directory`.

  Args:
    directory: where `calls.json` and the kept files go (created on first use).
    tracking_uri: the store the calls were meant for (recorded for the upload).
  """

  def __init__(self, directory: str, tracking_uri: str):
    self.directory = directory
    self.tracking_uri = tracking_uri
    self.log_id = uuid.uuid4().hex
    self.calls = []
    self.skipped = []
    kept = os.path.join(directory, CALLS)
    if os.path.isfile(kept):
      # An earlier attempt's calls, not uploaded yet: this run's calls follow them (their
      # placeholders and kept files are numbered on), so the upload makes both.
      try:
        with open(kept, encoding="utf-8") as f:
          earlier = json.load(f)
        self.log_id = earlier.get("log_id", self.log_id)
        self.calls = list(earlier["calls"])
        self.skipped = list(earlier.get("skipped", []))
      except (OSError, ValueError, KeyError, TypeError):  # Damaged: set aside, never lost.
        os.replace(kept, os.path.join(directory, f"calls.unreadable.{self.log_id}.json"))

  def __len__(self):
    return len(self.calls) + len(self.skipped)

  def add(self, what: str, method: Optional[str], args=(), kwargs=None):
    """Keeps one call of `MlflowClient.<method>` (None, or unknown: listed as skipped)."""
    kwargs = dict(kwargs or {})
    kwargs.pop("synchronous", None)
    args = list(args)
    if method == "log_figure":  # (run_id, figure, name): the figure as the PNG it becomes.
      run_id, figure, name = args[0], args[1], args[2]
      folder = self._new_folder()
      path = os.path.join(folder, os.path.basename(name))
      figure.savefig(path)
      method = KEPT_AS["log_figure"]
      args = [run_id, os.path.relpath(path, self.directory), os.path.dirname(name) or None]
    elif method in ("log_artifact", "log_artifacts"):  # Copied now: it may be temporary.
      args[1] = self._keep(args[1])
    elif method not in CLIENT_METHODS:
      self.skipped.append(what)
      self._write()
      return
    for key in ("metrics", "params", "datasets"):
      if key in kwargs:
        kwargs[key] = [_entity(v) for v in kwargs[key]]
    self._append({"method": method, "args": args, "kwargs": kwargs})

  def create_run(self, experiment_id: str, run_name: str, tags: dict,
                 start_time: Optional[int] = None) -> str:
    """Keeps the creation of a run; returns the placeholder id its later calls use."""
    placeholder = f"{PLACEHOLDER}run-{len(self.calls)}"
    self._append({"method": "create_run", "placeholder": placeholder, "args": [],
                  "kwargs": {"experiment_id": experiment_id, "run_name": run_name,
                             "tags": {k: str(v) for k, v in tags.items()},
                             "start_time": start_time or int(time.time() * 1000)}})
    return placeholder

  def log_model(self, run_id: str, network, *, name: str, input_example, metadata: dict,
                tags: dict, step: int) -> str:
    """Keeps `network` (as `.keras`) to be logged as MLflow model `name` of `run_id`.

    Returns:
      The placeholder id of the logged model.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel
    from mlflow.tracking.context import registry as context  # pylint: disable=import-outside-toplevel

    # The source tags of this process, as MLflow would have put them on the model now.
    tags = context.resolve_tags(tags)
    folder = self._new_folder()
    network.save(os.path.join(folder, "model.keras"))
    np.save(os.path.join(folder, "input_example.npy"), np.asarray(input_example))
    placeholder = f"{PLACEHOLDER}model-{len(self.calls)}"
    self._append({"method": "log_model", "placeholder": placeholder, "args": [run_id],
                  "kwargs": {"folder": os.path.relpath(folder, self.directory), "name": name,
                             "metadata": metadata, "tags": {k: str(v) for k, v in tags.items()},
                             "step": int(step), "modules": _custom_modules(network)}})
    return placeholder

  def _new_folder(self):
    folder = os.path.join(self.directory, ARTIFACTS, str(len(self.calls)))
    os.makedirs(folder, exist_ok=True)
    return folder

  def _keep(self, path):
    target = os.path.join(self._new_folder(), os.path.basename(os.path.normpath(path)))
    if os.path.isdir(path):
      shutil.copytree(path, target)
    else:
      shutil.copy2(path, target)
    return os.path.relpath(target, self.directory)

  def _append(self, call):
    self.calls.append(call)
    self._write()

  def _write(self):
    io_utils.write_json(os.path.join(self.directory, CALLS),
                        {"tracking_uri": self.tracking_uri, "log_id": self.log_id,
                         "calls": self.calls, "skipped": self.skipped})

  def upload_command(self) -> str:
    return (f"python -m tf_srkd.tracking.mlflow_replay {self.directory} "
            f"--tracking_uri={self.tracking_uri}")

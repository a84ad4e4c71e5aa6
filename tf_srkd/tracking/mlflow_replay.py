"""Uploads what a run kept while MLflow was away (`mlflow_pending`), exactly once.

  python -m tf_srkd.tracking.mlflow_replay <output_dir>/mlflow_pending [--tracking_uri=URI]

The kept calls are made in order. Runs started during the outage are created
then (with their recorded start time and the tags MLflow would have given
them, plus `tf_srkd.replayed_from`), the Keras models are logged from their
kept `.keras` files, and every later call gets the real ids in place of the
placeholders. Progress is written after each call (`replayed.json`), so an
upload that fails half-way resumes where it stopped, and a finished one
renames `calls.json` to `calls.uploaded.json`: a second upload makes nothing
twice. Afterwards the store holds what an uninterrupted run would have logged,
apart from run and model ids, timestamps and that one tag.
"""

import importlib
import json
import logging
import os
import sys
from typing import Optional

from tf_srkd.storage import io_utils
from tf_srkd.tracking import mlflow_pending

PROGRESS = "replayed.json"


def _substitute(value, ids):
  """`value` with every placeholder id replaced by the real one (lists, dicts, strings)."""
  if isinstance(value, str):
    return ids.get(value, value)
  if isinstance(value, list):
    return [_substitute(v, ids) for v in value]
  if isinstance(value, dict):
    return {k: _substitute(v, ids) for k, v in value.items()}
  return value


def _entities(kwargs):
  """The JSON forms of metrics, params and dataset inputs back as MLflow entities."""
  from mlflow import entities  # pylint: disable=import-outside-toplevel

  kwargs = dict(kwargs)
  if "metrics" in kwargs:
    kwargs["metrics"] = [entities.Metric(**m) for m in kwargs["metrics"]]
  if "params" in kwargs:
    kwargs["params"] = [entities.Param(**p) for p in kwargs["params"]]
  if "datasets" in kwargs:
    kwargs["datasets"] = [
        entities.DatasetInput(entities.Dataset(**d["dataset"]),
                              tags=[entities.InputTag(**t) for t in d["tags"]])
        for d in kwargs["datasets"]]
  return kwargs


def _create_run(client, key, experiment_id, run_name, tags, start_time):
  """The run of `key`: found by its tag if an earlier upload created it, else created."""
  found = client.search_runs([experiment_id], filter_string=(
      f"tags.`{mlflow_pending.REPLAYED_TAG}` = '{key}'"), max_results=1)
  if found:
    return found[0].info.run_id
  tags = dict(tags, **{mlflow_pending.REPLAYED_TAG: key})
  return client.create_run(experiment_id, start_time=start_time, tags=tags,
                           run_name=run_name).info.run_id


def _log_model(directory, tracking_uri, key, run_id, folder, name, metadata, tags, step, modules):
  """Logs a kept `.keras` file as the MLflow model `name` of `run_id`; returns its id.

  A model an earlier, interrupted upload finished logging (found by its `key` tag) is
  not logged again.
  """
  import keras  # pylint: disable=import-outside-toplevel
  import mlflow  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mlflow.tracking.context import registry as context  # pylint: disable=import-outside-toplevel

  from tf_srkd.tracking import mlflow_stage  # pylint: disable=import-outside-toplevel
  from tf_srkd.tracking import mlflow_store  # pylint: disable=import-outside-toplevel

  client = mlflow.MlflowClient(tracking_uri=tracking_uri)
  experiment_id = client.get_run(run_id).info.experiment_id
  for model in client.search_logged_models(experiment_ids=[experiment_id]):
    if (model.source_run_id == run_id and model.tags.get(mlflow_pending.REPLAYED_TAG) == key
        and str(model.status).endswith("READY")):
      return model.model_id
  tags = dict(tags, **{mlflow_pending.REPLAYED_TAG: key})
  for module in modules:  # Registers the custom layers the file holds.
    importlib.import_module(module)
  folder = os.path.join(directory, folder)
  network = keras.models.load_model(os.path.join(folder, "model.keras"), compile=False,
                                    safe_mode=True)
  example = np.load(os.path.join(folder, "input_example.npy"), allow_pickle=False)
  # Nested: the caller's own run (the training run's outer one) may be active.
  with mlflow_store.fluent_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id,
                                                                         nested=True):
    info = mlflow_stage.log_keras_model(network, name=name, input_example=example,
                                        metadata=metadata, tags=tags, step=step)
  # MLflow adds this process' context (e.g. the git commit of the upload command) to the
  # model; the kept tags are the training process' own.
  for tag in set(context.resolve_tags({})) - set(tags):
    client.delete_logged_model_tag(info.model_id, tag)
  return info.model_id


def _read_progress(directory, log_id):
  """{"done": calls made, "ids": {placeholder: real id}} of the upload of log `log_id`."""
  path = os.path.join(directory, PROGRESS)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      progress = json.load(f)
    if progress.get("log_id") == log_id:  # Not an earlier log's, already uploaded.
      return progress
  return {"log_id": log_id, "done": 0, "ids": {}}


def _read_kept(directory):
  with open(os.path.join(directory, mlflow_pending.CALLS), encoding="utf-8") as f:
    return json.load(f)


def replay(directory: str, tracking_uri: Optional[str] = None) -> int:
  """Makes the kept calls not made yet against the store; returns how many were made.

  Raises:
    Whatever the store raises; the calls made so far are recorded, and a later
    replay resumes after them.
  """
  import mlflow  # pylint: disable=import-outside-toplevel

  path = os.path.join(directory, mlflow_pending.CALLS)
  if not os.path.isfile(path):
    return 0
  kept = _read_kept(directory)
  log_id = kept.get("log_id", directory)
  uri = tracking_uri or kept["tracking_uri"]
  client = mlflow.MlflowClient(tracking_uri=uri)
  progress = _read_progress(directory, log_id)
  ids, start = progress["ids"], progress["done"]
  for index in range(start, len(kept["calls"])):
    call = kept["calls"][index]
    method = call["method"]
    args, kwargs = _substitute(call["args"], ids), _substitute(call["kwargs"], ids)
    key = f"{log_id}/{call.get('placeholder')}"
    if method == "create_run":
      ids[call["placeholder"]] = _create_run(client, key, **kwargs)
    elif method == "log_model":
      ids[call["placeholder"]] = _log_model(directory, uri, key, *args, **kwargs)
    else:
      if method in ("log_artifact", "log_artifacts"):
        args[1] = os.path.join(directory, args[1])
      getattr(client, method)(*args, **_entities(kwargs))
    io_utils.write_json(os.path.join(directory, PROGRESS),
                        {"log_id": log_id, "done": index + 1, "ids": ids})
  os.replace(path, os.path.join(directory, mlflow_pending.UPLOADED))
  return len(kept["calls"]) - start


def uploaded_ids(directory: str) -> dict:
  """{placeholder: real id} of the runs and models the last upload of `directory` created."""
  path = os.path.join(directory, PROGRESS)
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return dict(json.load(f)["ids"])


def calls_left(directory: str) -> int:
  """How many kept calls of `directory` are not uploaded yet."""
  if not os.path.isfile(os.path.join(directory, mlflow_pending.CALLS)):
    return 0
  kept = _read_kept(directory)
  return len(kept["calls"]) - _read_progress(directory, kept.get("log_id", directory))["done"]


def replay_if_reachable(pending: mlflow_pending.PendingLog):
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
  except Exception:  # pylint: disable=broad-except  (still away: the command is printed)
    return None
  try:
    return replay(pending.directory, pending.tracking_uri)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("MLflow answered, but the upload stopped (%s); what is left stays kept",
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
    return None


def main(argv):
  """`python -m tf_srkd.tracking.mlflow_replay DIR [--tracking_uri=URI]`."""
  args = [a for a in argv[1:] if not a.startswith("--tracking_uri=")]
  uris = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--tracking_uri=")]
  usage = (f"usage: python -m tf_srkd.tracking.mlflow_replay <output_dir>/mlflow_pending "
           f"[--tracking_uri=URI] (a directory holding {mlflow_pending.CALLS})")
  if len(args) != 1 or not os.path.isdir(args[0]):
    print(usage, file=sys.stderr)
    return 2
  if not os.path.isfile(os.path.join(args[0], mlflow_pending.CALLS)):
    if os.path.isfile(os.path.join(args[0], mlflow_pending.UPLOADED)):
      print(f"nothing to upload: {args[0]} was uploaded already")
      return 0
    print(usage, file=sys.stderr)
    return 2
  print(f"uploaded {replay(args[0], uris[0] if uris else None)} MLflow calls")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))

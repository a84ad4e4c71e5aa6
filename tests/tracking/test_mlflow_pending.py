"""The pending log and its upload, against a local store: order, placeholders, exactly once."""

import json
import os

import matplotlib
import mlflow
import numpy as np
import pytest

from tf_srkd.tracking import mlflow_pending
from tf_srkd.tracking import mlflow_replay

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=wrong-import-position


@pytest.fixture(name="store")
def _store(tmp_path):
  uri = f"sqlite:///{tmp_path}/store.db"
  client = mlflow.MlflowClient(tracking_uri=uri)
  experiment_id = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
  return uri, client, experiment_id


def _kept_run(pending, experiment_id, parent_id=None):
  tags = {"role": "student"}
  if parent_id:
    tags["mlflow.parentRunId"] = parent_id
  run = pending.create_run(experiment_id, "student-hybrid", tags, start_time=1000)
  metrics = [mlflow.entities.Metric("loss", 1.0 / (step + 1), 2000 + step, step)
             for step in range(3)]
  pending.add("log epochs", "log_batch", (run,), {"metrics": metrics, "synchronous": True})
  pending.add("log params", "log_batch", (run,),
              {"params": [mlflow.entities.Param("epochs", "3")]})
  figure = plt.figure()
  pending.add("log figure", "log_figure", (run, figure, "plots/participation.png"))
  plt.close(figure)
  dataset = mlflow.entities.Dataset("mnist-train", "abc", "numpy", "{}", None, None)
  pending.add("log datasets", "log_inputs", (run,), {"datasets": [mlflow.entities.DatasetInput(
      dataset, tags=[mlflow.entities.InputTag("mlflow.data.context", "training")])]})
  pending.add("end the run", "set_terminated", (run, "FINISHED"), {"end_time": 5000})
  return run


def test_placeholders_become_runs_with_everything_logged_once(tmp_path, store):
  uri, client, experiment_id = store
  parent = client.create_run(experiment_id, run_name="parent").info.run_id
  pending = mlflow_pending.PendingLog(str(tmp_path / "pending"), uri)
  placeholder = _kept_run(pending, experiment_id, parent)
  assert mlflow_pending.is_placeholder(placeholder) and not mlflow_pending.is_placeholder(parent)
  assert pending.skipped == []
  with open(tmp_path / "pending" / mlflow_pending.CALLS) as f:
    assert len(json.load(f)["calls"]) == 6  # JSON on disk, entities included.

  assert mlflow_replay.replay(pending.directory) == 6
  runs = client.search_runs([experiment_id], filter_string="attributes.run_name = 'student-hybrid'")
  assert len(runs) == 1
  run = runs[0]
  assert (run.info.status, run.info.start_time, run.info.end_time) == ("FINISHED", 1000, 5000)
  assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["role"] == "student"
  assert run.data.tags[mlflow_pending.REPLAYED_TAG].endswith("/" + placeholder)
  assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2]
  assert run.data.params == {"epochs": "3"}
  assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == [
      "plots/participation.png"]
  assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["mnist-train"]

  # A second upload makes nothing; the command says so.
  assert mlflow_replay.replay(pending.directory) == 0
  assert mlflow_replay.main(["x", pending.directory]) == 0
  assert len(client.search_runs([experiment_id])) == 2
  assert len(client.get_metric_history(run.info.run_id, "loss")) == 3


def test_an_upload_that_fails_half_way_resumes_without_repeating(tmp_path, store, monkeypatch):
  uri, client, experiment_id = store
  pending = mlflow_pending.PendingLog(str(tmp_path / "pending"), uri)
  _kept_run(pending, experiment_id)
  real = mlflow.MlflowClient.log_artifact
  calls = {"n": 0}

  def flaky(self, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 1:
      raise ConnectionError("store went away again")
    return real(self, *args, **kwargs)

  monkeypatch.setattr(mlflow.MlflowClient, "log_artifact", flaky)
  with pytest.raises(ConnectionError):
    mlflow_replay.replay(pending.directory)
  assert len(client.search_runs([experiment_id])) == 1  # The run exists already.
  assert mlflow_replay.replay(pending.directory) == 3  # The figure and what follows.
  runs = client.search_runs([experiment_id])
  assert len(runs) == 1 and runs[0].info.status == "FINISHED"
  assert len(client.get_metric_history(runs[0].info.run_id, "loss")) == 3


def test_a_run_created_before_a_crash_is_found_again_not_duplicated(tmp_path, store):
  uri, client, experiment_id = store
  pending = mlflow_pending.PendingLog(str(tmp_path / "pending"), uri)
  _kept_run(pending, experiment_id)
  assert mlflow_replay.replay(pending.directory) == 6
  # As if the process died after creating the run, before recording its progress.
  os.replace(os.path.join(pending.directory, mlflow_pending.UPLOADED),
             os.path.join(pending.directory, mlflow_pending.CALLS))
  with open(os.path.join(pending.directory, mlflow_replay.PROGRESS), "w") as f:
    json.dump({"done": 0, "ids": {}}, f)
  mlflow_replay.replay(pending.directory)
  assert len(client.search_runs([experiment_id])) == 1


def test_unknown_calls_are_listed_as_skipped_and_the_command_checks_its_argument(tmp_path):
  pending = mlflow_pending.PendingLog(str(tmp_path / "pending"), "sqlite:///x.db")
  pending.add("do something else", None)
  assert pending.skipped == ["do something else"] and len(pending) == 1
  assert mlflow_replay.main(["x", str(tmp_path / "absent")]) == 2
  assert "mlflow_replay" in pending.upload_command()


def test_a_kept_model_records_its_custom_layer_modules(tmp_path):
  import keras  # pylint: disable=import-outside-toplevel

  from tf_srkd.models import app_preprocessing  # pylint: disable=import-outside-toplevel

  inputs = keras.Input((8, 8, 3))
  folded = app_preprocessing.FoldedPreprocessing("MobileNetV2")(inputs)
  network = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(folded)))
  pending = mlflow_pending.PendingLog(str(tmp_path / "pending"), "sqlite:///x.db")
  model = pending.log_model("pending-run-0", network, name="teacher",
                            input_example=np.zeros((2, 8, 8, 3), np.float32), metadata={},
                            tags={"role": "teacher"}, step=2)
  assert mlflow_pending.is_placeholder(model) and model != "pending-run-0"
  call = pending.calls[-1]
  assert os.path.isfile(os.path.join(pending.directory, call["kwargs"]["folder"], "model.keras"))
  assert call["kwargs"]["modules"] == ["tf_srkd.models.app_preprocessing"]


def test_a_new_outage_in_the_same_directory_continues_the_kept_log(tmp_path, store):
  uri, client, experiment_id = store
  directory = str(tmp_path / "pending")
  first = mlflow_pending.PendingLog(directory, uri)
  _kept_run(first, experiment_id)
  # The run restarts (same --output_dir) and the store fails again before any upload.
  second = mlflow_pending.PendingLog(directory, uri)
  assert second.log_id == first.log_id and len(second.calls) == 6
  again = second.create_run(experiment_id, "student-regulated", {}, start_time=7000)
  assert again not in {c.get("placeholder") for c in first.calls}
  second.add("end", "set_terminated", (again, "FINISHED"), {"end_time": 8000})
  assert mlflow_replay.replay(directory) == 8
  assert {r.info.run_name for r in client.search_runs([experiment_id])} == {
      "student-hybrid", "student-regulated"}


def test_an_earlier_logs_progress_does_not_skip_a_new_log(tmp_path, store):
  uri, client, experiment_id = store
  directory = str(tmp_path / "pending")
  _kept_run(mlflow_pending.PendingLog(directory, uri), experiment_id)
  assert mlflow_replay.replay(directory) == 6
  # A later outage in the same directory: a new log, its own placeholders and progress.
  later = mlflow_pending.PendingLog(directory, uri)
  assert later.calls == []
  run = later.create_run(experiment_id, "teacher", {}, start_time=9000)
  later.add("end", "set_terminated", (run, "FINISHED"), {"end_time": 9500})
  assert mlflow_replay.calls_left(directory) == 2
  assert mlflow_replay.replay(directory) == 2
  teacher = client.search_runs([experiment_id], filter_string="attributes.run_name = 'teacher'")
  assert len(teacher) == 1 and teacher[0].info.end_time == 9500


def test_a_damaged_kept_log_is_set_aside_not_lost(tmp_path):
  directory = tmp_path / "pending"
  directory.mkdir()
  (directory / mlflow_pending.CALLS).write_text("{truncated")
  log = mlflow_pending.PendingLog(str(directory), "sqlite:///x.db")
  assert log.calls == [] and not (directory / mlflow_pending.CALLS).exists()
  assert len(list(directory.glob("calls.unreadable.*.json"))) == 1


def test_a_kept_folder_is_uploaded_whole(tmp_path, store):
  uri, client, experiment_id = store
  ids = tmp_path / "ids"
  ids.mkdir()
  (ids / "top-f0.1.npy").write_bytes(b"x")
  run_id = client.create_run(experiment_id, run_name="parent").info.run_id
  pending = mlflow_pending.PendingLog(str(tmp_path / "pending"), uri)
  pending.add("log ids", "log_artifacts", (run_id, str(ids), "ids"))
  (ids / "top-f0.1.npy").unlink()  # Kept at the time of the call.
  assert mlflow_replay.replay(pending.directory) == 1
  assert [a.path for a in client.list_artifacts(run_id, "ids")] == ["ids/top-f0.1.npy"]


def test_a_kept_model_is_logged_once_even_when_the_upload_resumes(tmp_path, store):
  import keras  # pylint: disable=import-outside-toplevel

  uri, client, experiment_id = store
  run_id = client.create_run(experiment_id, run_name="student").info.run_id
  network = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
  pending = mlflow_pending.PendingLog(str(tmp_path / "pending"), uri)
  pending.log_model(run_id, network, name="student-hybrid",
                    input_example=np.zeros((2, 4), np.float32), metadata={"role": "student"},
                    tags={"role": "student"}, step=1)
  assert mlflow_replay.replay(pending.directory) == 1
  # As if the process died after MLflow logged the model, before recording its progress.
  os.replace(os.path.join(pending.directory, mlflow_pending.UPLOADED),
             os.path.join(pending.directory, mlflow_pending.CALLS))
  os.remove(os.path.join(pending.directory, mlflow_replay.PROGRESS))
  assert mlflow_replay.replay(pending.directory) == 1
  models = client.search_logged_models(experiment_ids=[experiment_id])
  assert [m.name for m in models] == ["student-hybrid"]
  assert models[0].tags["role"] == "student" and models[0].source_run_id == run_id

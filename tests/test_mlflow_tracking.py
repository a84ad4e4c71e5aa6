"""MLflow tracking: what a run leaves in MLflow, read back through `MlflowClient`.

Two tiny real pipeline runs (MNIST, 256 examples, 2 epochs): one against
MLflow's sqlite store in a temp dir, one against a live `mlflow server` that
this module starts on 127.0.0.1 (sqlite backend) and stops by process group.
The server starts when the module does, so it boots while the sqlite run trains.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest

from tf_srkd import config as config_lib
from tf_srkd import io_utils
from tf_srkd import mlflow_store
from tf_srkd import mlflow_tracking
from tf_srkd import pipeline
from tests.mlflow_server import Server, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCH_KEYS = ("loss", "accuracy", "participation_fraction", "eta", "cumulative_zeta",
              "compact_backward", "ce_loss")
FINAL_KEYS = ("test_accuracy", "params", "wall_time_s")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ENV_URI_AT_IMPORT = os.environ.get("MLFLOW_TRACKING_URI")


def _tiny_config(output_dir, uri, modes, experiment="tf_srkd_test"):
  return config_lib.Config(dataset="mnist", epochs=2, train_examples=256, batch_size=64,
                           eval_batch_size=256, modes=modes, output_dir=str(output_dir),
                           verbose=0, mlflow=True, mlflow_experiment=experiment,
                           mlflow_tracking_uri=uri)


@dataclasses.dataclass
class Tracked:
  config: config_lib.Config
  summary: dict
  uri: str
  parent_run_id: str
  stage_run_ids: dict


def _track(config):
  tracker = mlflow_tracking.connect(config, strict=True)
  summary = pipeline.run(config, tracker=tracker)
  stages = ["teacher"] + [f"student-{m}" for m in config.modes]
  return Tracked(config, summary, tracker.tracking_uri, tracker.parent_run_id,
                 {name: tracker.stage_run_id(name) for name in stages})


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
  server = Server(str(tmp_path_factory.mktemp("server")))
  try:
    yield server
  finally:
    server.stop()


@pytest.fixture(scope="module")
def sqlite_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("sqlite")
  return _track(_tiny_config(tmp / "run", f"sqlite:///{tmp}/mlflow.db",
                             ("conventional", "hybrid")))


@pytest.fixture(scope="module")
def server_run(tmp_path_factory, mlflow_server):
  mlflow_server.wait_ready()
  tmp = tmp_path_factory.mktemp("server_run")
  return _track(_tiny_config(tmp / "run", mlflow_server.uri, ("hybrid",)))


@pytest.fixture(params=["sqlite", "server"])
def tracked(request):
  return request.getfixturevalue(f"{request.param}_run")


def _client(run):
  return mlflow.MlflowClient(tracking_uri=run.uri)


def _stage_dir(config, name):
  if name == "teacher":
    return os.path.join(config.output_dir, "teacher")
  return os.path.join(config.output_dir, "students", name.split("-", 1)[1])


def _download(client, run_id, path, tmp_path):
  return client.download_artifacts(run_id, path, str(tmp_path))


# -- pure helpers ---------------------------------------------------------------------


def test_format_alpha():
  assert mlflow_tracking.format_alpha(0.02) == "0.02"
  assert mlflow_tracking.format_alpha(0.006) == "0.006"
  assert mlflow_tracking.format_alpha(float("inf")) == "inf"
  assert mlflow_tracking.format_alpha(None) is None


def test_epoch_metrics_renames_zeta_and_drops_epoch():
  logs = {"epoch": 3, "loss": np.float32(0.5), "zeta": 0.25, "eta": 1, "note": "x"}
  assert mlflow_tracking.epoch_metrics(logs) == {"loss": 0.5, "cumulative_zeta": 0.25,
                                                 "eta": 1.0}


def test_config_params_cover_every_flag():
  config = config_lib.Config(modes=("regulated", "hybrid"), alpha=float("inf"))
  params = mlflow_tracking.config_params(config)
  assert set(params) == {f.name for f in dataclasses.fields(config)} | {
      "resolved_distill_epochs", "num_train_examples"}
  assert params["modes"] == "regulated,hybrid"
  assert params["alpha"] == "inf"
  assert params["mlflow"] == "True"
  assert params["distill_epochs"] == "None"
  assert params["resolved_distill_epochs"] == "200"
  assert params["num_train_examples"] == "60000"


def test_resolve_tracking_uri(monkeypatch):
  monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
  assert mlflow_store.resolve_tracking_uri("sqlite:///flag.db") == "sqlite:///flag.db"
  assert mlflow_store.resolve_tracking_uri(None) == "http://env:5000"


def test_default_tracking_uri_is_mlflow_db_in_working_directory(tmp_path, monkeypatch):
  monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
  monkeypatch.chdir(tmp_path)
  with mlflow_store.fluent_tracking_uri(None):
    uri = mlflow_store.resolve_tracking_uri(None)
  assert uri == f"sqlite:///{tmp_path}/mlflow.db"
  assert mlflow_store.default_artifact_location(uri, "mnist") == str(tmp_path / "mlruns" / "mnist")


def test_default_artifact_location():
  location = mlflow_store.default_artifact_location
  assert location("sqlite:////data/x/mlflow.db", "mnist") == "/data/x/mlruns/mnist"
  assert location("sqlite:////data/mlflow.db", "my exp/1") == "/data/mlruns/my_exp_1"
  assert location("sqlite:///:memory:", "mnist") is None
  assert location("http://127.0.0.1:5000", "mnist") is None


def test_fluent_tracking_uri_restores_global_state(monkeypatch):
  monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/mlflow.db")
  before = mlflow.get_tracking_uri()
  with mlflow_store.fluent_tracking_uri("sqlite:////tmp/other.db"):
    assert mlflow.get_tracking_uri() == "sqlite:////tmp/other.db"
  assert mlflow.get_tracking_uri() == before
  assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////elsewhere/mlflow.db"
  with mlflow_store.fluent_tracking_uri("sqlite:////tmp/explicit.db"):  # a caller's setting
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/changed.db")
    with mlflow_store.fluent_tracking_uri("sqlite:////tmp/other.db"):
      assert mlflow.get_tracking_uri() == "sqlite:////tmp/other.db"
    assert mlflow.get_tracking_uri() == "sqlite:////tmp/explicit.db"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////tmp/changed.db"


def test_logging_failures_warn_unless_strict(caplog):
  def broken(*args, **kwargs):
    raise RuntimeError("server gone")

  for strict in (False, True):
    tracker = mlflow_tracking.MlflowTracker("http://127.0.0.1:1", "0", "x", strict=strict)
    tracker.client.log_dict = broken
    stage = mlflow_tracking.MlflowStage(tracker, "run-id")
    if strict:
      with pytest.raises(RuntimeError, match="server gone"):
        stage.log_dict({"a": 1}, "a.json")
    else:
      stage.log_dict({"a": 1}, "a.json")
      assert "server gone" in caplog.text


# -- unreachable tracking store ----------------------------------------------------------


def test_connect_to_unreachable_server_fails_fast(tmp_path):
  config = _tiny_config(tmp_path / "run", f"http://127.0.0.1:{free_port()}", ("hybrid",))
  started = time.monotonic()
  with pytest.raises(mlflow_tracking.TrackingError) as error:
    mlflow_tracking.connect(config)
  assert time.monotonic() - started < 15
  message = str(error.value)
  assert config.mlflow_tracking_uri in message
  assert "--mlflow_tracking_uri" in message and "MLFLOW_TRACKING_URI" in message
  assert "\n" not in message


@pytest.mark.slow
def test_cli_unreachable_server_exits_before_training(tmp_path):
  uri = f"http://127.0.0.1:{free_port()}"
  out = tmp_path / "run"
  env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
  result = subprocess.run(
      [sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/smoke.flags", "--mlflow",
       f"--mlflow_tracking_uri={uri}", f"--output_dir={out}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, result.stderr[-3000:]
  assert uri in errors[0] and "--mlflow_tracking_uri" in errors[0]
  assert "Traceback" not in result.stderr
  assert not out.exists()  # Nothing trained, nothing written.


# -- a tracked run, read back ---------------------------------------------------------------


@pytest.mark.slow
def test_parent_and_child_runs(tracked):
  client = _client(tracked)
  config = tracked.config
  experiment = client.get_experiment_by_name(config.experiment_name)
  runs = client.search_runs([experiment.experiment_id])
  parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
  assert [r.info.run_id for r in parents] == [tracked.parent_run_id]
  parent = parents[0]
  assert parent.info.status == "FINISHED"
  assert parent.data.tags["dataset"] == "mnist"
  assert parent.info.run_name == "mnist all alpha=0.02"
  children = {r.data.tags["stage"]: r for r in runs if r.info.run_id != tracked.parent_run_id}
  assert set(children) == {"teacher"} | {f"student-{m}" for m in config.modes}
  for name, child in children.items():
    tags = child.data.tags
    assert tags["mlflow.parentRunId"] == tracked.parent_run_id
    assert child.info.run_id == tracked.stage_run_ids[name]
    assert child.info.status == "FINISHED"
    assert tags["dataset"] == "mnist"
    if name == "teacher":
      assert (tags["role"], tags["model"], tags["alpha"]) == ("teacher", "lenet5", "0.02")
      assert "mode" not in tags
    else:
      mode = name.split("-", 1)[1]
      alpha = "inf" if mode == "conventional" else "0.02"
      assert (tags["role"], tags["model"], tags["mode"], tags["alpha"]) == (
          "student", "lenet5_half", mode, alpha)
      assert child.info.run_name == f"{name} lenet5_half alpha={alpha}"


@pytest.mark.slow
def test_params_and_flags_file(tracked, tmp_path):
  client = _client(tracked)
  config = tracked.config
  expected = mlflow_tracking.config_params(config)
  assert client.get_run(tracked.parent_run_id).data.params == expected
  with open(_download(client, tracked.parent_run_id, "flags.txt", tmp_path)) as f:
    assert f.read() == config_lib.to_flagfile(config)
  with open(_download(client, tracked.parent_run_id, "summary.json", tmp_path)) as f:
    assert json.load(f) == tracked.summary
  for name, run_id in tracked.stage_run_ids.items():
    params = client.get_run(run_id).data.params
    assert {k: params[k] for k in expected} == expected
    assert params["stage_epochs"] == "2"
    assert params["optimizer_name"].startswith("adam")  # From MLflow's Keras callback.


@pytest.mark.slow
def test_per_epoch_and_final_metrics(tracked):
  client = _client(tracked)
  for name, run_id in tracked.stage_run_ids.items():
    metrics = io_utils.read_json(os.path.join(_stage_dir(tracked.config, name), "metrics.json"))
    history = metrics["history"]
    assert [e["epoch"] for e in history] == [0, 1]
    keys = EPOCH_KEYS + (("kd_loss",) if name != "teacher" else ())
    for key in keys:
      source = "zeta" if key == "cumulative_zeta" else key
      logged = client.get_metric_history(run_id, key)
      assert [(m.step, m.value) for m in sorted(logged, key=lambda m: m.step)] == [
          (e["epoch"], e[source]) for e in history], (name, key)
    final = client.get_run(run_id).data.metrics
    for key in FINAL_KEYS:
      assert final[key] == metrics[key], (name, key)
    if metrics["zeta"] is None:
      assert "zeta" not in final and "participations" not in final
    else:
      assert final["zeta"] == metrics["zeta"]
      assert final["participations"] == metrics["participations"]
    summary = (tracked.summary["teacher"] if name == "teacher"
               else tracked.summary["students"][name.split("-", 1)[1]])
    assert final["test_accuracy"] == summary["test_accuracy"]


@pytest.mark.slow
def test_artifacts(tracked, tmp_path):
  client = _client(tracked)
  for name, run_id in tracked.stage_run_ids.items():
    stage_dir = _stage_dir(tracked.config, name)
    listed = {a.path for a in client.list_artifacts(run_id)}
    regulated = name in ("teacher", "student-regulated", "student-hybrid")
    expected = {"model_summary.txt"}
    if regulated:
      expected |= {"participation.npy", "participation_fraction.png", "history.json"}
    if name == "teacher":
      expected |= {"significance.npy", "significance_histograms.png"}
    assert listed == expected, name
    for array in sorted(expected & {"participation.npy", "significance.npy"}):
      logged = np.load(_download(client, run_id, array, tmp_path / name))
      np.testing.assert_array_equal(logged, np.load(os.path.join(stage_dir, array)))
    for png in sorted(p for p in expected if p.endswith(".png")):
      with open(_download(client, run_id, png, tmp_path / name), "rb") as f:
        assert f.read(8) == PNG_MAGIC


@pytest.mark.slow
def test_models_load_back_with_mlflow_keras(tracked):
  import keras  # pylint: disable=import-outside-toplevel

  images = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
  with mlflow_store.fluent_tracking_uri(tracked.uri):
    for name, run_id in tracked.stage_run_ids.items():
      loaded = mlflow.keras.load_model(f"runs:/{run_id}/model")
      on_disk = keras.models.load_model(
          os.path.join(_stage_dir(tracked.config, name), "model.keras"), compile=False)
      assert isinstance(loaded, keras.Sequential)
      assert loaded.count_params() == on_disk.count_params()
      np.testing.assert_allclose(loaded.predict(images, verbose=0),
                                 on_disk.predict(images, verbose=0), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_sqlite_artifacts_live_next_to_the_database(sqlite_run):
  client = _client(sqlite_run)
  experiment = client.get_experiment_by_name(sqlite_run.config.experiment_name)
  db_dir = os.path.dirname(sqlite_run.uri[len("sqlite:///"):])
  assert experiment.artifact_location.endswith(os.path.join(db_dir, "mlruns", "tf_srkd_test"))


@pytest.mark.slow
def test_tracking_leaves_global_mlflow_state_alone(sqlite_run):
  del sqlite_run
  assert mlflow.active_run() is None
  assert os.environ.get("MLFLOW_TRACKING_URI") == _ENV_URI_AT_IMPORT


@pytest.mark.slow
def test_export_after_the_run_logs_into_each_students_run(sqlite_run, tmp_path):
  """`--export` runs after the pipeline (in tf_srkd.main) and logs into the student's
  child run in the tracker's store, given by URI, not through MLflow's global state."""
  from tf_srkd import main as main_lib  # pylint: disable=import-outside-toplevel

  class Tracker:  # What main's export needs from the tracker that ran the pipeline.
    tracking_uri = sqlite_run.uri

    def stage_run_id(self, name):
      return sqlite_run.stage_run_ids.get(name)

  config = dataclasses.replace(sqlite_run.config, export=("float32",))
  assert mlflow.get_tracking_uri() != sqlite_run.uri
  results = main_lib.export_students(config, ["conventional"], Tracker())
  assert results["conventional"]["float32"]["mlflow_logged"]
  run = _client(sqlite_run).get_run(sqlite_run.stage_run_ids["student-conventional"])
  assert run.data.metrics["tflite_float32_accuracy"] == (
      results["conventional"]["float32"]["verification"]["tflite_test_accuracy"])


def test_a_failure_inside_a_run_goes_offline_and_keeps_the_calls(tmp_path, caplog):
  calls = []

  def log_batch(*args, **kwargs):  # The client's method, failing.
    calls.append(args)
    raise RuntimeError("server gone")

  tracker = mlflow_tracking.MlflowTracker("http://127.0.0.1:1", "0", "x")
  tracker.config = _tiny_config(tmp_path / "run", tracker.tracking_uri, ("hybrid",))
  tracker.client.log_batch = log_batch
  stage = mlflow_tracking.MlflowStage(tracker, "run-id")
  for epoch in range(3):
    stage.log_epoch(epoch, {"loss": 1.0 / (epoch + 1)})
  assert len(calls) == 1  # Offline after the first failure: no more waiting on the store.
  assert caplog.text.count("training goes on without MLflow") == 1
  kept = json.loads((tmp_path / "run/mlflow_pending/calls.json").read_text())
  assert [c["method"] for c in kept["calls"]] == ["log_batch"] * 3
  assert [c["kwargs"]["metrics"][0]["step"] for c in kept["calls"]] == [0, 1, 2]

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

from tf_srkd.run import config as config_lib
from tf_srkd.run import config_flags
from tf_srkd.storage import io_utils
from tf_srkd.tracking import mlflow_schema
from tf_srkd.tracking import mlflow_stage
from tf_srkd.tracking import mlflow_store
from tf_srkd.tracking import mlflow_tracking
from tf_srkd.run import pipeline
from tests.support.mlflow_server import Server, free_port

# Under pytest-xdist (`-n`) this file's tests stay on one worker: they share tracked runs in
# module fixtures that each worker would otherwise build again.
pytestmark = pytest.mark.xdist_group("test_mlflow_tracking")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCH_KEYS = ("loss", "accuracy", "ce_loss")
REGULATION_KEYS = ("participation_fraction", "eta", "cumulative_zeta")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ENV_URI_AT_IMPORT = os.environ.get("MLFLOW_TRACKING_URI")


def _tiny_config(output_dir, uri, modes, experiment="tf_srkd_test"):
  return config_lib.Config.of(dataset="mnist", epochs=2, train_examples=256, batch_size=64,
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
  stage_model_ids: dict


def _track(config):
  tracker = mlflow_tracking.connect(config, strict=True)
  summary = pipeline.run(config, tracker=tracker)
  stages = ["teacher"] + [f"student-{m}" for m in config.training.modes]
  return Tracked(config, summary, tracker.tracking_uri, tracker.parent_run_id,
                 {name: tracker.stage_run_id(name) for name in stages},
                 {name: tracker.stage_model_id(name) for name in stages})


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
  return _track(_tiny_config(tmp / "run", mlflow_server.uri, ("conventional", "hybrid")))


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
  assert mlflow_schema.epoch_metrics(logs) == {"loss": 0.5, "cumulative_zeta": 0.25,
                                               "eta": 1.0}


def test_split_epoch_metrics_keeps_back_diagnostics_and_constant_regulation():
  metrics = {"loss": 0.5, "eta": 0.1, "cumulative_zeta": 0.3, "participation_fraction": 0.4,
             "compact_backward": 0.0, "skipped_epoch": 0.0}
  now, later = mlflow_schema.split_epoch_metrics(metrics, regulate=True)
  assert now == {"loss": 0.5, "eta": 0.1, "cumulative_zeta": 0.3, "participation_fraction": 0.4}
  assert later == {"compact_backward": 0.0, "skipped_epoch": 0.0}
  now, later = mlflow_schema.split_epoch_metrics(metrics, regulate=False)
  assert now == {"loss": 0.5}
  series = {"compact_backward": {0: 0.0, 1: 1.0}, "skipped_epoch": {0: 0.0, 1: 0.0}}
  assert mlflow_schema.varying_series(series) == {"compact_backward": {0: 0.0, 1: 1.0}}


def test_final_metrics_give_every_stage_a_zeta():
  regulated = {"test_accuracy": 0.9, "zeta": 0.25, "participations": 128, "params": 10,
               "wall_time_s": 1.5, "epochs": 2, "train_examples": 256, "model": "lenet5"}
  assert mlflow_schema.final_metrics(regulated, regulate=True) == {
      "test_accuracy": 0.9, "zeta": 0.25, "participations": 128.0, "num_parameters": 10.0,
      "wall_time_s": 1.5}
  conventional = dict(regulated, zeta=None, participations=None)
  assert mlflow_schema.final_metrics(conventional, regulate=False) == {
      "test_accuracy": 0.9, "zeta": 1.0, "participations": 512.0, "num_parameters": 10.0,
      "wall_time_s": 1.5}


def test_summary_metrics():
  summary = {"teacher": {"test_accuracy": 0.98, "zeta": 0.2, "params": 61706},
             "students": {"conventional": {"test_accuracy": 0.9, "zeta": None, "params": 5},
                          "hybrid": {"test_accuracy": 0.8, "zeta": 0.01, "params": 5}}}
  assert mlflow_schema.summary_metrics(summary) == {
      "teacher_test_accuracy": 0.98, "teacher_zeta": 0.2, "teacher_num_parameters": 61706.0,
      "student_conventional_test_accuracy": 0.9, "student_conventional_zeta": 1.0,
      "student_conventional_num_parameters": 5.0, "student_hybrid_test_accuracy": 0.8,
      "student_hybrid_zeta": 0.01, "student_hybrid_num_parameters": 5.0}
  assert mlflow_schema.summary_metrics({"teacher": {}, "students": {}}) == {}


def test_optimizer_params_name_the_class():
  import keras  # pylint: disable=import-outside-toplevel

  for _ in range(2):  # Keras names the instances adam, adam_1, ...
    params = mlflow_schema.optimizer_params(keras.optimizers.Adam(0.01))
    assert params["optimizer_name"] == "Adam"
    assert float(params["optimizer_learning_rate"]) == pytest.approx(0.01)


def test_inputs_and_input_example_of_a_split_kept_on_disk(tmp_path):
  """A split above --max_in_memory_mb (`streaming.StoredArray`) is never read whole."""
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import streaming  # pylint: disable=import-outside-toplevel

  images = np.arange(5 * 28 * 28, dtype=np.uint8).reshape((5, 28, 28, 1))
  np.save(tmp_path / "images.npy", images)
  stored = streaming.StoredArray(str(tmp_path / "images.npy"))
  np.testing.assert_array_equal(mlflow_stage.input_example(stored),
                                images[:2].astype(np.float32) / 255.0)
  calls = []

  class Client:  # Records the dataset inputs the stage logs.
    def log_inputs(self, run_id, datasets):
      calls.append((run_id, datasets))

  class Tracker:  # Runs the stage's calls.
    stage_model_ids = {}
    client = Client()

    def guard(self, what, fn, *args, offline=None, **kwargs):
      del what, offline
      return fn(*args, **kwargs)

  stage = mlflow_stage.MlflowStage(Tracker(), "run-id")
  split = data.SplitArrays(images=stored, labels=np.arange(5, dtype=np.int32))
  stage.log_datasets("mnist", [("train", split, "training")])
  [(run_id, [dataset_input])] = calls
  assert run_id == "run-id" and dataset_input.dataset.name == "mnist-train"
  assert json.loads(dataset_input.dataset.profile)["features_shape"] == [5]
  assert [(t.key, t.value) for t in dataset_input.tags] == [("mlflow.data.context", "training")]


def test_model_metadata_states_the_preprocessing():
  from tf_srkd.data import datasets  # pylint: disable=import-outside-toplevel

  metadata = mlflow_stage.model_metadata(datasets.get_dataset_spec("mnist"), "student", "hybrid")
  assert metadata["input_shape"] == [28, 28, 1] and metadata["input_dtype"] == "float32"
  assert "/ 255" in metadata["preprocessing"] or "divided by 255" in metadata["preprocessing"]
  assert (metadata["role"], metadata["mode"], metadata["dataset"]) == ("student", "hybrid", "mnist")
  images = np.full((5, 28, 28, 1), 255, np.uint8)
  example = mlflow_stage.input_example(images)
  assert example.dtype == np.float32 and example.shape == (2, 28, 28, 1) and example.max() == 1.0


def test_config_params_cover_every_flag():
  config = config_lib.Config.of(modes=("regulated", "hybrid"), alpha=float("inf"))
  params = mlflow_tracking.config_params(config, config_lib.num_train_examples(config))
  assert set(params) == set(config.settings()) | {
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
    stage = mlflow_stage.MlflowStage(tracker, "run-id")
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
  assert config.tracking.mlflow_tracking_uri in message
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
  assert set(children) == {"teacher"} | {f"student-{m}" for m in config.training.modes}
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
  expected = mlflow_tracking.config_params(config, config_lib.num_train_examples(config))
  assert client.get_run(tracked.parent_run_id).data.params == expected
  with open(_download(client, tracked.parent_run_id, "flags.txt", tmp_path)) as f:
    assert f.read() == config_flags.to_flagfile(config)
  with open(_download(client, tracked.parent_run_id, "summary.json", tmp_path)) as f:
    assert json.load(f) == tracked.summary
  for name, run_id in tracked.stage_run_ids.items():
    params = client.get_run(run_id).data.params
    assert {k: params[k] for k in expected} == expected
    assert params["stage_epochs"] == "2"
    assert params["optimizer_name"] == "Adam"  # The class, not Keras' instance name.
    assert float(params["optimizer_learning_rate"]) == pytest.approx(
        config.training.teacher_lr if name == "teacher" else config.training.distill_lr)


@pytest.mark.slow
def test_per_epoch_and_final_metrics(tracked):
  client = _client(tracked)
  for name, run_id in tracked.stage_run_ids.items():
    metrics = io_utils.read_json(os.path.join(_stage_dir(tracked.config, name), "metrics.json"))
    history = metrics["history"]
    assert [e["epoch"] for e in history] == [0, 1]
    regulated = name not in ("student-conventional", "student-significance")
    keys = EPOCH_KEYS + (("kd_loss",) if name != "teacher" else ())
    keys += REGULATION_KEYS if regulated else ()
    for key in keys:
      source = "zeta" if key == "cumulative_zeta" else key
      logged = client.get_metric_history(run_id, key)
      assert [(m.step, m.value) for m in sorted(logged, key=lambda m: m.step)] == [
          (e["epoch"], e[source]) for e in history], (name, key)
    final = client.get_run(run_id).data.metrics
    for key in mlflow_schema.DIAGNOSTIC_KEYS:  # Constant here: not logged.
      assert len({e.get(key, 0.0) for e in history}) == 1 and key not in final, (name, key)
    if not regulated:  # 1.0 every epoch: no per-epoch chart, ζ = 1.0 (every sample, every epoch).
      assert not set(REGULATION_KEYS) & set(final), name
    assert final["num_parameters"] == metrics["params"] and "params" not in final
    assert final["wall_time_s"] == metrics["wall_time_s"]
    assert final["test_accuracy"] == metrics["test_accuracy"]
    if regulated:
      assert final["zeta"] == metrics["zeta"]
      assert final["participations"] == metrics["participations"]
    else:
      assert metrics["zeta"] is None
      assert final["zeta"] == 1.0 and final["participations"] == 2 * 256
    for key in mlflow_schema.FINAL_KEYS:  # At the last epoch's step: what the model shows.
      assert [m.step for m in client.get_metric_history(run_id, key)] == [1], (name, key)
    summary = (tracked.summary["teacher"] if name == "teacher"
               else tracked.summary["students"][name.split("-", 1)[1]])
    assert final["test_accuracy"] == summary["test_accuracy"]


@pytest.mark.slow
def test_every_student_has_zeta(tracked):
  client = _client(tracked)
  for name, run_id in tracked.stage_run_ids.items():
    zeta = client.get_run(run_id).data.metrics["zeta"]
    assert 0.0 < zeta <= 1.0, name


@pytest.mark.slow
def test_parent_run_carries_the_summary(tracked):
  metrics = _client(tracked).get_run(tracked.parent_run_id).data.metrics
  summary = tracked.summary
  expected = {"teacher_test_accuracy": summary["teacher"]["test_accuracy"],
              "teacher_zeta": summary["teacher"]["zeta"],
              "teacher_num_parameters": summary["teacher"]["params"]}
  for mode, m in summary["students"].items():
    expected.update({f"student_{mode}_test_accuracy": m["test_accuracy"],
                     f"student_{mode}_zeta": 1.0 if m["zeta"] is None else m["zeta"],
                     f"student_{mode}_num_parameters": m["params"]})
  assert metrics == expected


@pytest.mark.slow
def test_logged_models_carry_the_final_metrics_tags_and_input_description(tracked):
  client = _client(tracked)
  for name, run_id in tracked.stage_run_ids.items():
    run = client.get_run(run_id)
    models = [m for m in client.search_logged_models(
        experiment_ids=[run.info.experiment_id]) if m.source_run_id == run_id]
    assert [m.name for m in models] == [name]
    model = models[0]
    assert {m.key: m.value for m in model.metrics} == run.data.metrics, name
    assert {m.step for m in model.metrics} == {1}
    for key in ("role", "mode", "dataset", "model", "alpha", "stage"):
      assert model.tags.get(key) == run.data.tags.get(key), (name, key)
    with mlflow_store.fluent_tracking_uri(tracked.uri):
      info = mlflow.models.get_model_info(f"models:/{model.model_id}")
    assert info.metadata["input_shape"] == [28, 28, 1]
    assert "255" in info.metadata["preprocessing"]
    assert info.saved_input_example_info is not None
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 28, 28, 1]


@pytest.mark.slow
def test_train_and_test_splits_are_logged_inputs(tracked):
  client = _client(tracked)
  for name, run_id in tracked.stage_run_ids.items():
    inputs = client.get_run(run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
                  for i in inputs}
    assert set(by_context) == {"training", "testing"}, name
    assert by_context["training"].name == "mnist-train[:256]"
    assert by_context["testing"].name == "mnist-test"
    assert json.loads(by_context["training"].profile)["features_shape"] == [256, 28, 28, 1]
    assert json.loads(by_context["testing"].profile)["targets_shape"] == [10000]
    assert by_context["training"].digest and by_context["testing"].digest


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
      loaded = mlflow.keras.load_model(f"runs:/{run_id}/{name}")
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
def test_export_and_registration_after_the_run(sqlite_run, tmp_path):
  """`--export` runs after the pipeline (in tf_srkd.main) and logs into the student's
  child run in the tracker's store, given by URI, not through MLflow's global state;
  `--register_model` then registers each student's model with its TFLite files."""
  from tf_srkd.cli import main as main_lib  # pylint: disable=import-outside-toplevel

  class Tracker:  # What main's export needs from the tracker that ran the pipeline.
    tracking_uri = sqlite_run.uri

    def stage_run_id(self, name):
      return sqlite_run.stage_run_ids.get(name)

    def stage_model_id(self, name):
      return sqlite_run.stage_model_ids.get(name)

  config = sqlite_run.config.replace(export=("float32",), register_model="srkd")
  assert mlflow.get_tracking_uri() != sqlite_run.uri
  results = main_lib.export_students(config, ["conventional"], Tracker())
  assert results["conventional"]["float32"]["mlflow_logged"]
  client = _client(sqlite_run)
  run = client.get_run(sqlite_run.stage_run_ids["student-conventional"])
  assert run.data.metrics["tflite_float32_accuracy"] == (
      results["conventional"]["float32"]["verification"]["tflite_test_accuracy"])

  versions = main_lib.register_students(config, ["conventional", "hybrid"], Tracker())
  assert {m: (v.name, str(v.version)) for m, v in versions.items()} == {
      "conventional": ("srkd-conventional", "1"), "hybrid": ("srkd-hybrid", "1")}
  conventional = client.get_model_version("srkd-conventional", "1")
  assert conventional.run_id == run.info.run_id
  assert conventional.source == "models:/" + sqlite_run.stage_model_ids["student-conventional"]
  assert conventional.tags["mode"] == "conventional"
  with mlflow_store.fluent_tracking_uri(sqlite_run.uri):  # models:/ reads the global registry.
    files = mlflow.artifacts.download_artifacts(
        artifact_uri="models:/srkd-conventional/1", dst_path=str(tmp_path / "registered"))
    hybrid = mlflow.artifacts.download_artifacts(
        artifact_uri="models:/srkd-hybrid/1", dst_path=str(tmp_path / "hybrid"))
  assert sorted(os.listdir(os.path.join(files, "tflite"))) == sorted(
      os.listdir(os.path.join(_stage_dir(sqlite_run.config, "student-conventional"), "tflite")))
  assert not os.path.exists(os.path.join(hybrid, "tflite"))  # Not exported: nothing attached.


def test_a_failure_inside_a_run_goes_offline_and_keeps_the_calls(tmp_path, caplog):
  calls = []

  def log_batch(*args, **kwargs):  # The client's method, failing.
    calls.append(args)
    raise RuntimeError("server gone")

  tracker = mlflow_tracking.MlflowTracker("http://127.0.0.1:1", "0", "x")
  tracker.config = _tiny_config(tmp_path / "run", tracker.tracking_uri, ("hybrid",))
  tracker.client.log_batch = log_batch
  stage = mlflow_stage.MlflowStage(tracker, "run-id")
  for epoch in range(3):
    stage.log_epoch(epoch, {"loss": 1.0 / (epoch + 1)})
  assert len(calls) == 1  # Offline after the first failure: no more waiting on the store.
  assert caplog.text.count("training goes on without MLflow") == 1
  kept = json.loads((tmp_path / "run/mlflow_pending/calls.json").read_text())
  assert [c["method"] for c in kept["calls"]] == ["log_batch"] * 3
  assert [c["kwargs"]["metrics"][0]["step"] for c in kept["calls"]] == [0, 1, 2]


def test_a_stage_logs_its_own_epochs_so_the_report_lists_them(tmp_path):
  """A pre-trained teacher fine-tuned 3 epochs in a run of --epochs=8 is a 3-epoch stage."""
  from tf_srkd.reporting import records as report_records  # pylint: disable=import-outside-toplevel

  config = _tiny_config(tmp_path / "run", f"sqlite:///{tmp_path}/m.db",
                      ("regulated",)).replace(epochs=8)
  tracker = mlflow_tracking.connect(config, strict=True)
  with tracker.run(config, "--epochs=8\n"):
    with tracker.stage("teacher", role="teacher", model_name="t.keras", alpha=0.02, epochs=3):
      pass
    with tracker.stage("student-regulated", role="student", model_name="lenet5_half",
                       mode="regulated", alpha=0.02):
      pass
  client = mlflow.MlflowClient(tracking_uri=tracker.tracking_uri)
  epochs = {}
  for name in ("teacher", "student-regulated"):
    record = report_records.record_from_run(client.get_run(tracker.stage_run_id(name)))
    epochs[record.role] = record.epochs
  assert epochs == {"teacher": 3, "student": 8}

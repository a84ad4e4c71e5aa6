"""A mid-run MLflow outage: training goes on at full speed, nothing is lost.

What the run keeps under `<output_dir>/mlflow_pending/` while the store is away, how
an upload that fails part-way keeps exactly the calls not yet made, and a store that
comes back before the run ends getting everything without a command. The whole
outage, replayed by the printed command and compared run by run with an uninterrupted
run, is tests/tracking/test_mlflow_replay.py.
"""

import json
import logging

import mlflow
import pytest

from tests.support.mlflow_server import Server
from tf_srkd.run import config as config_lib
from tf_srkd.tracking import mlflow_pending
from tf_srkd.tracking import mlflow_replay
from tf_srkd.tracking import mlflow_stage
from tf_srkd.tracking import mlflow_store
from tf_srkd.tracking import mlflow_tracking
from tf_srkd.run import pipeline

KILL_AT_EPOCH = 1


@pytest.mark.slow
def test_a_store_back_before_the_run_ends_gets_everything_without_a_command(
    tmp_path, monkeypatch, caplog):
  store = tmp_path / "store"
  store.mkdir()
  servers = [Server(str(store))]
  try:
    servers[0].wait_ready()
    config = config_lib.Config.of(dataset="mnist", epochs=3, train_examples=128, batch_size=64,
                                  eval_batch_size=128, modes=("conventional",), distill_epochs=1,
                                  output_dir=str(tmp_path / "run"), verbose=0, mlflow=True,
                                  mlflow_experiment="outage", mlflow_tracking_uri=servers[0].uri)
    tracker = mlflow_tracking.connect(config)
    log_epoch = mlflow_stage.MlflowStage.log_epoch

    def kill_then_restart(stage, epoch, logs):
      if epoch == KILL_AT_EPOCH and len(servers) == 1:
        servers[0].stop()
        log_epoch(stage, epoch, logs)  # Fails: the tracker goes offline.
        servers.append(Server(str(store), port=servers[0].port))  # Back on the same address.
        return
      log_epoch(stage, epoch, logs)

    replay_if_reachable = mlflow_replay.replay_if_reachable

    def when_ready(pending):
      servers[-1].wait_ready()
      return replay_if_reachable(pending)

    monkeypatch.setattr(mlflow_stage.MlflowStage, "log_epoch", kill_then_restart)
    monkeypatch.setattr(mlflow_replay, "replay_if_reachable", when_ready)
    with caplog.at_level(logging.WARNING):
      pipeline.run(config, tracker=tracker)
    warnings = [r.getMessage() for r in caplog.records if "MLflow" in r.getMessage()]
    assert not any("upload them with" in w for w in warnings), warnings
    assert any(w.startswith("MLflow answers again: uploaded the ") for w in warnings), warnings
    pending = tmp_path / "run" / "mlflow_pending"
    assert (pending / "calls.uploaded.json").is_file() and not (pending / "calls.json").exists()
    client = mlflow.MlflowClient(tracking_uri=servers[-1].uri)
    teacher_run = tracker.stage_run_id("teacher")
    assert sorted(m.step for m in client.get_metric_history(teacher_run, "loss")) == [0, 1, 2]
    assert client.get_run(teacher_run).info.status == "FINISHED"
    assert client.get_run(tracker.parent_run_id).info.status == "FINISHED"
  finally:
    for server in servers:
      server.stop()


def test_a_failed_upload_keeps_exactly_the_calls_not_yet_made(tmp_path, monkeypatch):
  # Nothing listens on port 9: without fail-fast HTTP, MLflow's retries with back-off
  # spent ~4 minutes here (CI log) before the same refusal.
  for name, value in mlflow_store.FAIL_FAST_ENV.items():
    monkeypatch.setenv(name, value)
  kept = mlflow_pending.PendingLog(str(tmp_path), "http://127.0.0.1:9")
  for step in range(3):
    kept.add("log", "log_text", ("run-id", f"text {step}", f"t{step}.txt"))
  made = []

  def log_text(self, run_id, text, name):
    del self, run_id, name
    if len(made) == 1:
      raise ConnectionError("store went away again")
    made.append(text)

  monkeypatch.setattr(mlflow.MlflowClient, "log_text", log_text)
  with pytest.raises(ConnectionError):
    mlflow_replay.replay(str(tmp_path))
  done = json.loads((tmp_path / mlflow_replay.PROGRESS).read_text())["done"]
  left = json.loads((tmp_path / "calls.json").read_text())["calls"][done:]
  assert made == ["text 0"] and [c["args"][1] for c in left] == ["text 1", "text 2"]
  monkeypatch.setattr(mlflow.MlflowClient, "log_text",
                      lambda self, run_id, text, name: made.append(text))
  assert mlflow_replay.replay(str(tmp_path)) == 2
  assert made == ["text 0", "text 1", "text 2"]
  assert mlflow_replay.replay_if_reachable(kept) is None  # Nothing listens on port 9.

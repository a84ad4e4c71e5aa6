"""An outage replayed leaves MLflow as if nothing happened, and a second upload makes nothing.

Two runs of the same configuration go to one live `mlflow server`: one without
trouble, one whose server is killed during the teacher stage and restarted after
the run. The run with the outage must not wait on the dead store (no retries: one
fast failure, then no more calls) and warn once. After the printed upload command,
the two experiments are compared run by run: names, status, tags, params, metric keys
with their step counts, dataset inputs, artifact lists and logged models. Only ids,
timestamps, the output directory, the experiment's name and the upload's own tag may
differ.
"""

import logging
import os
import subprocess
import sys
import time

import mlflow
import pytest

from tests.support.mlflow_server import Server
from tf_srkd.run import config as config_lib
from tf_srkd.run import pipeline
from tf_srkd.tracking import mlflow_pending
from tf_srkd.tracking import mlflow_stage
from tf_srkd.tracking import mlflow_tracking

pytestmark = pytest.mark.slow

KILL_AT_EPOCH = 1
#: What may differ between an uninterrupted run and a replayed one (besides ids and times).
RUN_SPECIFIC_TAGS = {"output_dir", mlflow_pending.REPLAYED_TAG, "mlflow.parentRunId"}
RUN_SPECIFIC_PARAMS = {"output_dir", "mlflow_experiment"}


def _config(tmp_path, name, uri):
  return config_lib.Config.of(dataset="mnist", epochs=3, train_examples=256, batch_size=64,
                              eval_batch_size=256, modes=("hybrid",),
                              distill_epochs=2, output_dir=str(tmp_path / name), verbose=0,
                              mlflow=True, mlflow_experiment=name, mlflow_tracking_uri=uri)


def _artifacts(client, run_id, path=None):
  found = []
  for entry in client.list_artifacts(run_id, path):
    found += _artifacts(client, run_id, entry.path) if entry.is_dir else [entry.path]
  return sorted(found)


def snapshot(client, experiment_name):
  """{run name: what the run holds, ids and times left out} of one experiment."""
  experiment = client.get_experiment_by_name(experiment_name)
  runs = client.search_runs([experiment.experiment_id], max_results=100)
  names = {r.info.run_id: r.info.run_name for r in runs}
  models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
  result = {}
  for run in runs:
    run_id = run.info.run_id
    assert run.info.run_name not in result, f"two runs named {run.info.run_name}"
    tags = {k: v for k, v in run.data.tags.items() if k not in RUN_SPECIFIC_TAGS}
    result[run.info.run_name] = {
        "status": run.info.status,
        "parent": names.get(run.data.tags.get("mlflow.parentRunId")),
        "tags": tags,
        "params": {k: v for k, v in run.data.params.items() if k not in RUN_SPECIFIC_PARAMS},
        "metrics": {key: len(client.get_metric_history(run_id, key)) for key in run.data.metrics},
        "datasets": sorted((d.dataset.name, d.dataset.digest, d.dataset.profile,
                            tuple(sorted((t.key, t.value) for t in d.tags)))
                           for d in run.inputs.dataset_inputs),
        "artifacts": _artifacts(client, run_id),
        "models": {
            m.name: {"status": str(m.status),
                     "tags": {k: v for k, v in m.tags.items() if k not in RUN_SPECIFIC_TAGS},
                     "artifacts": sorted(a.path for a in
                                         client.list_logged_model_artifacts(m.model_id))}
            for m in models if m.source_run_id == run_id},
    }
  return result


def test_a_replayed_outage_matches_the_uninterrupted_run_and_replays_once(
    tmp_path, monkeypatch, caplog):
  store = tmp_path / "store"
  store.mkdir()
  server = Server(str(store))
  try:
    server.wait_ready()
    reference = _config(tmp_path, "reference", server.uri)
    pipeline.run(reference, tracker=mlflow_tracking.connect(reference))

    outage = _config(tmp_path, "outage", server.uri)
    tracker = mlflow_tracking.connect(outage)
    log_epoch = mlflow_stage.MlflowStage.log_epoch
    killed = {}

    def kill_then_log(stage, epoch, logs):
      if stage.name == "teacher" and epoch == KILL_AT_EPOCH and not killed:
        server.stop()
        killed["at"] = time.monotonic()
      log_epoch(stage, epoch, logs)

    monkeypatch.setattr(mlflow_stage.MlflowStage, "log_epoch", kill_then_log)
    with caplog.at_level(logging.WARNING):
      pipeline.run(outage, tracker=tracker)
    after_kill = time.monotonic() - killed["at"]
    monkeypatch.undo()
  finally:
    server.stop()
  # MLflow's default retries cost ~4 minutes per call; the rest of the run is seconds.
  assert after_kill < 120, after_kill
  warnings = [r.getMessage() for r in caplog.records if r.name != "absl"
              and "MLflow" in r.getMessage()]
  assert sum("training goes on without MLflow" in w for w in warnings) == 1, warnings
  upload = [w for w in warnings if "upload them with: " in w]
  assert len(upload) == 1 and "\n" not in upload[0], warnings
  pending = os.path.join(outage.output_dir, "mlflow_pending")
  kept = mlflow_pending.CALLS
  assert os.path.isfile(os.path.join(pending, kept))

  server = Server(str(store))  # The store comes back, on another port.
  try:
    server.wait_ready()
    command = upload[0].split("upload them with: ")[1].split()
    assert command[:3] == ["python", "-m", "tf_srkd.tracking.mlflow_replay"]
    argv = [sys.executable, "-m", command[2], command[3], f"--tracking_uri={server.uri}"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    expected = snapshot(client, "reference")
    replayed = snapshot(client, "outage")
    assert set(replayed) == set(expected)
    for name in expected:
      for key in expected[name]:
        want, got = expected[name][key], replayed[name][key]
        if isinstance(want, dict) and key in ("tags", "params", "metrics"):
          assert got == want, f"{name} {key}: {sorted(set(got.items()) ^ set(want.items()))}"
        elif key == "models":
          assert set(got) == set(want), (name, sorted(got), sorted(want))
          for model in want:
            for part in want[model]:
              g, w = got[model][part], want[model][part]
              differ = sorted(set(g.items()) ^ set(w.items())) if isinstance(w, dict) else (g, w)
              assert g == w, f"{name} {model} {part}: {differ}"
        else:
          assert got == want, (name, key, got, want)
    # The runs the upload created say so; the teacher started before the outage.
    runs = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
    created = {r.info.run_name for r in runs if mlflow_pending.REPLAYED_TAG in r.data.tags}
    assert created == {n for n in expected if n.startswith("student-")}

    second = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert second.returncode == 0 and "nothing to upload" in second.stdout, second.stderr[-2000:]
    assert snapshot(client, "outage") == replayed
  finally:
    server.stop()
  assert os.path.isfile(os.path.join(pending, mlflow_pending.UPLOADED))

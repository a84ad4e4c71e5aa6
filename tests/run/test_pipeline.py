"""End-to-end: all four modes on tfds mock data, the output contract, reuse and resume."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tf_srkd.run import config as config_lib
from tf_srkd.run import pipeline
from tf_srkd.tracking import base as tracking

N = 96
# Tests sharing the module fixture run on one pytest-xdist worker, which builds it once.
SHARES_MOCK_RUN = pytest.mark.xdist_group("test_pipeline_mock_run")


def smoke_config(out, **overrides):
  config = config_lib.Config.of(dataset="mnist", epochs=2, train_examples=N, batch_size=32,
                                eval_batch_size=64, output_dir=str(out), verbose=0, mlflow=False,
                                alpha=0.5, distill_alpha=0.5, seed=3)
  return config.replace(**overrides)


@pytest.fixture(scope="module")
def mock_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("mock") / "run"
  with tfds.testing.mock_data(num_examples=N):
    summary = pipeline.run(smoke_config(out))
  return out, summary


@SHARES_MOCK_RUN
def test_all_four_modes_write_the_output_contract(mock_run):
  out, summary = mock_run
  for name in ("flags.txt", "run_config.json", "summary.json", "teacher/model.keras",
               "teacher/participation.npy", "teacher/significance.npy", "teacher/metrics.json"):
    assert (out / name).is_file(), name
  participation = np.load(out / "teacher/participation.npy")
  significance = np.load(out / "teacher/significance.npy")
  assert participation.dtype == np.int32 and participation.shape == (N,)
  assert significance.dtype == np.float32 and significance.shape == (N,)
  assert participation.min() >= 0 and participation.max() <= 2
  assert not (out / "teacher/backup").exists()
  for mode in ("conventional", "significance", "regulated", "hybrid"):
    d = out / "students" / mode
    assert (d / "model.keras").is_file() and (d / "metrics.json").is_file()
    assert (d / "participation.npy").is_file() == (mode in ("regulated", "hybrid"))
  on_disk = json.loads((out / "summary.json").read_text())
  assert on_disk == json.loads(json.dumps(summary))
  assert set(on_disk) == {"dataset", "train_examples", "teacher", "students"}
  assert on_disk["train_examples"] == N
  assert on_disk["teacher"]["params"] == 61706
  assert on_disk["teacher"]["zeta"] == pytest.approx(participation.sum() / (2 * N))
  for mode, m in on_disk["students"].items():
    assert m["params"] == 35820
    assert 0 <= m["test_accuracy"] <= 1
    assert (m["zeta"] is None) == (mode in ("conventional", "significance"))
  hybrid = np.load(out / "students/hybrid/participation.npy")
  assert on_disk["students"]["hybrid"]["zeta"] == pytest.approx(hybrid.sum() / (2 * N))
  assert "--modes=conventional,significance,regulated,hybrid" in (out / "flags.txt").read_text()


@SHARES_MOCK_RUN
def test_history_has_every_epoch(mock_run):
  out, _ = mock_run
  metrics = json.loads((out / "teacher/metrics.json").read_text())
  history = metrics["history"]
  assert [h["epoch"] for h in history] == [0, 1]
  assert history[0]["eta"] == 0.0
  assert history[1]["eta"] == pytest.approx(1 - np.exp(-0.5))
  counts = np.load(out / "teacher/participation.npy")
  assert sum(h["participation_fraction"] for h in history) * N == pytest.approx(counts.sum(), abs=1e-3)


@SHARES_MOCK_RUN
def test_rerun_reuses_finished_stages(mock_run):
  out, summary = mock_run
  before = {p: os.path.getmtime(p) for p in out.rglob("*.keras")}
  with tfds.testing.mock_data(num_examples=N):
    again = pipeline.run(smoke_config(out))
  assert again == summary
  assert {p: os.path.getmtime(p) for p in out.rglob("*.keras")} == before


@SHARES_MOCK_RUN
def test_different_settings_are_refused_then_moved_aside(mock_run, tmp_path):
  out, _ = mock_run
  with pytest.raises(config_lib.ConfigError, match="different settings \\(epochs\\)"):
    with tfds.testing.mock_data(num_examples=N):
      pipeline.run(smoke_config(out, epochs=3))


@SHARES_MOCK_RUN
@pytest.mark.slow
def test_teacher_dir_reuse_distills_without_training_a_teacher(mock_run, tmp_path):
  out, summary = mock_run
  new = tmp_path / "reuse"
  with tfds.testing.mock_data(num_examples=N):
    result = pipeline.run(smoke_config(new, teacher_dir=str(out), modes=("significance",),
                                       distill_epochs=1))
  assert not (new / "teacher").exists()
  assert result["teacher"]["test_accuracy"] == summary["teacher"]["test_accuracy"]
  assert (new / "students/significance/model.keras").is_file()


@pytest.mark.slow
def test_overwrite_moves_the_old_run_aside(tmp_path):
  out = tmp_path / "run"
  with tfds.testing.mock_data(num_examples=N):
    pipeline.run(smoke_config(out, stage="teacher", epochs=1))
    pipeline.run(smoke_config(out, stage="teacher", epochs=2, overwrite=True))
  old = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
  assert len(old) == 1 and (old[0] / "teacher/model.keras").is_file()
  assert json.loads((out / "teacher/metrics.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_conventional_teacher_alpha_inf_runs_and_everyone_takes_part(tmp_path):
  out = tmp_path / "inf"
  with tfds.testing.mock_data(num_examples=N):
    summary = pipeline.run(smoke_config(out, stage="teacher", alpha=float("inf")))
  assert summary["teacher"]["zeta"] == 1.0
  np.testing.assert_array_equal(np.load(out / "teacher/participation.npy"), np.full(N, 2))
  assert json.loads((out / "run_config.json").read_text())["alpha"] == "inf"
  assert json.loads((out / "teacher/metrics.json").read_text())["alpha"] == "inf"


def test_null_tracker_knows_no_runs():
  tracker = tracking.NullTracker()
  assert tracker.stage_run_id("teacher") is None and tracker.tracking_uri is None


@pytest.mark.slow
def test_export_flag_writes_verified_tflite_students(tmp_path):
  """`--export` is the entry point's step after the pipeline (the library never exports)."""
  from tf_srkd.cli import main as main_lib  # pylint: disable=import-outside-toplevel

  out = tmp_path / "export"
  with tfds.testing.mock_data(num_examples=N):
    config = smoke_config(out, epochs=1, modes=("regulated",), export=("float32",))
    pipeline.run(config)
    assert not (out / "students/regulated/tflite").exists()
    # Mock data are noise: the student is at chance, and is not exported unless asked.
    summary = main_lib.run(config)
    assert summary["students"]["regulated"]["at_chance"] is True
    assert not (out / "students/regulated/tflite").exists()
    assert "--export_at_chance" in main_lib.refusal_at_chance(config, summary)
    main_lib.run(config.replace(export_at_chance=True))
  tflite_dir = out / "students/regulated/tflite"
  assert (tflite_dir / "model_float32.tflite").is_file()
  assert (tflite_dir / "labels.txt").read_text().splitlines()[:2] == ["0", "1"]
  sidecar = json.loads((tflite_dir / "model_float32.json").read_text())
  assert sidecar["quantization"] == "float32"
  assert any("agreement" in k for k in json.dumps(sidecar).split('"'))


def test_summary_table_states_zeta_as_a_fraction_for_every_model():
  summary = {"dataset": "mnist", "train_examples": 256,
             "teacher": {"test_accuracy": 0.98, "zeta": 0.2141, "params": 61706},
             "students": {"conventional": {"test_accuracy": 0.9, "zeta": None, "params": 35820},
                          "hybrid": {"test_accuracy": None, "zeta": None, "params": None}}}
  lines = pipeline.format_summary(summary).splitlines()
  assert "fraction" in lines[0]
  assert lines[2].split() == ["teacher", "0.9800", "0.2141", "61,706"]
  assert lines[3].split() == ["student/conventional", "0.9000", "1.0000", "35,820"]
  assert lines[4].split() == ["student/hybrid", "-", "-", "-"]


def test_measured_inputs_are_recorded_but_not_compared_on_restart(tmp_path):
  """A --stage=distill restart does not measure the teacher again; a measurement that
  differs in the last digit (other hardware) does not refuse the run either."""
  out = tmp_path / "run"
  config = smoke_config(out, epochs=1, modes=("regulated",))
  first = {"teacher_input": {"choice": "pixels", "unit_accuracy": 0.1, "pixels_accuracy": 0.7,
                             "images": 1000}}
  pipeline.prepare_output_dir(config, True, None, None, first)
  student = {"student_input": {"choice": "unit", "unit_accuracy": 0.5, "pixels_accuracy": 0.1,
                               "images": 1000}}
  pipeline.prepare_output_dir(config, True, None, None, student)  # no error
  recorded = json.loads((out / "run_config.json").read_text())["measured_inputs"]
  assert set(recorded) == {"teacher_input", "student_input"}

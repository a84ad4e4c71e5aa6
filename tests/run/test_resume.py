"""Unbreakable runs: NaN losses, a changed teacher, stages without their record.

The damaged-file fuzz test is tests/run/test_checked_inputs.py.
"""

import errno
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tf_srkd.core import callbacks
from tf_srkd.run import config as config_lib
from tf_srkd.storage import disk_errors
from tf_srkd.run import pipeline

N = 96
# Tests sharing the module fixture run on one pytest-xdist worker, which builds it once.
SHARES_TEACHERS = pytest.mark.xdist_group("test_reliability_teachers")


def smoke_config(out, **overrides):
  config = config_lib.Config.of(dataset="mnist", epochs=2, train_examples=N, batch_size=32,
                                eval_batch_size=64, output_dir=str(out), verbose=0, mlflow=False,
                                alpha=0.5, distill_alpha=0.5, seed=3, modes=("conventional",))
  return config.replace(**overrides)


def run(config):
  with tfds.testing.mock_data(num_examples=N):
    return pipeline.run(config)


def test_guard_names_epoch_quantity_and_the_kept_checkpoint():
  guard = callbacks.FiniteLogsGuard("student-hybrid", "/r/backup")
  guard.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5})
  with pytest.raises(config_lib.ConfigError) as e:
    guard.on_epoch_end(4, {"accuracy": 0.5, "loss": math.inf})
  assert str(e.value).startswith("student-hybrid: epoch 4: loss is inf")
  assert "checkpoint of epoch 3 is kept in /r/backup" in str(e.value)
  with pytest.raises(config_lib.ConfigError, match="epoch 0: loss is nan.*nothing was"):
    guard.on_epoch_end(0, {"loss": math.nan})


def test_a_diverging_teacher_stops_in_one_line_with_no_nan_on_disk(tmp_path):
  out = tmp_path / "out"
  with pytest.raises(config_lib.ConfigError) as e:
    run(smoke_config(out, stage="teacher", teacher_lr=1e30, epochs=3))
  message = str(e.value)
  assert "\n" not in message and message.startswith("teacher: epoch ")
  assert " is nan" in message or " is inf" in message
  assert not (out / "teacher" / "metrics.json").exists()
  history = out / "teacher" / "history.json"
  if history.exists():  # Only the good epochs, in strict JSON.
    json.loads(history.read_text(), parse_constant=lambda c: pytest.fail(c))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
  """Two teachers: A, and B = A with a different (valid) significance."""
  root = tmp_path_factory.mktemp("teachers")
  run(smoke_config(root / "A", stage="teacher"))
  shutil.copytree(root / "A", root / "B")
  significance = np.load(root / "B/teacher/significance.npy")
  np.save(root / "B/teacher/significance.npy", (significance * 0.5).astype(np.float32))
  return root / "A", root / "B"


@SHARES_TEACHERS
def test_another_teacher_is_refused_on_the_same_output_dir(tmp_path, teachers):
  a, b = teachers
  out = tmp_path / "D"
  run(smoke_config(out, stage="distill", teacher_dir=str(a)))
  identity = json.loads((out / "run_config.json").read_text())
  assert len(identity["teacher_sha256"]) == 64
  run(smoke_config(out, stage="distill", teacher_dir=str(a)))  # The same teacher resumes.
  with pytest.raises(config_lib.ConfigError, match=r"different settings \(teacher_sha256\)"):
    run(smoke_config(out, stage="distill", teacher_dir=str(b)))
  run(smoke_config(out, stage="distill", teacher_dir=str(b), overwrite=True))
  assert [p for p in os.listdir(tmp_path) if p.startswith("D.old-")]


def test_identity_without_teacher_dir_is_unchanged():
  config = smoke_config("/x")
  assert "teacher_sha256" not in config_lib.identity(config)
  assert config_lib.identity(config, "ab")["teacher_sha256"] == "ab"


@SHARES_TEACHERS
def test_stages_without_run_config_are_refused_unless_overwrite(tmp_path, teachers):
  out = tmp_path / "D"
  run(smoke_config(out, stage="distill", teacher_dir=str(teachers[0])))
  (out / "run_config.json").unlink()
  with pytest.raises(config_lib.ConfigError, match="holds stages but no run_config.json"):
    run(smoke_config(out, stage="distill", teacher_dir=str(teachers[0])))
  assert not (out / "run_config.json").exists()
  run(smoke_config(out, stage="distill", teacher_dir=str(teachers[0]), overwrite=True))
  assert (out / "run_config.json").exists()


@pytest.fixture()
def interrupted_teacher(tmp_path, monkeypatch):
  """A run whose teacher trained but crashed before writing its files: backup/ remains."""
  from tf_srkd.run import stages  # pylint: disable=import-outside-toplevel

  def crash(*args):
    raise KeyboardInterrupt
  out = tmp_path / "out"
  with monkeypatch.context() as m:
    m.setattr(stages, "_write_result", crash)
    with pytest.raises(KeyboardInterrupt):
      run(smoke_config(out, stage="teacher"))
  assert (out / "teacher/backup/checkpoint").exists()
  return out


@pytest.mark.parametrize("damage", ["random data", "truncated index", "bad history"])
def test_a_damaged_resume_state_is_refused_in_one_line(interrupted_teacher, damage):
  out = interrupted_teacher
  backup = out / "teacher/backup"
  if damage == "random data":
    target = next(backup.glob("*.data-*"))
    target.write_bytes(np.random.default_rng(0).bytes(target.stat().st_size))
  elif damage == "truncated index":
    target = next(backup.glob("*.index"))
    target.write_bytes(target.read_bytes()[:20])
  else:
    (out / "teacher/history.json").write_text('[{"epoch": "x"}]')
  with pytest.raises(config_lib.ConfigError) as e:
    run(smoke_config(out, stage="teacher"))
  assert "\n" not in str(e.value)
  assert "damaged checkpoint" in str(e.value) or "history.json" in str(e.value)
  assert not (out / "teacher/metrics.json").exists()


def test_an_intact_resume_state_resumes(interrupted_teacher):
  run(smoke_config(interrupted_teacher, stage="teacher"))
  assert (interrupted_teacher / "teacher/metrics.json").exists()


def test_disk_full_message_recognises_oserror_tf_errors_and_chains():
  full = OSError(errno.ENOSPC, "No space left on device", "/r/teacher/metrics.json")
  message = disk_errors.disk_full_message(full)
  assert message.startswith("No space left on device writing /r/teacher/metrics.json; free")
  assert "\n" not in message
  quota = OSError(errno.EDQUOT, "Disk quota exceeded")
  assert disk_errors.disk_full_message(quota).startswith("Disk quota exceeded; free")
  try:  # TensorFlow's C++ file system quotes strerror in an OpError, re-raised by Keras.
    try:
      raise RuntimeError("/r/backup/ckpt-3.data: No space left on device")
    except RuntimeError as inner:
      raise ValueError("could not save the checkpoint") from inner
  except ValueError as outer:
    assert disk_errors.disk_full_message(outer).startswith(
        "No space left on device (RuntimeError: /r/backup/ckpt-3.data")
  assert disk_errors.disk_full_message(OSError(errno.EACCES, "Permission denied", "/r")) is None
  assert disk_errors.disk_full_message(ValueError("shapes differ")) is None


# Runs the entry point with every JSON write of `metrics.json` failing as on a full disk.
_FULL_DISK_MAIN = """
import errno, sys
from tf_srkd.storage import io_utils
from tf_srkd import main
real = io_utils.write_json
def write_json(path, value):
  if path.endswith("metrics.json"):
    raise OSError(errno.ENOSPC, "No space left on device", path)
  real(path, value)
io_utils.write_json = write_json
sys.argv = ["tf_srkd.main"] + sys.argv[1:]
main.run_main()
"""


@pytest.mark.slow
def test_a_full_disk_is_one_line_exit_2_and_the_rerun_finishes(tmp_path):
  out = tmp_path / "out"
  args = ["--flagfile=flags/smoke.flags", "--stage=teacher", f"--output_dir={out}"]
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  full = subprocess.run([sys.executable, "-c", _FULL_DISK_MAIN, *args], cwd=root,
                        capture_output=True, text=True, check=False)
  lines = full.stderr.strip().splitlines()
  assert full.returncode == 2, full.stderr[-2000:]
  assert "Traceback" not in full.stderr
  assert lines[-1].startswith("error: No space left on device writing ")
  assert lines[-1].endswith("no file was left half-written)")
  assert "metrics.json" in lines[-1]
  leftovers = [p for p in out.rglob("*") if ".tmp" in p.name]
  assert not leftovers
  assert not (out / "teacher" / "metrics.json").exists()
  rerun = subprocess.run([sys.executable, "-m", "tf_srkd.main", *args], cwd=root,
                         capture_output=True, text=True, check=False)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert json.loads((out / "teacher" / "metrics.json").read_text())

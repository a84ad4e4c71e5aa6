"""tf.distribute exactness and crash-safe resume (subprocesses: device setup is per process)."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tests.support import cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def cli(*args, timeout=600):
  result = subprocess.run([sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/smoke.flags",
                           *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.slow
def test_one_and_two_replicas_give_identical_counts(tmp_path):
  common = ["--cpu_replicas=2", "--epochs=2", "--distill_epochs=1", "--train_examples=600",
            "--batch_size=100", "--alpha=0.5", "--distill_alpha=0.5", "--modes=hybrid"]
  cli(*common, "--strategy=default", f"--output_dir={tmp_path / 'one'}")
  cli(*common, "--strategy=mirrored", f"--output_dir={tmp_path / 'two'}")
  for name in ("teacher/participation.npy", "students/hybrid/participation.npy"):
    one, two = np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name)
    assert 0 < one.sum() < one.size * 2
    np.testing.assert_array_equal(one, two, err_msg=name)
  np.testing.assert_allclose(np.load(tmp_path / "one/teacher/significance.npy"),
                             np.load(tmp_path / "two/teacher/significance.npy"), atol=1e-6)


@pytest.mark.slow
def test_batch_not_divisible_by_replicas_is_refused(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/smoke.flags", "--cpu_replicas=2",
       "--strategy=mirrored", "--batch_size=63", f"--output_dir={tmp_path / 'x'}"],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert "--batch_size=63: the global batch must divide evenly over the 2 replicas" in result.stderr
  assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_two_worker_multiworker_counts_match_brute_force(tmp_path):
  started = time.time()
  cluster.run_two_workers(lambda index: [sys.executable, "tests/support/multiworker_worker.py",
                                  str(tmp_path / f"worker{index}.npz")])
  wall = time.time() - started
  assert not (tmp_path / "worker1.npz").exists(), "only the chief writes"
  result = np.load(tmp_path / "worker0.npz")
  assert int(result["replicas"]) == 2
  np.testing.assert_array_equal(result["counts"], result["recount"])
  assert result["counts"].sum() == result["per_epoch"].sum()
  np.testing.assert_allclose(result["fractions"] * 600, result["per_epoch"], atol=1e-3)
  assert 0 < result["counts"].sum() < 2 * 600
  print(f"2-worker MultiWorkerMirroredStrategy test wall time: {wall:.1f} s")


@pytest.mark.slow
def test_two_worker_cli_equals_one_process(tmp_path):
  """The whole job under MultiWorkerMirroredStrategy: same results, only the chief writes."""
  args = ["--modes=regulated", "--epochs=2", "--train_examples=256", "--alpha=0.5",
          "--distill_alpha=0.5"]
  cli(*args, f"--output_dir={tmp_path / 'single'}")
  outputs = cluster.run_two_workers(lambda index: [
      sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/smoke.flags", *args,
      "--strategy=multi_worker", f"--output_dir={tmp_path / 'multi'}"])
  assert "student/regulated" in outputs[0] and "student/regulated" not in outputs[1]
  for name in ("teacher/participation.npy", "students/regulated/participation.npy"):
    np.testing.assert_array_equal(np.load(tmp_path / "single" / name),
                                  np.load(tmp_path / "multi" / name), err_msg=name)
  single = json.loads((tmp_path / "single/summary.json").read_text())
  multi = json.loads((tmp_path / "multi/summary.json").read_text())
  assert single == multi
  assert not [p for p in (tmp_path / "multi").rglob("*") if ".tmp" in p.name]


def _kill_when(path_glob_dir, prefix, process, minimum=1, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if process.poll() is not None:
      return False
    if os.path.isdir(path_glob_dir):
      numbers = [int(f.split("-")[1].split(".")[0]) for f in os.listdir(path_glob_dir)
                 if f.startswith(prefix) and f.endswith(".index")]
      if numbers and max(numbers) >= minimum:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True
    time.sleep(0.05)
  raise AssertionError("checkpoint never appeared")


@pytest.mark.slow
@pytest.mark.parametrize("stage_dir,extra", [
    ("teacher", ["--stage=teacher"]),
    ("students/hybrid", ["--modes=hybrid"]),
    ("teacher", ["--stage=teacher", "--margin_refresh=bounded", "--margin_max_age=2",
                 "--margin_band=0.05"]),
])
def test_sigkill_then_restart_equals_uninterrupted(tmp_path, stage_dir, extra):
  args = ["--deterministic", "--epochs=6", "--train_examples=3000", "--batch_size=100",
          "--alpha=0.3", "--distill_alpha=0.3", "--backward=auto", *extra]
  cli(*args, f"--output_dir={tmp_path / 'straight'}")
  crashed = tmp_path / "crashed"
  process = subprocess.Popen(
      [sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/smoke.flags", *args,
       f"--output_dir={crashed}"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  killed = _kill_when(str(crashed / stage_dir / "backup"), "ckpt-", process, minimum=1)
  assert killed, "the run finished before it could be killed"
  assert not (crashed / stage_dir / "metrics.json").exists()
  cli(*args, f"--output_dir={crashed}")  # the same command again
  a, b = tmp_path / "straight" / stage_dir, crashed / stage_dir
  np.testing.assert_array_equal(np.load(a / "participation.npy"), np.load(b / "participation.npy"))
  wa = keras.models.load_model(a / "model.keras").get_weights()
  wb = keras.models.load_model(b / "model.keras").get_weights()
  for x, y in zip(wa, wb):
    np.testing.assert_array_equal(x, y)
  history = json.loads((b / "metrics.json").read_text())["history"]
  assert [h["epoch"] for h in history] == list(range(6))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_margin_reuse_is_bit_identical_on_two_replicas(tmp_path, kind):
  """The version array stays consistent across replicas: reuse changes no bit."""
  subprocess.run([sys.executable, "tests/support/margin_reuse_worker.py", kind, str(tmp_path / "r.npz")],
                 cwd=ROOT, env=ENV, check=True, timeout=900)
  result = np.load(tmp_path / "r.npz")
  assert int(result["replicas"]) == 2
  states = sorted(k[len("plain_"):] for k in result.files if k.startswith("plain_state"))
  assert states
  for key in ["counts", "participation_fraction", "loss", *states]:
    np.testing.assert_array_equal(result[f"plain_{key}"], result[f"reuse_{key}"], err_msg=key)
  assert not result["plain_gate_from_cache"].any()
  assert ((0 < result["reuse_gate_from_cache"]) & (result["reuse_gate_from_cache"] < 1)).any()

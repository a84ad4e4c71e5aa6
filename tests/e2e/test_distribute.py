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
from tests.support import idle_runs
from tf_srkd.data import arrays as data
from tf_srkd.data import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def cli(*args, timeout=600):
  result = subprocess.run([sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/smoke.flags",
                           *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.slow
def test_one_and_two_replicas_in_memory_and_on_disk_give_the_same_run(tmp_path):
  """Replicas x storage: 1 replica in memory, 2 replicas in memory and streamed from disk
  (`--max_in_memory_mb=0`), three runs with one result: each pair differs in one thing,
  and the chain covers both. Under `--deterministic`, so that the students' weights can
  be compared bit for bit."""
  common = ["--deterministic", "--cpu_replicas=2", "--epochs=2", "--distill_epochs=1",
            "--train_examples=600", "--batch_size=100", "--alpha=0.5", "--distill_alpha=0.5",
            "--modes=hybrid"]
  runs = {}
  for strategy, storage, extra in (("default", "memory", []), ("mirrored", "memory", []),
                                   ("mirrored", "disk", ["--max_in_memory_mb=0"])):
    runs[strategy, storage] = out = tmp_path / f"{strategy}-{storage}"
    cli(*common, *extra, f"--strategy={strategy}", f"--output_dir={out}")
  one = runs["default", "memory"]
  assert np.load(one / "teacher/significance.npy").shape == (600,)
  for name in ("teacher/participation.npy", "students/hybrid/participation.npy"):
    counts = np.load(one / name)
    assert counts.shape == (600,) and 0 < counts.sum() < counts.size * 2
    for key, out in runs.items():
      np.testing.assert_array_equal(counts, np.load(out / name), err_msg=f"{name} {key}")
  for key, out in runs.items():
    np.testing.assert_allclose(np.load(one / "teacher/significance.npy"),
                               np.load(out / "teacher/significance.npy"), atol=1e-6,
                               err_msg=str(key))
  # Storage changes no bit of a student (the streamed batches are the in-memory ones:
  # tests/data/test_streaming.py).
  memory, disk = (keras.models.load_model(
      runs["mirrored", storage] / "students/hybrid/model.keras").get_weights()
                  for storage in ("memory", "disk"))
  for wa, wb in zip(memory, disk, strict=True):
    np.testing.assert_array_equal(wa, wb)
  np.testing.assert_array_equal(np.load(runs["mirrored", "memory"] / "teacher/significance.npy"),
                                np.load(runs["mirrored", "disk"] / "teacher/significance.npy"))


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
def test_two_worker_cli_streaming_equals_one_process_in_memory(tmp_path):
  """The whole job under MultiWorkerMirroredStrategy, streamed from disk: each worker reads
  its share of every batch by global id, only the chief writes, and the run is the one
  process's in memory. (Two workers in memory, through the library, are
  test_two_worker_multiworker_counts_match_brute_force's.)"""
  args = ["--deterministic", "--modes=regulated", "--epochs=2", "--train_examples=256",
          "--alpha=0.5", "--distill_alpha=0.5"]
  cli(*args, f"--output_dir={tmp_path / 'single'}")
  multi_dir = tmp_path / "multi"
  outputs = cluster.run_two_workers(lambda index: [
      sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/smoke.flags", *args,
      "--max_in_memory_mb=0", "--strategy=multi_worker", f"--output_dir={multi_dir}"])
  assert "student/regulated" in outputs[0] and "student/regulated" not in outputs[1]
  for name in ("teacher/participation.npy", "teacher/significance.npy",
               "students/regulated/participation.npy"):
    np.testing.assert_array_equal(np.load(tmp_path / "single" / name), np.load(multi_dir / name),
                                  err_msg=name)
  assert not [p for p in multi_dir.rglob("*") if ".tmp" in p.name]
  assert json.loads((multi_dir / "summary.json").read_text()) == json.loads(
      (tmp_path / "single/summary.json").read_text())


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


def _start(args, output_dir):
  return subprocess.Popen(
      [sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/smoke.flags", *args,
       f"--output_dir={output_dir}"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)


def _assert_same_stage(a, b, epochs):
  np.testing.assert_array_equal(np.load(a / "participation.npy"), np.load(b / "participation.npy"))
  wa = keras.models.load_model(a / "model.keras").get_weights()
  wb = keras.models.load_model(b / "model.keras").get_weights()
  for x, y in zip(wa, wb):
    np.testing.assert_array_equal(x, y)
  history = json.loads((b / "metrics.json").read_text())["history"]
  assert [h["epoch"] for h in history] == list(range(epochs))


# One job killed twice, in the teacher stage and then in the student's, covers both
# stages' resume for the price of one uninterrupted run. The margin cache (bounded
# margins' ages included) is part of the stage's checkpoint: an in-process stop and
# resume with bounded margins is tests/e2e/test_bounded_margins.py.
@pytest.mark.slow
def test_sigkill_then_restart_equals_uninterrupted(tmp_path):
  kill_in = ("teacher", "students/hybrid")
  args = ["--deterministic", "--epochs=6", "--train_examples=3000", "--batch_size=100",
          "--alpha=0.3", "--distill_alpha=0.3", "--backward=auto", "--modes=hybrid"]
  cli(*args, f"--output_dir={tmp_path / 'straight'}")
  crashed = tmp_path / "crashed"
  for stage_dir in kill_in:
    killed = _kill_when(str(crashed / stage_dir / "backup"), "ckpt-", _start(args, crashed))
    assert killed, f"the run finished {stage_dir} before it could be killed"
    assert not (crashed / stage_dir / "metrics.json").exists()
  cli(*args, f"--output_dir={crashed}")  # the same command again
  for stage_dir in kill_in:
    _assert_same_stage(tmp_path / "straight" / stage_dir, crashed / stage_dir, epochs=6)


@pytest.fixture(scope="module")
def replica_runs(tmp_path_factory):
  """kind -> the 2-replica runs of tests/support/margin_reuse_worker.py (the teacher's with
  bounded margins too), each trained once for the tests that read them."""
  runs = {}

  def get(kind):
    if kind not in runs:
      output = tmp_path_factory.mktemp(f"replicas-{kind}") / "r.npz"
      refreshes = ["exact", "bounded"] if kind == "teacher" else ["exact"]
      subprocess.run([sys.executable, "tests/support/margin_reuse_worker.py", kind, str(output),
                      *refreshes], cwd=ROOT, env=ENV, check=True, timeout=900)
      runs[kind] = np.load(output)
    return runs[kind]

  return get


SHARES_REPLICA_RUNS = pytest.mark.xdist_group("test_distribute_replica_runs")


@pytest.mark.slow
@SHARES_REPLICA_RUNS
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_margin_reuse_is_bit_identical_on_two_replicas(replica_runs, kind):
  """The version array stays consistent across replicas: reuse changes no bit."""
  result = replica_runs(kind)
  assert int(result["replicas"]) == 2
  states = sorted(k[len("plain_"):] for k in result.files if k.startswith("plain_state"))
  assert states
  for key in ["counts", "participation_fraction", "loss", *states]:
    np.testing.assert_array_equal(result[f"plain_{key}"], result[f"reuse_{key}"], err_msg=key)
  assert not result["plain_gate_from_cache"].any()
  assert ((0 < result["reuse_gate_from_cache"]) & (result["reuse_gate_from_cache"] < 1)).any()


@pytest.mark.slow
@SHARES_REPLICA_RUNS
def test_bounded_margins_keep_the_same_rows_and_counts_on_one_and_two_replicas(replica_runs,
                                                                              tmp_path):
  """The bound decides from mirrored cached values: every replica decides alike, and the
  counts of a 2-replica run are those of the 1-replica run."""
  two = replica_runs("teacher")
  split = data.load_split(datasets.get_dataset_spec("mnist"), "train", idle_runs.N)
  one = idle_runs.train(split, tmp_path / "one", False, "teacher", reuse=True,
                        refresh="bounded")
  np.testing.assert_array_equal(one[0].participation_counts(), two["bounded_counts"])
  np.testing.assert_array_equal([h["participation_fraction"] for h in one[1]],
                                two["bounded_participation_fraction"])
  np.testing.assert_array_equal([h["gate_from_cache"] for h in one[1]],
                                two["bounded_gate_from_cache"])

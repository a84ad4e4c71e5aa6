"""One writer per run directory: the lock itself, and two CLI runs on one directory."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tf_srkd.storage import run_lock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_HOLD = ("import sys, time\n"
         "from tf_srkd.storage import run_lock\n"
         "lock = run_lock.RunDirLock(sys.argv[1]); lock.acquire()\n"
         "print('held', flush=True); time.sleep(600)\n")


def _holder(directory):
  process = subprocess.Popen([sys.executable, "-c", _HOLD, str(directory)],
                             stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=ROOT))
  assert process.stdout.readline().strip() == "held"
  return process


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
  holder = _holder(tmp_path / "run")
  try:
    with pytest.raises(run_lock.RunDirBusy, match=rf"pid {holder.pid}\)"):
      run_lock.RunDirLock(str(tmp_path / "run")).acquire()
  finally:
    holder.kill()
    holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
  holder = _holder(tmp_path / "run")
  os.kill(holder.pid, signal.SIGKILL)
  holder.wait()
  with run_lock.RunDirLock(str(tmp_path / "run")) as lock:
    assert lock.held
    with open(lock.path, encoding="ascii") as f:
      assert f.read().strip() == str(os.getpid())


def test_the_lock_follows_a_directory_made_anew(tmp_path):
  lock = run_lock.RunDirLock(str(tmp_path / "run"))
  lock.acquire()
  os.replace(tmp_path / "run", tmp_path / "run.old")  # --overwrite moves the old run aside.
  lock.acquire()
  assert os.path.exists(tmp_path / "run" / ".lock")
  with pytest.raises(run_lock.RunDirBusy):
    run_lock.RunDirLock(str(tmp_path / "run")).acquire()
  lock.release()
  run_lock.RunDirLock(str(tmp_path / "run.old")).acquire()  # The moved one is free.


@pytest.mark.slow
def test_two_runs_on_one_directory_exactly_one_runs(tmp_path):
  command = [sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/smoke.flags",
             "--modes=regulated", "--train_examples=8192", "--epochs=4",
             f"--output_dir={tmp_path / 'same'}"]  # Long enough to still be writing.
  env = dict(os.environ, PYTHONPATH=ROOT)
  first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not os.path.exists(tmp_path / "same" / "run_config.json"):  # The first is writing.
    assert first.poll() is None and time.time() < deadline, first.communicate()
    time.sleep(0.05)
  second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  out, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  if second.returncode == 0:  # The first had finished already: a plain resume, no mixing.
    assert "reused" in second.stdout or "done" in second.stdout
    pytest.skip("the first run finished before the second started")
  assert second.returncode == 2, second.stderr[-3000:]
  errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and f"pid {first.pid})" in errors[0] and "same" in errors[0]


def test_a_filesystem_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
  import errno  # pylint: disable=import-outside-toplevel
  import fcntl  # pylint: disable=import-outside-toplevel

  def no_locks(fd, operation):
    del fd, operation
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(fcntl, "flock", no_locks)
  lock = run_lock.RunDirLock(str(tmp_path / "run"))
  lock.acquire()
  assert not lock.held and "no file locks" in caplog.text

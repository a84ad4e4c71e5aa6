"""How many pytest-xdist workers `-n auto` starts, and TensorFlow's share of the cores."""

import os

import pytest

from tests import conftest

GIB = 2**30


@pytest.mark.parametrize("cpus,memory,expected", [
    (2, 23 * GIB, 2),      # the CI machine: one worker per core
    (1, None, 1),
    (16, 9 * GIB, 2),      # memory bounds it: 4 GiB per worker
    (64, None, conftest.MAX_AUTO_WORKERS),
    (4, 1 * GIB, 1),       # never fewer than one
])
def test_auto_workers(cpus, memory, expected):
  assert conftest.auto_workers(cpus, memory) == expected


def test_usable_cpus_and_memory_are_read():
  assert 1 <= conftest.usable_cpus() <= (os.cpu_count() or 1)
  memory = conftest.available_memory_bytes()
  assert memory is None or memory > 0


def test_each_worker_gives_tensorflow_its_share_of_the_cores():
  workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
  if workers < 2:
    assert not conftest.THREAD_VARIABLES_SET
    pytest.skip("not running under pytest-xdist with several workers")
  share = str(max(1, conftest.usable_cpus() // workers))
  for name in conftest.TF_THREAD_VARIABLES:
    if name in conftest.THREAD_VARIABLES_SET:
      assert conftest.THREAD_VARIABLES_SET[name] == share, name
      assert os.environ.get(name) == share, name
    else:  # the user's own setting wins and is left alone
      assert os.environ.get(name), name


def test_the_user_can_pin_the_worker_count(monkeypatch):
  monkeypatch.setattr(conftest, "usable_cpus", lambda: 16)
  monkeypatch.setattr(conftest, "available_memory_bytes", lambda: 9 * GIB)
  monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "3")
  assert conftest.pytest_xdist_auto_num_workers(None) is None  # xdist reads the variable
  monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS")
  assert conftest.pytest_xdist_auto_num_workers(None) == 2

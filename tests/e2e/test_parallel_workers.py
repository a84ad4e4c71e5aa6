"""How many pytest-xdist workers `-n auto` starts, TensorFlow's share of the cores, and the
order the tests are handed to them in."""

import os
import types

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


def _item(path, name, slow):
  return types.SimpleNamespace(fspath=path, name=name, slow=slow)


def test_files_with_slow_tests_run_first_each_file_whole_and_in_order():
  item = _item
  items = [item("a.py", "a1", False), item("a.py", "a2", False),
           item("b.py", "b1", False), item("b.py", "b2", True),
           item("c.py", "c1", False),
           item("d.py", "d1", True), item("d.py", "d2", False)]
  ordered = conftest.slow_modules_first(items, lambda i: i.slow)
  assert [i.name for i in ordered] == ["b1", "b2", "d1", "d2", "a1", "a2", "c1"]
  assert conftest.slow_modules_first(items, lambda i: False) == items


def test_this_session_runs_the_slow_files_first(request):
  """The hook really reorders the collected session (the unit above covers the rule)."""
  items = request.session.items
  slow = [i.get_closest_marker("slow") is not None for i in items]
  files = [str(i.fspath) for i in items]
  slow_files = {f for f, s in zip(files, slow) if s}
  flags = [f in slow_files for f in files]
  assert flags == sorted(flags, reverse=True)  # every slow file before every fast one

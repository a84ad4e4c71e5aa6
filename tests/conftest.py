"""Shared test setup: quiet TensorFlow, repo root on sys.path, the shared TFDS dir, and
TensorFlow's share of the cores when pytest-xdist runs the tests in several workers."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
SHARED_TFDS = os.path.join(os.path.dirname(ROOT), "shared", "tfds")
if not os.environ.get("TFDS_DATA_DIR") and os.path.isdir(SHARED_TFDS):
  os.environ["TFDS_DATA_DIR"] = SHARED_TFDS
elif os.environ.get("TFDS_DATA_DIR") and "://" not in os.environ["TFDS_DATA_DIR"]:
  # Relative to where the command was typed, also for the scripts and CLI runs
  # started from other working directories.
  os.environ["TFDS_DATA_DIR"] = os.path.abspath(os.path.expanduser(os.environ["TFDS_DATA_DIR"]))

# pytest and its workers end without CPython's last full collection over TensorFlow's
# objects, as the commands do (~1.3 s a process, at the very end of a run).
from tf_srkd.cli import environment as _cli_environment  # pylint: disable=wrong-import-position

_cli_environment.skip_the_final_collection()

#: TensorFlow reads its thread-pool sizes from these at start-up (0 or unset: every core).
TF_THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
#: `-n auto` starts at most this many workers: beyond it, worker start-up (each imports
#: TensorFlow) and the module fixtures built once per worker outweigh the gain.
MAX_AUTO_WORKERS = 8
#: Memory one worker may need at its peak: its own TensorFlow plus the CLI processes a
#: test starts (two workers of a MultiWorkerMirroredStrategy cluster, ~1.5 GiB each).
WORKER_MEMORY_BYTES = 4 * 2**30


def usable_cpus() -> int:
  """The cores this process may run on (a container's CPU set, not the host's count)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def available_memory_bytes():
  """MemAvailable from /proc/meminfo (None where there is none)."""
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def auto_workers(cpus: int, memory_bytes) -> int:
  """Workers for `-n auto`: one per core, within memory, at most MAX_AUTO_WORKERS."""
  workers = min(cpus, MAX_AUTO_WORKERS)
  if memory_bytes is not None:
    workers = min(workers, memory_bytes // WORKER_MEMORY_BYTES)
  return max(1, int(workers))


def pytest_xdist_auto_num_workers(config) -> "int | None":
  """pytest-xdist hook: the worker count `-n auto` uses.

  Args:
    config: pytest's config (unused).

  Returns:
    `auto_workers` for this machine, or None (xdist's own rule) when the user pinned it
    with PYTEST_XDIST_AUTO_NUM_WORKERS, which xdist documents as the override.
  """
  del config
  if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
    return None
  return auto_workers(usable_cpus(), available_memory_bytes())


#: The thread variables this conftest set in this worker, name -> value (empty when it
#: set none: one worker, or the user had set them).
THREAD_VARIABLES_SET = {}
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
if _WORKERS > 1:
  # N workers share the machine: each one's TensorFlow, and the CLI processes its tests
  # start (they inherit the environment), gets its share of the cores. N processes each
  # running pools of every core oversubscribe the CPU and were slower than running the
  # tests one after another. TensorFlow reads them once, when it is imported.
  if "tensorflow" in sys.modules:
    # stderr, not warnings.warn: pytest.ini ignores UserWarning, and this runs before
    # pytest could show a warning anyway.
    sys.stderr.write("tests/conftest.py: tensorflow was imported before it; its thread pools "
                     "ignore the per-worker share of the cores\n")
  for _name in TF_THREAD_VARIABLES:
    if _name not in os.environ:
      os.environ[_name] = THREAD_VARIABLES_SET[_name] = str(max(1, usable_cpus() // _WORKERS))


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: takes minutes (end-to-end runs, installs; all of tests/e2e/); `pytest -m \"not slow\"` skips it")


#: End-to-end runs (installs, whole CLI runs, several processes): the slow tier as a folder.
E2E_DIR = os.path.join(ROOT, "tests", "e2e")


def slow_modules_first(items, is_slow):
  """`items` reordered so that the files holding a slow test come first, each file's
  tests kept together and in order (a file split apart would rebuild its module fixtures).

  Under xdist the long tests then start while the short ones are still queued, and the
  short ones fill the workers at the end, instead of one worker finishing a long test
  alone.
  """
  slow_files = {str(item.fspath) for item in items if is_slow(item)}
  return sorted(items, key=lambda item: str(item.fspath) not in slow_files)


def pytest_collection_modifyitems(config, items):
  """Marks every test under tests/e2e/ `slow`, so `-m "not slow"` leaves the folder out,
  and runs the files with slow tests first (`slow_modules_first`)."""
  del config
  import pytest  # pylint: disable=import-outside-toplevel

  for item in items:
    if os.path.realpath(str(item.fspath)).startswith(os.path.realpath(E2E_DIR) + os.sep):
      item.add_marker(pytest.mark.slow)
  items[:] = slow_modules_first(items, lambda item: item.get_closest_marker("slow") is not None)

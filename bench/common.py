"""Shared helpers for the speed benchmarks (does self-regulation's data efficiency also save training time?).

Every benchmark compares variants *side by side in one process on the same
data*: the machine is shared with other processes, so absolute seconds drift
from minute to minute while ratios of epochs measured next to each other do
not. `interleave` runs one epoch of every variant per round (rotating the order
each round), drops the warm-up rounds (tracing, first-iterator costs) and
reports per-variant medians and the median of the per-round ratios.

`write_section` stores a script's section as its own result file,
`bench/results/<kind>/<NAME>.md` (the kind is the script's folder: `timing` or
`reproduction`), and re-renders `bench/RESULTS.md` from all of them
(`render_results.py`), so the scripts never clobber each other.
"""

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import platform
import statistics
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)

#: The prepared TFDS datasets next to the checkout, as the tests use them (if present).
SHARED_TFDS = os.path.join(os.path.dirname(REPO_ROOT), "shared", "tfds")

# First, even where it is already on the path (Bazel's runfiles root is): ahead of bench/,
# the running script's own directory, whose export.py would shadow the `export` package.
sys.path[:] = [REPO_ROOT] + [p for p in sys.path if p != REPO_ROOT]
if BENCH_DIR not in sys.path:
  sys.path.insert(1, BENCH_DIR)
import render_results  # pylint: disable=wrong-import-position  (bench/ on the path first)
from tf_srkd.cli import environment as _cli_environment  # pylint: disable=wrong-import-position

# Every bench script is a command, and many start more: each ends ~1.3 s sooner.
_cli_environment.skip_the_final_collection()
if not os.environ.get("TFDS_DATA_DIR") and os.path.isdir(SHARED_TFDS):
  os.environ["TFDS_DATA_DIR"] = SHARED_TFDS
elif os.environ.get("TFDS_DATA_DIR") and "://" not in os.environ["TFDS_DATA_DIR"]:
  # Relative to where the command was typed, also for the scripts and CLI runs
  # started from other working directories.
  os.environ["TFDS_DATA_DIR"] = os.path.abspath(os.path.expanduser(os.environ["TFDS_DATA_DIR"]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# -- machine -------------------------------------------------------------------


def _cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def load_average():
  """The 1-minute load average (other processes share this machine)."""
  try:
    return os.getloadavg()[0]
  except OSError:
    return float("nan")


def machine_description(runs_in_child_processes=False):
  """One line: CPU, cores, TF/Keras/Python versions, threads, GPUs, load.

  Args:
    runs_in_child_processes: the script measures `tf_srkd.main` runs it starts as child
      processes and imports no TensorFlow itself. The versions then come from the
      installed packages, the GPUs from the NVIDIA driver (`nvidia-smi -L`), and the
      threads are the children's TF defaults: importing TensorFlow here would describe
      this process, at ~5 s of CPU, not the runs.
  """
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  if runs_in_child_processes:
    tf_version, keras_version = _installed("tensorflow"), _installed("keras")
    gpus = _driver_gpus()
    threads = "TF defaults in the child runs"
  else:
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf_version, keras_version = tf.__version__, keras.__version__
    gpus = len(tf.config.list_physical_devices("GPU"))
    threads = (f"{tf.config.threading.get_intra_op_parallelism_threads()}/"
               f"{tf.config.threading.get_inter_op_parallelism_threads()} (0 = TF default)")
  onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)")
  return (f"{_cpu_model()}, {os.cpu_count()} logical cores ({usable} usable), "
          f"{'no GPU' if not gpus else f'{gpus} GPU(s)'}; TensorFlow {tf_version}, "
          f"Keras {keras_version}, Python {platform.python_version()}; "
          f"intra/inter-op threads {threads}, "
          f"oneDNN {onednn}, jit_compile=False; {code_version()}; 1-min load average at start "
          f"{load_average():.1f}")


def _installed(distribution):
  import importlib.metadata  # pylint: disable=import-outside-toplevel

  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def _driver_gpus():
  """How many GPUs the NVIDIA driver lists (0 without a driver)."""
  import subprocess  # pylint: disable=import-outside-toplevel

  try:
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30,
                            check=False)
  except (OSError, subprocess.TimeoutExpired):
    return 0
  return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())


def code_version():
  """The commit the library was measured at (HEAD when this process first asked, i.e.
  when a benchmark starts: a later commit during a long run does not relabel it), and
  whether `tf_srkd/` had local edits."""
  global _CODE_VERSION
  if _CODE_VERSION is None:
    _CODE_VERSION = _read_code_version()
  return _CODE_VERSION


_CODE_VERSION = None


def _read_code_version():
  import subprocess  # pylint: disable=import-outside-toplevel

  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "tf_srkd"],
                           cwd=REPO_ROOT).returncode != 0
    return f"`tf_srkd` at {head}" + (" + uncommitted edits" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "`tf_srkd` (no git information)"


def utc_now():
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# -- timing --------------------------------------------------------------------


class EpochClock:
  """Times Keras epochs from the first `on_epoch_begin` to the last `on_epoch_end`.

  Pass `clock.callbacks(others)` as `fit`'s callbacks: the start hook runs before
  every other callback's `on_epoch_begin` and the stop hook after every other
  callback's `on_epoch_end`, so an epoch's time includes the callbacks' work
  (e.g. `RegulationSchedule`) but not `fit`'s one-off setup.
  """

  def __init__(self):
    import keras  # pylint: disable=import-outside-toplevel

    clock = self
    self.times = []
    self.logs = []
    self._began = None

    class _Start(keras.callbacks.Callback):

      def on_epoch_begin(self, epoch, logs=None):
        clock._began = (time.perf_counter(), time.process_time())

    class _Stop(keras.callbacks.Callback):

      def on_epoch_end(self, epoch, logs=None):
        wall, cpu = time.perf_counter(), time.process_time()
        clock.times.append(wall - clock._began[0])
        entry = dict(logs or {})
        entry["cpu_s"] = cpu - clock._began[1]
        clock.logs.append(entry)

    self._start, self._stop = _Start(), _Stop()

  def callbacks(self, others=()):
    return [self._start, *others, self._stop]

  def last(self):
    """(wall seconds, logs) of the last epoch; logs["cpu_s"] is the process CPU time
    (all threads, user + system) the epoch took."""
    return self.times[-1], self.logs[-1]


def fit_one_epoch(model, dataset, epoch=0, callbacks=(), steps=None):
  """`model.fit` for exactly one epoch (index `epoch`); returns (seconds, logs), with the
  epoch's process CPU seconds in logs["cpu_s"]."""
  clock = EpochClock()
  model.fit(dataset, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps,
            callbacks=clock.callbacks(callbacks), verbose=0)
  return clock.last()


def interleave(variants, rounds, warmup=1, log=print):
  """Runs every variant once per round, in a rotating order.

  Args:
    variants: dict name -> `fn(round_index) -> (seconds, info_dict)`; each call
      runs (and times) one epoch.
    rounds: measured rounds.
    warmup: leading rounds that are run but not kept.
    log: progress printer.

  Returns:
    dict name -> list of (seconds, info) for the measured rounds, in round order.
  """
  names = list(variants)
  results = {name: [] for name in names}
  for r in range(warmup + rounds):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      seconds, info = variants[name](r)
      tag = "warm-up" if r < warmup else "round"
      log(f"  [{tag} {r}] {name:<38} {seconds:7.3f} s  load {load_average():.1f}  "
          + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in (info or {}).items()), flush=True)
      if r >= warmup:
        results[name].append((seconds, info or {}))
  return results


def seconds_of(samples):
  return [s for s, _ in samples]


def median(values):
  return statistics.median(values)


def paired_ratios(samples, baseline):
  """Per-round ratios variant / baseline (each round ran both next to each other)."""
  return [a / b for a, b in zip(seconds_of(samples), seconds_of(baseline))]


def ratio_summary(samples, baseline):
  """(median of per-round ratios, min, max)."""
  ratios = paired_ratios(samples, baseline)
  return median(ratios), min(ratios), max(ratios)


def cpu_ratio_summary(samples, baseline):
  """Like `ratio_summary` on the per-epoch process CPU seconds (info["cpu_s"]).

  CPU time is much less sensitive than wall time to other processes competing
  for the cores (it counts the work this process did, not how long it waited)."""
  ratios = [a["cpu_s"] / b["cpu_s"] for (_, a), (_, b) in zip(samples, baseline)]
  return median(ratios), min(ratios), max(ratios)


def timed(fn):
  """Runs `fn()`; returns (wall seconds, CPU seconds, result)."""
  wall, cpu = time.perf_counter(), time.process_time()
  result = fn()
  return time.perf_counter() - wall, time.process_time() - cpu, result


def fmt_ratio(summary):
  mid, low, high = summary
  return f"**{mid:.3f}** ({low:.2f}–{high:.2f})"


def verdict(value, goal, at_most=True):
  ok = value <= goal if at_most else value >= goal
  return "met" if ok else "missed"


# -- markdown ------------------------------------------------------------------


def mean_std(values, pattern):
  """'mean ± std' of `values`, each formatted with `pattern` ('{:.4f}'); one value alone,
  without a spread; '—' for none."""
  if not values:
    return "—"
  if len(values) == 1:
    return pattern.format(values[0])
  return f"{pattern.format(statistics.mean(values))} ± {pattern.format(statistics.stdev(values))}"


def markdown_table(headers, rows):
  """A GitHub-flavoured Markdown table."""
  lines = ["| " + " | ".join(str(h) for h in headers) + " |",
           "|" + "|".join(" --- " for _ in headers) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


@contextlib.contextmanager
def _locked(path):
  """An exclusive lock on the directory holding `path` (no lock file left behind)."""
  fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def script_kind(script=None) -> str:
  """`timing` or `reproduction`: the bench/ folder of the running script."""
  folder = os.path.basename(os.path.dirname(os.path.abspath(script or sys.argv[0])))
  if folder not in dict(render_results.KINDS):
    raise ValueError(f"{script or sys.argv[0]}: a bench script lives in bench/timing/ or "
                     "bench/reproduction/")
  return folder


def write_section(name, body, kind=None, results_dir=render_results.RESULTS_DIR,
                  path=render_results.RESULTS_PATH):
  """Stores `body` as result file `<results_dir>/<kind>/<name>.md`, then re-renders `path`.

  `kind` defaults to the running script's folder (`script_kind`). Returns `path`.
  """
  folder = os.path.join(results_dir, kind or script_kind())
  os.makedirs(folder, exist_ok=True)
  with _locked(folder):
    target = os.path.join(folder, f"{name}.md")
    with open(target + ".tmp", "w", encoding="utf-8") as f:
      f.write(body.rstrip() + "\n")
    os.replace(target + ".tmp", target)
    render_results.write(results_dir, path)
  return path


def section_preamble(title, command, machine, notes=()):
  """Common heading lines of a section: title, how it was run, machine, notes."""
  lines = [f"## {title}", "", f"Measured {utc_now()} with `{command}`.", "",
           f"Machine: {machine}.", ""]
  lines += [f"- {n}" for n in notes]
  if notes:
    lines.append("")
  return "\n".join(lines)


def publish(name, title, machine, notes, table, write=True):
  """Prints a measured section (preamble, table, closing load average) and, unless
  `write` is false, stores it as section `name` of bench/RESULTS.md."""
  body = section_preamble(title, command_line(), machine, notes)
  body += "\n" + table + f"\n\nLoad average at end: {load_average():.1f}."
  print(body)
  if write:
    write_section(name, body)
  return body


def kept_cell(cells_dir, name, settings, compute):
  """`compute()`'s JSON-able result, kept as `<cells_dir>/<name>.json` so a restarted
  bench takes it from there instead of computing it again; without `cells_dir`, just
  `compute()`.

  A kept cell records `settings` (JSON scalars, compared as written); one whose
  settings differ is refused (SystemExit naming the file), never mixed in. What
  else a cell should remember (the code version, the load) goes into its result.
  """
  if not cells_dir:
    return compute()
  path = os.path.join(cells_dir, f"{name}.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      cell = json.load(f)
    if cell.get("settings") != settings:
      raise SystemExit(f"{path}: ran with {cell.get('settings')}, not {settings}; remove it "
                       "or pick another --cells_dir")
    print(f"{name}: kept in {path}", flush=True)
    return cell["result"]
  result = compute()
  os.makedirs(cells_dir, exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"settings": settings, "result": result}, f)
  os.replace(path + ".tmp", path)
  return result


def command_line():
  return "python " + " ".join([os.path.relpath(sys.argv[0], REPO_ROOT)] + sys.argv[1:])


# -- data ----------------------------------------------------------------------


def load_mnist(limit=0):
  """The MNIST train and test splits as `data.SplitArrays`."""
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import datasets  # pylint: disable=import-outside-toplevel

  spec = datasets.get_dataset_spec("mnist")
  return spec, data.load_split(spec, "train", limit), data.load_split(spec, "test")


def plain_dataset(split, batch_size):
  """What a plain `keras.Model.fit` user feeds, at its cheapest: preprocessed
  float tensors held in memory, sliced into consecutive batches (no shuffle, no
  per-example work)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel

  images = data.preprocess(tf.constant(split.images))
  labels = tf.constant(split.labels)
  steps = data.steps_per_epoch(split.size, batch_size)

  def batch(i):
    i = tf.cast(i, tf.int32)
    return images[i * batch_size:(i + 1) * batch_size], labels[i * batch_size:(i + 1) * batch_size]

  return tf.data.Dataset.range(steps).map(batch).prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class CompileSettings:
  """The `TrainingConfig` fields `stages.compile_model` reads."""

  jit_compile: bool = False
  steps_per_execution: int = 1
  batch_size: int = 512
  adam_epsilon: float = 1e-7


#: No XLA, one step per call (as the plain Keras models these benchmarks compare with).
NoJit = CompileSettings()


# The commit is read when a benchmark imports this module, i.e. when it starts.
code_version()

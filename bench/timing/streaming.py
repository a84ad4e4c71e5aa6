"""Streaming vs in-memory: a self-regulated teacher epoch on CIFAR-10 from a split on disk
(`--max_in_memory_mb` exceeded, `tf_srkd.data.streaming`) against the same epoch from memory.

Table 1 (one process, interleaved epochs, same initial weights and batches):
throughput of the on-disk path relative to the in-memory path (in-memory epoch
seconds / on-disk epoch seconds; goal >= 0.9).

Table 2 (one subprocess per cell, so each has its own peak; the median of
`--rss_repeats` subprocesses): the peak resident memory (VmHWM) of loading the
train split (the test split is not loaded) and training the teacher for whole
epochs until at least `--rss_steps` steps, at two split sizes, and its growth
per extra example between them. The same number of steps at both sizes: the
peak also rises with the steps trained, by up to ~25 MiB over the first ~120 steps
(allocator and tf.data warm-up; little after), so one epoch of each (20 steps at
10 000 examples, 98 at 50 000) read that warm-up as growth with the split. Both
sizes pay the same fixed costs (TensorFlow's runtime and traced functions,
tf.data buffers), so the growth is the part that scales with the split. Goal: the
on-disk path grows only by its per-sample bookkeeping (`BOOKKEEPING_BYTES`,
see `tf_srkd.data.streaming`) plus at most `SLACK_MIB` (or the cells' own
run-to-run spread, shown, if larger) of noise; a copy of
the split would add a whole image (3072 B on CIFAR-10) per example.

  python bench/timing/streaming.py [--examples=0] [--sizes=10000,50000] [--rounds=5] [--rss_repeats=3]
                            [--rss_steps=300]
  python bench/timing/streaming.py --quick     # seconds-long smoke run; never writes RESULTS.md
"""

import argparse
import json
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position

#: Bytes per example the on-disk path keeps in memory by design (`tf_srkd.data.streaming`).
BOOKKEEPING_BYTES = 44
#: Noise allowed on top of the bookkeeping, MiB: this, or the on-disk cells' own
#: run-to-run spread (max - min peak over the repeats; tf.data autotuning, allocator
#: arenas) where that is larger.
SLACK_MIB = 4


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--examples", type=int, default=0, help="CIFAR-10 examples, table 1 (0: 50000)")
  p.add_argument("--sizes", default="10000,50000", help="two split sizes for table 2")
  p.add_argument("--model", default="lenet5", help="teacher architecture")
  p.add_argument("--batch_size", type=int, default=512)
  p.add_argument("--rounds", type=int, default=5, help="measured epochs per path, table 1")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--rss_repeats", type=int, default=3,
                 help="subprocesses per cell of table 2 (the median is shown)")
  p.add_argument("--rss_steps", type=int, default=300,
                 help="table 2 trains whole epochs until at least this many steps, at every size")
  p.add_argument("--quick", action="store_true",
                 help="tiny smoke run (512 examples, 1 round, size 1024); implies --no_write")
  p.add_argument("--no_write", action="store_true", help="do not touch bench/RESULTS.md")
  p.add_argument("--rss_child", choices=("memory", "disk"), help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.quick:
    # One size of whole batches: each size costs two fresh processes, and the growth
    # between two sizes is arithmetic (`growth_rows`, unit-tested).
    args.examples, args.sizes, args.rounds, args.warmup, args.no_write = 512, "1024", 1, 0, True
    args.rss_repeats, args.rss_steps = 1, 4
  return args


def load(examples, path):
  """CIFAR-10's train split, in memory or on disk."""
  from tf_srkd.data import datasets  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import streaming  # pylint: disable=import-outside-toplevel

  spec = datasets.get_dataset_spec("cifar10")
  limit = examples if examples and examples < spec.train_size else 0
  split = streaming.load(spec, "train", limit,
                         max_in_memory_mb=0 if path == "disk" else float("inf"))
  return spec, split


def teacher(spec, n, model_name, seed, weights=None):
  import keras  # pylint: disable=import-outside-toplevel

  from tf_srkd.models import zoo as models  # pylint: disable=import-outside-toplevel
  from tf_srkd.run import stages  # pylint: disable=import-outside-toplevel
  from tf_srkd.core import training  # pylint: disable=import-outside-toplevel

  keras.utils.set_random_seed(seed)
  network = models.build_model(model_name, spec.image_shape, spec.num_classes)
  if weights is not None:
    network.set_weights(weights)
  model = training.SelfRegulatedModel(network, n, regulate=True, backward="masked")
  stages.compile_model(model, 1e-3, common.NoJit)
  return model


def epoch_runner(model, split, args):
  from tf_srkd.core import callbacks  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel

  dataset = data.train_dataset(split, args.batch_size, args.seed, 0, 1)
  steps = data.steps_per_epoch(split.size, args.batch_size)
  schedule = callbacks.RegulationSchedule(0.02, split.size)

  def run(r):
    seconds, logs = common.fit_one_epoch(model, dataset, r, [schedule], steps)
    return seconds, {"cpu_s": logs["cpu_s"],
                     "participation": float(logs["participation_fraction"])}

  return run


def _peak_rss_mib():
  """This process' peak resident memory in MiB: Linux's VmHWM of the current address space.

  Not `ru_maxrss`: Linux carries it over a fork + exec, so a child started by a big
  parent would report the parent's peak.
  """
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024  # kB.
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def rss_child(args):
  """One cell of table 2: imports (the baseline), then load + whole epochs until at least
  `args.rss_steps` steps; prints the peak RSS, its rise over the baseline, and the rises
  after loading and after the first epoch, in MiB, as JSON."""
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets  # pylint: disable=import-outside-toplevel,unused-import

  from tf_srkd.core import callbacks  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel

  baseline = _peak_rss_mib()
  spec, split = load(args.examples, args.rss_child)
  loaded = _peak_rss_mib()
  model = teacher(spec, split.size, args.model, args.seed)
  steps = data.steps_per_epoch(split.size, args.batch_size)
  epochs = max(1, -(-args.rss_steps // steps))
  rises = []

  class Peaks(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      rises.append(_peak_rss_mib() - baseline)

  model.fit(data.train_dataset(split, args.batch_size, args.seed, 0, epochs), epochs=epochs,
            steps_per_epoch=steps, callbacks=[callbacks.RegulationSchedule(0.02, split.size),
                                              Peaks()], verbose=0)
  peak = _peak_rss_mib()
  print(json.dumps({"peak_rss_mib": peak, "rise_mib": peak - baseline,
                    "load_rise_mib": loaded - baseline, "first_epoch_rise_mib": rises[0],
                    "steps": epochs * steps, "examples": split.size}))


def measure_rss(args, size, path):
  """A cell of table 2: the median (by peak) of `args.rss_repeats` fresh subprocesses."""
  command = [sys.executable, os.path.abspath(__file__), f"--rss_child={path}",
             f"--examples={size}", f"--model={args.model}", f"--batch_size={args.batch_size}",
             f"--seed={args.seed}", f"--rss_steps={args.rss_steps}"]
  cells = []
  for _ in range(max(1, args.rss_repeats)):
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            cwd=common.REPO_ROOT)
    if result.returncode:
      raise SystemExit(f"RSS child failed: {result.stderr[-2000:]}")
    cells.append(json.loads(result.stdout.strip().splitlines()[-1]))
  cells.sort(key=lambda cell: cell["peak_rss_mib"])
  cell = dict(cells[len(cells) // 2])
  cell["spread_mib"] = cells[-1]["peak_rss_mib"] - cells[0]["peak_rss_mib"]
  return cell


def growth_rows(cells, sizes):
  """The growth between the two sizes: MiB, bytes per extra example, and the on-disk goal."""
  (small, large), extra = sizes, sizes[1] - sizes[0]
  growth = {path: cells[large][path]["peak_rss_mib"] - cells[small][path]["peak_rss_mib"]
            for path in ("memory", "disk")}
  per_example = {path: growth[path] * 2**20 / extra for path in growth}
  # A growth within the cells' own run-to-run spread cannot be told from none.
  slack = max(SLACK_MIB, *(cells[size]["disk"]["spread_mib"] for size in sizes))
  allowed = BOOKKEEPING_BYTES * extra / 2**20 + slack
  return [[f"growth {small} → {large}, MiB (bytes per extra example)"] + [
      f"{growth[path]:+.1f} ({per_example[path]:.0f} B)" for path in ("memory", "disk")],
          [f"on-disk goal: growth ≤ {BOOKKEEPING_BYTES} B × {extra} + max({SLACK_MIB} MiB, "
           f"spread) = {allowed:.1f} MiB", "—", common.verdict(growth["disk"], allowed)]]


def main():
  args = parse_args()
  if args.rss_child:
    rss_child(args)
    return
  machine = common.machine_description()
  memory_spec, memory = load(args.examples, "memory")
  _, disk = load(args.examples, "disk")
  first = teacher(memory_spec, memory.size, args.model, args.seed)
  second = teacher(memory_spec, disk.size, args.model, args.seed, first.network.get_weights())
  print(f"table 1: {args.model} teacher epoch on {memory.size} CIFAR-10 examples", flush=True)
  results = common.interleave({"in memory": epoch_runner(first, memory, args),
                               "on disk": epoch_runner(second, disk, args)},
                              args.rounds, args.warmup)
  ratio = common.ratio_summary(results["in memory"], results["on disk"])  # memory / disk
  cpu = common.cpu_ratio_summary(results["in memory"], results["on disk"])
  rows1 = [["on disk / in memory (throughput)", common.fmt_ratio(ratio), common.fmt_ratio(cpu),
            f"{common.median(common.seconds_of(results['in memory'])):.2f}",
            f"{common.median(common.seconds_of(results['on disk'])):.2f}",
            common.verdict(ratio[0], 0.9, at_most=False)]]
  table = common.markdown_table(
      ["path", "throughput ratio (median, min–max)", "CPU-time ratio", "in-memory epoch s",
       "on-disk epoch s", "goal ≥ 0.9"], rows1)
  rows2, by_size = [], {}
  sizes = [int(s) for s in args.sizes.split(",")]
  for size in sizes:
    cells = by_size[size] = {path: measure_rss(args, size, path) for path in ("memory", "disk")}
    rows2.append([cells["memory"]["examples"]] + [
        f"{cells[path]['peak_rss_mib']:.0f} (+{cells[path]['rise_mib']:.0f}; "
        f"spread {cells[path]['spread_mib']:.0f})" for path in ("memory", "disk")])
    print(f"  peak RSS at {size}: {cells}", flush=True)
  if len(sizes) == 2:
    rows2 += growth_rows(by_size, sizes)
  table += "\n\n" + common.markdown_table(
      ["train examples", "in-memory peak RSS, MiB (rise over imports; spread)",
       "on-disk peak RSS, MiB (rise over imports; spread)"], rows2)
  notes = [f"Teacher {args.model}, batch {args.batch_size}, masked backward, alpha 0.02; both "
           "paths gather the same batches by sample id (the on-disk one with os.pread).",
           f"Peak RSS: median of {args.rss_repeats} subprocess(es) per cell (load the train split "
           f"+ whole teacher epochs until ≥ {args.rss_steps} steps, the same work at every size; "
           "the test split is not loaded), VmHWM; in brackets its rise over the "
           "peak after importing TensorFlow, Keras and TFDS. The rise includes costs that do "
           "not depend on the split's size (TensorFlow's runtime and traced functions, tf.data "
           "buffers) and a warm-up over the first ~120 steps: the growth between the sizes is what "
           "scales with the split.",
           f"On-disk bookkeeping by design, {BOOKKEEPING_BYTES} B per example: labels (int32, "
           "numpy + graph constant: 8 B), participation counts and the margin cache (7 "
           "int32/float32 variables: 28 B), the epoch permutation (int32 ids before and after "
           "the shuffle: 8 B); `tf_srkd.data.streaming`."]
  common.publish("streaming", "Streaming (split on disk) vs in memory, CIFAR-10", machine,
                 notes, table, write=not args.no_write)


if __name__ == "__main__":
  main()

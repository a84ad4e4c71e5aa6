"""Helpers of the benchmarks that drive whole `tf_srkd.main` runs (bench/reproduction/mobile.py,
bench/reproduction/bn_gate.py): their common arguments, the `--quick` shrink, running one job in a
child process, and reading a finished stage's metrics."""

import json
import os
import subprocess
import sys
import time

import common


def add_run_args(parser, run_name, quick_help):
  """The arguments of a script that drives `tf_srkd.main` runs: `--output_root`
  (default runs/`run_name`), `--extra` (repeatable), `--quick` (`quick_help`) and
  `--no_write`; `apply_quick` shrinks the parsed ones."""
  parser.add_argument("--output_root", default=os.path.join(common.REPO_ROOT, "runs", run_name))
  parser.add_argument("--extra", action="append", default=[], help="extra tf_srkd.main flag")
  parser.add_argument("--quick", action="store_true", help=quick_help)
  parser.add_argument("--no_write", action="store_true", help="do not touch bench/RESULTS.md")


#: The `--quick` checks' model (`mobile_models.tiny_bn_cnn`): they exercise a script's code
#: paths in seconds, not its figures.
TINY_BN_MODEL = "mobile_models:tiny_bn_cnn"
#: The same with hard-swish (`mobile_models.tiny_hard_swish_cnn`), for an int8 op check
#: that asks for TFLite's HARD_SWISH.
TINY_HARD_SWISH_MODEL = "mobile_models:tiny_hard_swish_cnn"


#: The `--quick` checks' test split: decoding and evaluating all 10,000 CIFAR-10 test
#: images took ~1.3 s of a quick child run's ~8.5 s (2-core AMD EPYC).
QUICK_TEST_SPLIT = "--test_split=test[:512]"


def apply_quick(args, **more):
  """With `--quick`: one teacher and one distillation epoch on 128 examples in
  batches of 64, tested on the first 512 test images (`--test_split`, before any
  `--extra`: an `--extra` one wins), the attributes in `more`, and
  `<output_root>_quick` as the root (a quick run never reuses a full one's stages).
  Returns `args`."""
  if args.quick:
    args.epochs = args.distill_epochs = 1
    args.train_examples, args.batch_size = 128, 64
    args.extra = [QUICK_TEST_SPLIT, *args.extra]
    for name, value in more.items():
      setattr(args, name, value)
    args.output_root = args.output_root.rstrip(os.sep) + "_quick"
  return args


def run_main(flags, output_dir, log_path, reuse=True):
  """Runs `python -m tf_srkd.main FLAGS --output_dir=OUTPUT_DIR` (output to `log_path`)
  unless `reuse` and its summary.json exists; returns the process seconds (None: reused)."""
  if reuse and os.path.exists(os.path.join(output_dir, "summary.json")):
    return None
  os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
  began = time.time()
  with open(log_path, "a") as f:
    subprocess.run([sys.executable, "-m", "tf_srkd.main", *flags, f"--output_dir={output_dir}"],
                   cwd=common.REPO_ROOT, check=True, stdout=f, stderr=subprocess.STDOUT,
                   env=dict(os.environ, PYTHONPATH=subprocess_pythonpath()))
  return time.time() - began


def subprocess_pythonpath():
  """PYTHONPATH for a `tf_srkd.main` child: the caller's, then bench/.

  bench/ is there for the `--*_model=mobile_models:...` factories. It comes last
  because it holds an export.py that must not shadow the `export` package.
  """
  return os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), common.BENCH_DIR) if p)


def read_metrics(stage_dir):
  """A finished stage's metrics.json, and its mean seconds per trained epoch (None: none)."""
  with open(os.path.join(stage_dir, "metrics.json")) as f:
    metrics = json.load(f)
  ran = [h for h in metrics.get("history", []) if not h.get("skipped_epoch")]
  metrics["epoch_s"] = metrics["wall_time_s"] / len(ran) if ran else None
  return metrics

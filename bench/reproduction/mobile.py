"""The mobile case end to end: CIFAR-10, a MobileNet teacher, a MobileNetV3Small student in the
four modes, exported to int8 (full-integer, raw uint8 input) and float16 and verified in LiteRT.

One run of the main job (`--flagfile=cifar10` with the models, epochs and subset of this
script's flags; reused when its summary.json exists), then every student exported with
`export.api.export_model` and run in LiteRT over the test split (the whole split unless
`--test_examples`), batch 1, one thread. Per mode the table gives Keras test accuracy and
zeta, int8 and float16 file sizes, LiteRT accuracy, the int8-vs-Keras accuracy delta
(goal: int8 loses at most 0.5 pt; an int8 file that is *more* accurate meets it, and a gain
above 0.5 pt is marked), the share of test images on which int8 predicts Keras' class, the
median single-image latency, and the int8 op check: the file is
full-integer (no float tensor anywhere) and hard-swish converted to its integer op; the
epoch times of the teacher and the students are listed next to the table.

  python bench/reproduction/mobile.py                                # the measured setting (hours on CPU)
  python bench/reproduction/mobile.py --quick --no_write             # seconds-scale check of the script
  python bench/reproduction/mobile.py --extra=--strategy=mirrored --extra=--jit_compile \
      --output_root=runs/bench_mobile_gpu               # on a GPU machine
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position
import whole_runs  # pylint: disable=wrong-import-position

MODES = ("conventional", "significance", "regulated", "hybrid")
INT8_DELTA_GOAL_PT = 0.5


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--teacher", default="mobile_models:mobilenet_v3_large",
                 help="any --teacher_model source (default: MobileNetV3Large, BN momentum 0.9; "
                 "bench/mobile_models.py says why)")
  p.add_argument("--student", default="mobile_models:mobilenet_v3_small",
                 help="any --student_model source (default: MobileNetV3Small, BN momentum 0.9)")
  p.add_argument("--epochs", type=int, default=30, help="teacher epochs")
  p.add_argument("--distill_epochs", type=int, default=30)
  p.add_argument("--train_examples", type=int, default=20000, help="0: all 50,000")
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--test_examples", type=int, default=0, help="LiteRT verification (0: all)")
  p.add_argument("--calibration_samples", type=int, default=200)
  p.add_argument("--fresh", action="store_true", help="retrain even if the run finished")
  p.add_argument("--modes", default=",".join(MODES), help="comma list of distillation modes")
  whole_runs.add_run_args(p, "bench_mobile",
                          "a seconds-scale check: 128 examples, 1 epoch, 20 test images, "
                          "a tiny teacher and a tiny hard-swish student")
  return whole_runs.apply_quick(p.parse_args(argv), test_examples=20, calibration_samples=16,
                                modes="conventional,hybrid", teacher=whole_runs.TINY_BN_MODEL,
                                student=whole_runs.TINY_HARD_SWISH_MODEL)


def train(args, run_dir, log):
  flags = ["--flagfile=cifar10", "--nomlflow", "--verbose=2", f"--teacher_model={args.teacher}",
           f"--student_model={args.student}", f"--epochs={args.epochs}",
           f"--distill_epochs={args.distill_epochs}", f"--train_examples={args.train_examples}",
           f"--batch_size={args.batch_size}", f"--modes={args.modes}", *args.extra]
  if args.fresh:
    flags.append("--overwrite")
  log("running: tf_srkd.main " + " ".join(flags))
  return whole_runs.run_main(flags, run_dir, os.path.join(args.output_root, "main.log"),
                             reuse=not args.fresh)


def int8_op_check(result) -> str:
  """'ok' when the int8 file is full-integer with integer hard-swish, else what is wrong."""
  problems = []
  if not result["full_integer"]:
    problems.append("float tensors")
  if "DEQUANTIZE" in result["ops"]:
    problems.append("DEQUANTIZE")
  if "HARD_SWISH" not in result["ops"]:
    problems.append("no HARD_SWISH op")
  return "ok" if not problems else ", ".join(problems)


def int8_delta_cell(delta_pt: float) -> str:
  """The int8 - Keras accuracy cell: the signed delta and whether int8 loses at most the goal.

  The goal bounds what quantization costs; an int8 file more accurate than its Keras
  model costs nothing, but a gain above the goal is marked, since it moves as many
  predictions as a loss would (the agreement column gives how many).
  """
  # Rounded: a loss of exactly 50 of 10,000 images is -0.5000000000000004 in floating point.
  delta_pt = round(delta_pt, 6)
  verdict = common.verdict(-delta_pt, INT8_DELTA_GOAL_PT)
  if delta_pt > INT8_DELTA_GOAL_PT:
    verdict += f", int8 gains > {INT8_DELTA_GOAL_PT} pt"
  return f"{delta_pt:+.2f} ({verdict})"


def export_mode(args, run_dir, mode):
  from export import api as export_api  # pylint: disable=import-outside-toplevel

  model = os.path.join(run_dir, "students", mode, "model.keras")
  out = os.path.join(run_dir, "students", mode, "tflite_bench")
  return {q: export_api.export_model(model, os.path.join(out, f"model_{q}.tflite"), q,
                                     test_examples=args.test_examples,
                                     num_calibration_samples=args.calibration_samples)
          for q in ("int8", "float16")}


def main(argv=None):
  args = parse_args(argv)
  machine = common.machine_description()
  run_dir = os.path.join(args.output_root, "run")
  process_s = train(args, run_dir, print)
  teacher = whole_runs.read_metrics(os.path.join(run_dir, "teacher"))
  rows, epoch_times = [], [f"teacher {teacher['epoch_s']:.1f} s"]
  for mode in args.modes.split(","):
    metrics = whole_runs.read_metrics(os.path.join(run_dir, "students", mode))
    epoch_times.append(f"{mode} {metrics['epoch_s']:.1f} s")
    exports = export_mode(args, run_dir, mode)
    i8, f16 = exports["int8"], exports["float16"]
    v8, v16 = i8["verification"], f16["verification"]
    delta = 100 * (v8["tflite_test_accuracy"] - v8["keras_test_accuracy"])
    zeta = metrics.get("zeta")
    rows.append([mode, f"{metrics['test_accuracy']:.4f}", "-" if zeta is None else f"{zeta:.2%}",
                 f"{metrics['params']:,}", f"{i8['size_bytes'] / 1024:.0f}",
                 f"{f16['size_bytes'] / 1024:.0f}", f"{v8['tflite_test_accuracy']:.4f}",
                 f"{v16['tflite_test_accuracy']:.4f}",
                 int8_delta_cell(delta), f"{v8['argmax_agreement']:.2%}",
                 f"{v8['latency_ms_median']:.2f}", f"{v16['latency_ms_median']:.2f}",
                 int8_op_check(i8)])
  table = common.markdown_table(
      ["mode", "Keras acc", "ζ", "params", "int8 KiB", "fp16 KiB", "int8 acc", "fp16 acc",
       "int8 − Keras (pt)", "int8 = Keras class", "int8 ms", "fp16 ms", "int8 ops"], rows)
  notes = [
      f"teacher {args.teacher} (test accuracy {teacher['test_accuracy']:.4f}, "
      f"{teacher['params']:,} parameters), student {args.student}; {args.epochs} teacher and "
      f"{args.distill_epochs} distillation epochs on "
      f"{args.train_examples or 50000} CIFAR-10 training images, batch {args.batch_size}"
      + (f"; extra flags {' '.join(args.extra)}" if args.extra else ""),
      f"LiteRT over {v8['test_examples']} test images, batch 1, 1 thread; latency = median "
      "single-image invoke(); int8 is full-integer with raw uint8 input, "
      f"{args.calibration_samples} random calibration images",
      "seconds per epoch: " + ", ".join(epoch_times)
      + ("" if process_s is None else f"; whole run {process_s:.0f} s"),
  ]
  common.publish("mobile", "The mobile case: CIFAR-10 -> MobileNetV3Small, int8 and float16",
                 machine, notes, table, write=not args.no_write)


if __name__ == "__main__":
  main()

"""The short-schedule BatchNorm case: a MobileNetV3Small student (keras.applications, BN
momentum 0.999) distilled on a few thousand CIFAR-10 images for a few epochs, in the four
modes, with and without precise BN.

One run of the main job with `--precise_bn_batches=0` (the students keep the moving
averages their training left; reused when its summary.json exists). Then, per mode, the
same weights are evaluated twice: with those moving averages, and after
`tf_srkd.models.precise_bn.recompute` over the run's `--precise_bn_batches` default of training
batches. Each variant is exported to int8 (raw uint8 input, 200 random calibration images)
and verified in LiteRT on the test split. The table gives Keras test accuracy, whether the
chance guard flags the model, and the int8 - Keras accuracy delta, for both variants.

  python bench/reproduction/precise_bn_case.py                       # the measured setting (~20 min CPU)
  python bench/reproduction/precise_bn_case.py --quick --no_write    # seconds-scale check of the script
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position
import whole_runs  # pylint: disable=wrong-import-position

MODES = ("conventional", "significance", "regulated", "hybrid")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--teacher", default="alexnet", help="any --teacher_model source")
  p.add_argument("--student", default="MobileNetV3Small",
                 help="any --student_model source (default: the application as Keras ships "
                 "it, BN momentum 0.999)")
  p.add_argument("--epochs", type=int, default=8, help="teacher epochs")
  p.add_argument("--distill_epochs", type=int, default=8)
  p.add_argument("--train_examples", type=int, default=4000)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--test_examples", type=int, default=0, help="0: the whole test split")
  p.add_argument("--calibration_samples", type=int, default=200)
  p.add_argument("--precise_bn_batches", type=int, default=100)
  p.add_argument("--modes", default=",".join(MODES), help="comma list of distillation modes")
  whole_runs.add_run_args(p, "bench_precise_bn",
                          "a seconds-scale check: 128 examples, 1 epoch, 20 test images, "
                          "the hybrid mode, a tiny BN teacher and student")
  return whole_runs.apply_quick(p.parse_args(argv), test_examples=20, calibration_samples=16,
                                precise_bn_batches=2, modes="hybrid",
                                teacher=whole_runs.TINY_BN_MODEL,
                                student=whole_runs.TINY_BN_MODEL)


def train(args, run_dir, log):
  flags = ["--flagfile=cifar10", "--nomlflow", "--verbose=2", f"--teacher_model={args.teacher}",
           f"--student_model={args.student}", f"--epochs={args.epochs}",
           f"--distill_epochs={args.distill_epochs}", f"--train_examples={args.train_examples}",
           f"--batch_size={args.batch_size}", f"--modes={args.modes}",
           "--precise_bn_batches=0", *args.extra]
  log("running: tf_srkd.main " + " ".join(flags))
  return whole_runs.run_main(flags, run_dir, os.path.join(args.output_root, "main.log"))


def evaluate_variants(args, run_dir, mode, train, test, num_classes):
  """{variant: (Keras test accuracy, at chance, int8 result)} for "moving" and "precise"."""
  import keras  # pylint: disable=import-outside-toplevel

  from export import api as export_api  # pylint: disable=import-outside-toplevel
  from tf_srkd.models import app_preprocessing  # pylint: disable=import-outside-toplevel,unused-import
  from tf_srkd.core import chance  # pylint: disable=import-outside-toplevel
  from tf_srkd.models import precise_bn  # pylint: disable=import-outside-toplevel
  from tf_srkd.run import stages  # pylint: disable=import-outside-toplevel

  stage = os.path.join(run_dir, "students", mode)
  out = {}
  for variant in ("moving", "precise"):
    network = keras.saving.load_model(os.path.join(stage, "model.keras"))
    if variant == "precise":
      precise_bn.recompute(network, train.images, args.batch_size, args.precise_bn_batches,
                           seed=0)
    path = os.path.join(stage, f"bench_{variant}.keras")
    network.save(path)
    accuracy = stages.evaluate_accuracy(network, test, 256)
    int8 = export_api.export_model(path, os.path.join(stage, "tflite_bench", variant,
                                                      "model_int8.tflite"), "int8",
                                   dataset="cifar10", test_examples=args.test_examples,
                                   num_calibration_samples=args.calibration_samples)
    out[variant] = (accuracy, not chance.clearly_above_chance(accuracy, test.size, num_classes),
                    int8)
  return out


def main(argv=None):
  args = parse_args(argv)
  machine = common.machine_description()
  run_dir = os.path.join(args.output_root, "run")
  process_s = train(args, run_dir, print)
  from tf_srkd.data import datasets  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import streaming  # pylint: disable=import-outside-toplevel

  spec = datasets.resolve("cifar10")
  train_split = streaming.load(spec, "train", args.train_examples)
  test = streaming.load(spec, "test")
  teacher = whole_runs.read_metrics(os.path.join(run_dir, "teacher"))
  rows = []
  for mode in args.modes.split(","):
    metrics = whole_runs.read_metrics(os.path.join(run_dir, "students", mode))
    variants = evaluate_variants(args, run_dir, mode, train_split, test, spec.num_classes)
    row = [mode, f"{metrics.get('zeta') or 1.0:.2%}"]
    for variant in ("moving", "precise"):
      accuracy, at_chance, int8 = variants[variant]
      v = int8["verification"]
      delta = 100 * (v["tflite_test_accuracy"] - v["keras_test_accuracy"])
      row += [f"{accuracy:.4f}" + (" (at chance)" if at_chance else ""), f"{delta:+.2f}",
              f"{v['argmax_agreement']:.2%}"]
    rows.append(row)
  table = common.markdown_table(
      ["mode", "ζ", "Keras acc, moving BN", "int8 − Keras (pt)", "int8 = Keras class",
       "Keras acc, precise BN", "int8 − Keras (pt)", "int8 = Keras class"], rows)
  notes = [
      f"teacher {args.teacher} ({args.epochs} epochs, test accuracy "
      f"{teacher['test_accuracy']:.4f}), student {args.student}; {args.distill_epochs} "
      f"distillation epochs on {args.train_examples} CIFAR-10 training images, batch "
      f"{args.batch_size} ({args.distill_epochs * -(-args.train_examples // args.batch_size)} "
      "optimizer steps per student)"
      + (f"; extra flags {' '.join(args.extra)}" if args.extra else ""),
      f"precise BN: {args.precise_bn_batches} training batches of {args.batch_size} (at most "
      "one pass); the same weights in both columns",
      f"int8: full-integer, raw uint8 input, {args.calibration_samples} random calibration "
      "images; LiteRT on the test split"
      + ("" if process_s is None else f"; whole training run {process_s:.0f} s"),
      "at chance: test accuracy not clearly above 1/10 (exact binomial bound, p = 0.001; "
      "`tf_srkd.core.chance`)",
  ]
  common.publish("precise_bn_case",
                 "Short-schedule BatchNorm: MobileNetV3Small with and without precise BN",
                 machine, notes, table, write=not args.no_write)


if __name__ == "__main__":
  main()

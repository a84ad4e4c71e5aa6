"""The int8 student three ways: post-training quantization (PTQ), quantization-aware training
on the labels (QAT) and quantization-aware distillation under the student's own gate (QAD).

The mobile case's run (`bench/reproduction/mobile.py`'s flags: CIFAR-10, a MobileNetV3Large
teacher, MobileNetV3Small students in the four modes; reused when it finished), then per
mode three full-integer int8 files, each verified in LiteRT against the float Keras student:

* PTQ: `export.api.export_model(..., "int8")`, calibrated on `--calibration_samples` images;
* QAT: `export.api.export_qat(..., qat_objective="labels")`: `--qat_epochs` of fake-quant
  fine-tuning on cross-entropy, every sample;
* QAD: `export.api.export_qat(...)`: the same epochs under the student's own objective:
  KD from the teacher, significance weights and the self-regulating gate of its mode.

Per file: int8 test accuracy, its difference from the float student (pt), and the share of
test images on which it predicts the float student's class. QAT and QAD also train, so
their difference mixes the training's gain with quantization's cost; the fake-quant Keras
model's accuracy (before conversion) is given beside them.

  python bench/reproduction/qad.py --epochs=20 --distill_epochs=16 --train_examples=10000 \\
      --batch_size=64 --qat_epochs=2
  python bench/reproduction/qad.py --quick --no_write       # seconds-scale check
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position
import mobile  # pylint: disable=wrong-import-position  # beside this script
import whole_runs  # pylint: disable=wrong-import-position


def parse_args(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  own = [a for a in argv if a.split("=")[0] in ("--qat_epochs", "--qat_learning_rate")]
  args = mobile.parse_args([a for a in argv if a not in own])
  args.qat_epochs, args.qat_learning_rate = 2, 1e-4
  if "--quick" in argv:  # One mode, the one with both the gate and significance.
    # A tiny student too: tests/export/test_qad.py holds MobileNetV3Small's QAD to full integer.
    args.qat_epochs, args.modes, args.student = 1, "hybrid", whole_runs.TINY_BN_MODEL
  for a in own:
    name, value = a.lstrip("-").split("=", 1)
    setattr(args, name, type(getattr(args, name))(value))
  return args


def exports(args, run_dir, mode):
  """{"PTQ" | "QAT" | "QAD": export result} of one student."""
  from export import api as export_api  # pylint: disable=import-outside-toplevel

  model = os.path.join(run_dir, "students", mode, "model.keras")
  out = os.path.join(run_dir, "students", mode, "tflite_qad_bench")
  common_args = {"test_examples": args.test_examples}
  qat_args = dict(common_args, qat_epochs=args.qat_epochs,
                  qat_learning_rate=args.qat_learning_rate)
  return {
      "PTQ": export_api.export_model(model, os.path.join(out, "model_int8.tflite"), "int8",
                                     num_calibration_samples=args.calibration_samples,
                                     **common_args),
      "QAT": export_api.export_qat(model, os.path.join(out, "model_int8_qat_labels.tflite"),
                                   qat_objective="labels", **qat_args),
      "QAD": export_api.export_qat(model, os.path.join(out, "model_int8_qad.tflite"),
                                   **qat_args),
  }


def cells(result):
  """[int8 accuracy, int8 - float (pt), agreement with the float student] of one file."""
  v = result["verification"]
  delta = 100 * (v["tflite_test_accuracy"] - v["keras_test_accuracy"])
  return [f"{v['tflite_test_accuracy']:.4f}", f"{delta:+.2f}", f"{v['argmax_agreement']:.2%}"]


def op_check(result) -> str:
  """'ok' for a full-integer file without DEQUANTIZE, else what is wrong."""
  problems = [p for p, bad in (("float tensors", not result["full_integer"]),
                               ("DEQUANTIZE", "DEQUANTIZE" in result["ops"])) if bad]
  return "ok" if not problems else ", ".join(problems)


def main(argv=None):
  args = parse_args(argv)
  machine = common.machine_description()
  load_start = common.load_average()
  run_dir = os.path.join(args.output_root, "run")
  mobile.train(args, run_dir, print)
  rows = []
  for mode in args.modes.split(","):
    metrics = whole_runs.read_metrics(os.path.join(run_dir, "students", mode))
    files = exports(args, run_dir, mode)
    qad = files["QAD"]["qat"]
    row = [mode, f"{metrics['test_accuracy']:.4f}"]
    for name in ("PTQ", "QAT", "QAD"):
      row += cells(files[name])
    row += [f"{files['QAT']['qat']['fake_quant_keras_test_accuracy']:.4f} / "
            f"{qad['fake_quant_keras_test_accuracy']:.4f}",
            "-" if not qad["self_regulation_gate"] else f"{qad['zeta']:.2%}",
            " / ".join(op_check(files[n]) for n in ("PTQ", "QAT", "QAD"))]
    rows.append(row)
  table = common.markdown_table(
      ["mode", "float acc", "PTQ acc", "PTQ − float (pt)", "PTQ = float class", "QAT acc",
       "QAT − float (pt)", "QAT = float class", "QAD acc", "QAD − float (pt)",
       "QAD = float class", "fake-quant Keras acc QAT / QAD", "QAD ζ", "int8 ops PTQ / QAT / QAD"],
      rows)
  notes = [
      f"the run of bench/reproduction/mobile.py's flags: teacher {args.teacher}, student "
      f"{args.student}, {args.epochs} teacher and {args.distill_epochs} distillation epochs on "
      f"{args.train_examples or 50000} CIFAR-10 training images, batch {args.batch_size}"
      + (f"; extra flags {' '.join(args.extra)}" if args.extra else ""),
      f"PTQ calibrated on {args.calibration_samples} random training images; QAT and QAD "
      f"{args.qat_epochs} epoch(s) of fake-quant fine-tuning, Adam {args.qat_learning_rate:g}, "
      "the run's batch size (tensorflow-model-optimization on the flat tf_keras twin, "
      "docs/export.md); QAD ζ = the share of the transfer set its gate let into the backward "
      "pass (regulated and hybrid)",
      "LiteRT over the test split, batch 1, 1 thread; \"= float class\": the int8 file "
      "predicts the float Keras student's class",
      f"1-min load average: {load_start:.1f} at start, {common.load_average():.1f} at end",
  ]
  common.publish("qad_mobile" + ("_quick" if args.quick else ""),
                 "int8 students three ways: PTQ, QAT and quantization-aware distillation "
                 "(the mobile case)", machine, notes, table, write=not args.no_write)


if __name__ == "__main__":
  main()

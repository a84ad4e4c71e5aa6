"""Shipping students: every student of a run x every quantization (+ QAT), verified in LiteRT.

For each `students/<mode>/model.keras` of a finished run (by default the MNIST
`flags/quick.flags` run), exports float32, dynamic, float16 and int8 (random
calibration, the default 200 samples) into `students/<mode>/tflite/` with
`export.tflite.export_run`, plus int8 with quantization-aware training
(`--qat_epochs`, a subprocess), plus a calibration sweep: int8 with `random` and
`significant` calibration sets of `--calibration_sizes` samples (the hypothesis:
fewer, more informative samples calibrate as well), written under
`<run>/bench_export/`. Every row is measured on the whole test split in
`ai_edge_litert` (batch 1, 1 thread).

Prints one table and the targets (int8 <= 0.30x the float32 file; best int8
within 0.3 pt of the Keras student; float32 argmax identical to Keras), and
writes them into `bench/RESULTS.md` between `<!-- bench:export -->`
markers.

  python bench/reproduction/export.py --run_dir=runs/bench_export_quick [--train] [--qat_epochs=1]
"""

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position

import numpy as np  # pylint: disable=wrong-import-position

from export import tflite  # pylint: disable=wrong-import-position

INT8_SIZE_GOAL = 0.30
INT8_ACCURACY_GOAL_PT = 0.3


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--run_dir", default=os.path.join(common.REPO_ROOT, "runs", "bench_export_quick"))
  p.add_argument("--train", action="store_true",
                 help="train the run first if it is not finished (python -m tf_srkd.main "
                      "--flagfile=flags/quick.flags --nomlflow --output_dir=RUN_DIR)")
  p.add_argument("--qat_epochs", type=int, default=1, help="0 skips QAT")
  p.add_argument("--qat_learning_rate", type=float, default=1e-4)
  p.add_argument("--calibration_sizes", default="16,64",
                 help="extra int8 rows per calibration method (the default set has 200)")
  p.add_argument("--modes", default="", help="comma list (default: every student of the run)")
  p.add_argument("--no_write", action="store_true", help="do not write bench/RESULTS.md")
  return p.parse_args()


def ensure_run(args):
  students = os.path.join(args.run_dir, "students")
  finished = os.path.isdir(students) and any(
      os.path.exists(os.path.join(students, m, "metrics.json")) for m in os.listdir(students))
  if finished:
    return
  if not args.train:
    sys.exit(f"error: {args.run_dir} has no finished students; train it with --train or "
             f"python -m tf_srkd.main --flagfile=flags/quick.flags --nomlflow "
             f"--output_dir={args.run_dir}")
  subprocess.run([sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/quick.flags",
                  "--nomlflow", f"--output_dir={args.run_dir}"], cwd=common.REPO_ROOT, check=True)


def row(mode, name, calibration, result, float32_size, keras_accuracy=None):
  v = result["verification"]
  delta = 100 * (v["tflite_test_accuracy"] - v["keras_test_accuracy"])
  return [mode, name, calibration, f"{v['size_bytes'] / 1024:.1f}",
          f"{v['size_bytes'] / float32_size:.3f}", f"{v['tflite_test_accuracy']:.4f}",
          f"{(keras_accuracy if keras_accuracy is not None else v['keras_test_accuracy']):.4f}",
          f"{delta:+.2f}", f"{v['argmax_agreement']:.4f}", f"{v['latency_ms_median']:.3f}"]


def main():
  args = parse_args()
  ensure_run(args)
  machine = common.machine_description()
  modes = [m for m in args.modes.split(",") if m] or None
  sizes = [int(s) for s in args.calibration_sizes.split(",") if s]
  print(f"exporting the students of {args.run_dir} ...", flush=True)
  results = tflite.export_run(args.run_dir, tflite.QUANTIZATIONS, "random", modes=modes,
                              qat_epochs=args.qat_epochs,
                              qat_options={"qat_learning_rate": args.qat_learning_rate})
  sweep = {}
  for mode in results:
    model = os.path.join(args.run_dir, "students", mode, "model.keras")
    student = tflite.load_student(model)
    sweep[mode] = {}
    for n in sizes + [tflite.DEFAULT_CALIBRATION_SAMPLES]:
      for method in tflite.CALIBRATIONS:
        if method == "random" and n == tflite.DEFAULT_CALIBRATION_SAMPLES:
          sweep[mode][(method, n)] = results[mode]["int8"]
          continue
        out = os.path.join(args.run_dir, "bench_export", mode, f"int8_{method}_{n}.tflite")
        print(f"  {mode}: int8, {method} calibration, {n} samples", flush=True)
        sweep[mode][(method, n)] = tflite.export_model(student, out, "int8", calibration=method,
                                                       num_calibration_samples=n)

  headers = ["mode", "export", "calibration / training", "size KB", "x float32", "tflite acc",
             "keras acc", "delta pt", "argmax agree", "latency ms"]
  rows, checks = [], []
  calibration_deltas = {}
  for mode, by_key in results.items():
    fp32 = by_key["float32"]["size_bytes"]
    for q in ("float32", "dynamic", "float16"):
      rows.append(row(mode, q, "-", by_key[q], fp32))
    for (method, n), r in sorted(sweep[mode].items(), key=lambda kv: (kv[0][1], kv[0][0])):
      rows.append(row(mode, "int8 PTQ", f"{method} {n}", r, fp32))
      v = r["verification"]
      calibration_deltas.setdefault((method, n), []).append(
          100 * (v["tflite_test_accuracy"] - v["keras_test_accuracy"]))
    qat = by_key.get("int8_qat")
    if qat:
      rows.append(row(mode, "int8 QAT", f"QAT {qat['qat']['epochs']} ep, lr "
                      f"{qat['qat']['learning_rate']:g} (fake-quant Keras "
                      f"{qat['qat']['fake_quant_keras_test_accuracy']:.4f})", qat, fp32))
    ptq = by_key["int8"]
    candidates = [("PTQ", ptq)] + ([("QAT", qat)] if qat else [])
    best_name, best = max(candidates, key=lambda c: c[1]["verification"]["tflite_test_accuracy"])
    keras_acc = ptq["verification"]["keras_test_accuracy"]
    best_delta = 100 * (best["verification"]["tflite_test_accuracy"] - keras_acc)
    size_ratio = ptq["size_bytes"] / fp32
    qat_ratio = qat["size_bytes"] / fp32 if qat else None
    checks.append(
        f"{mode}: int8 size {size_ratio:.3f}x float32"
        f"{f' (QAT {qat_ratio:.3f}x)' if qat else ''} "
        f"({common.verdict(max(size_ratio, qat_ratio or 0), INT8_SIZE_GOAL)}); "
        f"best int8 ({best_name}) {best_delta:+.2f} pt vs Keras "
        f"({common.verdict(-best_delta, INT8_ACCURACY_GOAL_PT)}); "
        f"float32 argmax identical: {by_key['float32']['verification']['identical_argmax']} "
        f"{'(met)' if by_key['float32']['verification']['identical_argmax'] else '(missed)'}")
  table = common.markdown_table(headers, rows)
  calibration_lines = [
      f"int8 PTQ, {method} calibration, {n} samples: mean delta over modes "
      f"{np.mean(d):+.2f} pt (min {np.min(d):+.2f}, max {np.max(d):+.2f})"
      for (method, n), d in sorted(calibration_deltas.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
  print()
  print(table)
  print()
  for line in checks + calibration_lines:
    print(line)

  if args.no_write:
    return
  notes = [
      "Every row runs the `.tflite` in `ai_edge_litert.interpreter.Interpreter` (1 thread, "
      "batch 1, raw uint8 pixels in) over the whole MNIST test split (10,000 images). "
      "`delta pt` = tflite - Keras test accuracy in points; `argmax agree` = fraction of test "
      "images where the `.tflite` and the Keras student pick the same class; latency = median "
      "`invoke()` time of one image. The CPU is shared with other jobs, so latencies are "
      "indicative only.",
      "int8 is full-integer: uint8 input (scale 1/255, zero point 0 = raw pixels), int8 "
      "probabilities; dense layers use per-tensor weight scales (`--dense_per_channel` to "
      "change). `int8 PTQ random 200` is the default export in `students/<mode>/tflite/`.",
      "QAT fine-tunes the student (tf_keras twin, tfmot 0.8.1) with the distillation objective "
      "of its mode; the extra training can raise accuracy above the Keras student's, so the "
      "fake-quant tf_keras accuracy after fine-tuning is shown next to it.",
  ]
  body = "\n".join([
      common.section_preamble("Export: students x quantization", common.command_line(),
                              machine, notes),
      table, "", "Targets:", "", *[f"- {c}" for c in checks], "",
      "Calibration sets (hypothesis: fewer, more informative samples):", "",
      *[f"- {c}" for c in calibration_lines], ""])
  print(f"\nwrote {common.write_section('export', body)}")


if __name__ == "__main__":
  main()

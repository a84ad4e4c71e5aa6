"""BatchNorm under the gate: `masked` against `compact` backward on a BN student (CIFAR-10).

With `compact` the participating rows alone go through the training-mode forward, so a
BatchNorm student's batch statistics (and moving averages) come from those rows, often
1 to 20 late in training; with `masked` the whole batch goes through and the
non-participants only get loss weight 0. This script trains one teacher (reused when
finished), then distils the same student (default MobileNetV3Small) in the self-regulating
modes twice from it, once per backward, and reports test accuracy, zeta, the last
epoch's participation fraction and seconds per epoch. It informs the default rule
(`--backward=auto` means `masked` for BatchNorm networks; docs/choices.md).

  python bench/reproduction/bn_gate.py                       # the measured setting
  python bench/reproduction/bn_gate.py --quick --no_write    # seconds-scale check of the script
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position
import whole_runs  # pylint: disable=wrong-import-position

BACKWARDS = ("masked", "compact")
MODES = ("regulated", "hybrid")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--teacher", default="alexnet", help="any --teacher_model source")
  p.add_argument("--student", default="mobile_models:mobilenet_v3_small",
                 help="a BatchNorm student (default: MobileNetV3Small with BN momentum 0.9, "
                 "usable after a short CPU run; bench/mobile_models.py)")
  p.add_argument("--dataset", default="cifar10", choices=["cifar10", "mnist", "fashion_mnist"],
                 help="its paper flagfile; MNIST reaches the late regime of 1-20 participants "
                 "per batch within a few epochs")
  p.add_argument("--epochs", type=int, default=30)
  p.add_argument("--distill_epochs", type=int, default=30)
  p.add_argument("--distill_alpha", default="0.04")
  p.add_argument("--train_examples", type=int, default=10000)
  p.add_argument("--batch_size", type=int, default=256)
  whole_runs.add_run_args(p, "bench_bn_gate", "seconds: 128 examples, 1 epoch, a tiny BN "
                          "teacher and student")
  args = whole_runs.apply_quick(p.parse_args(argv), teacher=whole_runs.TINY_BN_MODEL,
                                student=whole_runs.TINY_BN_MODEL)
  if args.dataset != "cifar10":  # Never reuse another dataset's finished runs.
    args.output_root = args.output_root.rstrip(os.sep) + f"_{args.dataset}"
  return args


def main(argv=None):
  args = parse_args(argv)
  machine = common.machine_description(runs_in_child_processes=True)
  log = os.path.join(args.output_root, "main.log")
  common_flags = [f"--flagfile={args.dataset}", "--nomlflow", "--verbose=2",
                  f"--train_examples={args.train_examples}", f"--batch_size={args.batch_size}",
                  *args.extra]
  teacher_dir = os.path.join(args.output_root, "teacher")
  whole_runs.run_main([*common_flags, "--stage=teacher", f"--teacher_model={args.teacher}",
                       f"--epochs={args.epochs}"], teacher_dir, log)
  rows = []
  for backward in BACKWARDS:
    out = os.path.join(args.output_root, backward)
    whole_runs.run_main([*common_flags, "--stage=distill", f"--teacher_dir={teacher_dir}",
                         f"--student_model={args.student}", f"--backward={backward}",
                         f"--distill_epochs={args.distill_epochs}",
                         f"--distill_alpha={args.distill_alpha}", f"--modes={','.join(MODES)}"],
                        out, log)
    for mode in MODES:
      m = whole_runs.read_metrics(os.path.join(out, "students", mode))
      last = m["history"][-1] if m["history"] else {}
      rows.append([mode, backward, f"{m['test_accuracy']:.4f}", f"{m['zeta']:.2%}",
                   f"{last.get('participation_fraction', float('nan')):.2%}",
                   f"{m['epoch_s']:.1f}"])
  table = common.markdown_table(
      ["mode", "backward", "test acc", "ζ", "last-epoch participation", "s/epoch"], rows)
  notes = [f"student {args.student} distilled from {args.teacher} ({args.epochs} teacher "
           f"epochs), {args.distill_epochs} epochs, distill α {args.distill_alpha}, "
           f"{args.train_examples} {args.dataset} training images, batch {args.batch_size}",
           "runs one after the other (not interleaved): seconds per epoch drift with the load; "
           "accuracy is the outcome this table is for"]
  common.publish("bn_gate" + ("" if args.dataset == "cifar10" else f"_{args.dataset}"),
                 f"BatchNorm under the gate: masked vs compact backward ({args.dataset})", machine,
                 notes, table, write=not args.no_write)


if __name__ == "__main__":
  main()

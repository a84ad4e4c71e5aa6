"""Logits vs logits + feature KD under the gate, on the mobile case, at the same ζ budget.

Per seed: one teacher run (`--flagfile=cifar10 --stage=teacher` with the mobile case's
teacher; reused when finished), then one distillation run per arm from that teacher
(`--stage=distill --teacher_dir=...`), each a `tf_srkd.main` process:

* `logits`: the paper's τ²-scaled logit term alone (the default objective);
* `logits+feature@W`, one per weight W of `--weights`: the logit term plus the feature
  term `--feature` (`feature:TEACHER_LAYER,STUDENT_LAYER`, a Dense projection where the
  widths differ, as keras.distillation's FeatureDistillation documents), weighted
  `--distillation_loss_weights=1,W`.

Per mode and arm: test accuracy and ζ (mean ± std over the seeds), the accuracy
difference to the `logits` arm, and whether the arm's ζ is within 10 % of the `logits`
arm's in every seed. A feature term that slows learning also gates more samples in, so
an arm off the budget compares two budgets, and the table says so instead of calling it
a result at the same ζ.

  python bench/reproduction/feature_kd.py --seeds=0,1 --weights=1,0.01   # hours on CPU
  python bench/reproduction/feature_kd.py --quick --no_write              # a check that it runs
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position
from common import mean_std  # pylint: disable=wrong-import-position
import whole_runs  # pylint: disable=wrong-import-position

#: An arm is at the `logits` arm's budget when its ζ is within this share of it.
MATCH_TOLERANCE = 0.10


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--teacher", default="mobile_models:mobilenet_v3_large")
  p.add_argument("--student", default="mobile_models:mobilenet_v3_small")
  p.add_argument("--feature", default="MobileNetV3Large/conv_2,MobileNetV3Small/conv_2",
                 help="TEACHER_LAYER,STUDENT_LAYER of the feature term (the head convolutions)")
  p.add_argument("--weights", default="1,0.01", help="comma list of feature-term weights")
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--epochs", type=int, default=20, help="teacher epochs")
  p.add_argument("--distill_epochs", type=int, default=16)
  p.add_argument("--train_examples", type=int, default=10000, help="0: all 50,000")
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--modes", default="regulated,hybrid")
  whole_runs.add_run_args(p, "bench_feature_kd",
                          "a seconds-scale check: 128 examples, 1 epoch, one seed, one weight, "
                          "tiny models")
  args = whole_runs.apply_quick(p.parse_args(argv), seeds="0", weights="0.5",
                                teacher=whole_runs.TINY_BN_MODEL,
                                student=whole_runs.TINY_BN_MODEL, feature="pool,pool")
  args.weights = [float(w) for w in args.weights.split(",") if w]
  return args


def common_flags(args, seed):
  return ["--flagfile=cifar10", "--nomlflow", "--verbose=2", f"--seed={seed}",
          f"--teacher_model={args.teacher}", f"--epochs={args.epochs}",
          f"--train_examples={args.train_examples}", f"--batch_size={args.batch_size}",
          *args.extra]


def arms(args):
  """{arm name: the distillation flags of that arm}."""
  found = {"logits": []}
  for weight in args.weights:
    found[f"logits+feature@{weight:g}"] = [
        "--distillation_loss=logits", f"--distillation_loss=feature:{args.feature}",
        f"--distillation_loss_weights=1,{weight:g}"]
  return found


def run_seed(args, seed, log):
  """{arm: {mode: metrics}} and the teacher's metrics of one seed (finished runs reused)."""
  root = os.path.join(args.output_root, f"s{seed}")
  teacher_dir = os.path.join(root, "teacher")
  log_path = os.path.join(args.output_root, "main.log")
  whole_runs.run_main(common_flags(args, seed) + ["--stage=teacher"], teacher_dir, log_path)
  results = {}
  for arm, flags in arms(args).items():
    run_dir = os.path.join(root, arm)
    log(f"seed {seed}: {arm}")
    whole_runs.run_main(common_flags(args, seed) + [
        "--stage=distill", f"--teacher_dir={teacher_dir}", f"--student_model={args.student}",
        f"--distill_epochs={args.distill_epochs}", f"--modes={args.modes}", *flags],
                        run_dir, log_path)
    results[arm] = {mode: whole_runs.read_metrics(os.path.join(run_dir, "students", mode))
                    for mode in args.modes.split(",")}
  return results, whole_runs.read_metrics(os.path.join(teacher_dir, "teacher"))


def same_budget(zetas, reference) -> str:
  """'yes' when every seed's ζ is within MATCH_TOLERANCE of the reference arm's, else how
  far the worst seed is off."""
  worst = max(abs(z / r - 1.0) for z, r in zip(zetas, reference))
  return "yes" if worst <= MATCH_TOLERANCE else f"no ({worst:.0%} off)"


def table_rows(by_seed, modes):
  """Rows (mode, arm, accuracy, Δ to logits, ζ, same budget) over the seeds of `by_seed`."""
  rows = []
  seeds = sorted(by_seed)
  for mode in modes:
    base_acc = [by_seed[s]["logits"][mode]["test_accuracy"] for s in seeds]
    base_zeta = [by_seed[s]["logits"][mode]["zeta"] for s in seeds]
    for arm in by_seed[seeds[0]]:
      acc = [by_seed[s][arm][mode]["test_accuracy"] for s in seeds]
      zeta = [by_seed[s][arm][mode]["zeta"] for s in seeds]
      delta = 100 * (statistics.mean(acc) - statistics.mean(base_acc))
      rows.append([mode, arm, mean_std(acc, "{:.4f}"),
                   "—" if arm == "logits" else f"{delta:+.2f}", mean_std(zeta, "{:.2%}"),
                   "—" if arm == "logits" else same_budget(zeta, base_zeta)])
  return rows


def main(argv=None):
  args = parse_args(argv)
  machine = common.machine_description(runs_in_child_processes=True)
  seeds = [int(s) for s in args.seeds.split(",") if s]
  by_seed, teachers = {}, []
  for seed in seeds:
    by_seed[seed], teacher = run_seed(args, seed, print)
    teachers.append(teacher["test_accuracy"])
  table = common.markdown_table(
      ["mode", "arm", "test accuracy", "Δ to logits (pt)", "ζ", "same ζ budget (±10 %)"],
      table_rows(by_seed, args.modes.split(",")))
  notes = [
      f"teacher {args.teacher} ({args.epochs} epochs; test accuracy per seed "
      f"{', '.join(f'{a:.4f}' for a in teachers)}), student {args.student} "
      f"({args.distill_epochs} epochs), {args.train_examples or 50000} CIFAR-10 training "
      f"images, batch {args.batch_size}, seeds {args.seeds}; mean ± std over the seeds"
      + (f"; extra flags {' '.join(args.extra)}" if args.extra else ""),
      f"feature term `feature:{args.feature}` beside the logit term, weights "
      f"{', '.join(f'{w:g}' for w in args.weights)}; every arm of a seed distils from the "
      "same teacher (`--teacher_dir`)",
      "same ζ budget: the arm's ζ within 10 % of the logits arm's in every seed",
  ]
  common.publish("feature_kd" + ("_quick" if args.quick else ""),
                 "Logits vs logits + feature KD under the gate (CIFAR-10 mobile case)",
                 machine, notes, table, write=not args.no_write)


if __name__ == "__main__":
  main()

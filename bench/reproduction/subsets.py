"""Significance-ranked subsets into bench/RESULTS.md: `python -m tf_srkd.cli.subset` on a
teacher run, its table published as section `subsets_<dataset>`.

Trains (or reuses) a self-regulated teacher with the dataset's paper flagfile at
`--epochs`, then runs the subset tool on it (students at the same epochs, KD and
supervised, top / random / bottom per class) and publishes `table.md` with the
run's settings; the curve stays in `<run>/subsets/curve.png` (and MLflow).

  python bench/reproduction/subsets.py --dataset=mnist --epochs=20
  python bench/reproduction/subsets.py --quick --no_write          # a check that it runs
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist", "cifar10"])
  p.add_argument("--epochs", type=int, default=20, help="teacher and student epochs (paper: 200)")
  p.add_argument("--fractions", default="0.01,0.02,0.05,0.1,0.25,0.5,1.0")
  p.add_argument("--train_examples", type=int, default=0)
  p.add_argument("--root", default=os.path.join(common.REPO_ROOT, "runs", "bench_subsets"))
  p.add_argument("--mlflow", action="store_true")
  p.add_argument("--quick", action="store_true", help="512 examples, 1 epoch, f = 0.25, 1")
  p.add_argument("--no_write", action="store_true")
  args = p.parse_args(argv)
  if args.quick:
    args.epochs, args.train_examples, args.fractions = 1, 512, "0.25,1"
  return args


def top_vs_random(rows):
  """One line per method: at which fractions the most significant samples beat a random
  subset of the same size, and at which they lose (read from the measured rows)."""
  accuracy = {(r["method"], r["ranking"], r["fraction"]): r["test_accuracy"] for r in rows}
  lines = []
  for method in sorted({r["method"] for r in rows}):
    fractions = sorted(f for m, k, f in accuracy if m == method and k == "top" and f < 1)
    pairs = [(f, accuracy[(method, "top", f)] - accuracy[(method, "random", f)])
             for f in fractions if (method, "random", f) in accuracy]
    wins = ", ".join(f"{f:g} ({d * 100:+.1f} pt)" for f, d in pairs if d > 0)
    losses = ", ".join(f"{f:g} ({d * 100:+.1f} pt)" for f, d in pairs if d <= 0)
    if wins and losses:
      verdict = f"beats random at f = {wins}; does not at f = {losses}"
    elif wins:
      verdict = f"beats random at every fraction: f = {wins}"
    elif losses:
      verdict = f"never beats random: f = {losses}"
    else:
      verdict = "has no top/random pair measured"
    lines.append(f"{method}: top-significance {verdict}.")
  return lines


def main(argv=None):
  args = parse_args(argv)
  machine = common.machine_description(runs_in_child_processes=True)
  run = os.path.join(args.root, f"{args.dataset}-e{args.epochs}-n{args.train_examples}")
  mlflow = [] if args.mlflow else ["--nomlflow"]
  if not os.path.exists(os.path.join(run, "teacher", "metrics.json")):
    subprocess.run([sys.executable, "-m", "tf_srkd.main", f"--flagfile={args.dataset}",
                    "--stage=teacher", f"--epochs={args.epochs}", f"--output_dir={run}",
                    f"--train_examples={args.train_examples}", *mlflow],
                   cwd=common.REPO_ROOT, check=True)
  subprocess.run([sys.executable, "-m", "tf_srkd.cli.subset", f"--teacher_dir={run}",
                  f"--fractions={args.fractions}", f"--epochs={args.epochs}", *mlflow],
                 cwd=common.REPO_ROOT, check=True)
  with open(os.path.join(run, "subsets", "table.md"), encoding="utf-8") as f:
    table = f.read()
  with open(os.path.join(run, "subsets", "summary.json"), encoding="utf-8") as f:
    rows = json.load(f)["rows"]
  curve = os.path.join(run, "subsets", "curve.png")
  if not args.no_write:
    curve = shutil.copy(curve, os.path.join(common.BENCH_DIR, f"subsets_curve_{args.dataset}.png"))
  notes = [
      f"Teacher: `flags/{args.dataset}.flags` at {args.epochs} epochs (the paper: 200 for "
      "MNIST/Fashion-MNIST, 1000 for CIFAR-10), self-regulated; every student trains "
      f"{args.epochs} epochs on its subset (`--schedule=epochs`: a smaller subset costs less).",
      "Subsets per class (tf_srkd/data/subsets.py): k_c = max(1, ⌊f·n_c⌋); ties in significance "
      "(most samples are exactly 0) broken by a seeded hash of the sample id; kd = conventional "
      "KD from the teacher, supervised = cross-entropy only. Cells: test accuracy.",
      f"Run directory: `{os.path.relpath(run, common.REPO_ROOT)}` (ids/*.npy, curve.png); "
      f"curve: `{os.path.relpath(curve, common.REPO_ROOT)}`.",
      *top_vs_random(rows),
  ]
  common.publish(f"subsets_{args.dataset}" + ("_quick" if args.quick else ""),
                 f"Significance-ranked subsets: {args.dataset}", machine, notes, table,
                 write=not args.no_write)


if __name__ == "__main__":
  main()

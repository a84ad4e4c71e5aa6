"""Skipping provably idle epochs. Whole MNIST teacher runs, paper settings.

Runs, one after the other in separate processes (same machine, same data, seed 0):

  compact+skip   --alpha=0.02 --backward=compact --skip_idle_epochs (reuses exact margins)
  compact+skip-noreuse  the same with --noreuse_margins (what margin reuse adds)
  conventional   --alpha=inf
  compact        --alpha=0.02 --backward=compact --noskip_idle_epochs
  masked         --alpha=0.02 --backward=masked  --noskip_idle_epochs

each `python -m tf_srkd.main --flagfile=flags/mnist.flags --stage=teacher --nomlflow`,
and tabulates the teacher's fit wall time (`teacher/metrics.json` `wall_time_s`),
test accuracy, zeta, and the number of compact / skipped epochs. The table is
rewritten into bench/RESULTS.md after every run, so a partial result survives.
A finished run directory is reused (pass --fresh to redo). Goal: compact+skip
<= 0.25x the conventional teacher's wall time at equal test accuracy (+-0.2 pt).

  python bench/timing/idle_epochs.py                 # 200 epochs (the paper's setting)
  python bench/timing/idle_epochs.py --epochs=120 --variants=compact+skip,conventional
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position

VARIANTS = {
    "compact+skip": ["--alpha=0.02", "--backward=compact", "--skip_idle_epochs"],
    "compact+skip-noreuse": ["--alpha=0.02", "--backward=compact", "--skip_idle_epochs",
                             "--noreuse_margins"],
    "conventional": ["--alpha=inf", "--backward=masked"],
    "compact": ["--alpha=0.02", "--backward=compact", "--noskip_idle_epochs"],
    "masked": ["--alpha=0.02", "--backward=masked", "--noskip_idle_epochs"],
}


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--epochs", type=int, default=200)
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--output_root", default=os.path.join(common.REPO_ROOT, "runs", "bench_idle"))
  p.add_argument("--fresh", action="store_true")
  return p.parse_args()


def run(args, name):
  out = os.path.join(args.output_root, f"e{args.epochs}-{name.replace('+', '_')}")
  metrics_path = os.path.join(out, "teacher", "metrics.json")
  if args.fresh and os.path.isdir(out):
    shutil.rmtree(out)
  if not os.path.exists(metrics_path):
    cmd = [sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/mnist.flags", "--stage=teacher",
           "--nomlflow", "--verbose=2", f"--epochs={args.epochs}", f"--output_dir={out}",
           *VARIANTS[name]]
    print("running:", " ".join(cmd[1:]), flush=True)
    load = common.load_average()
    with open(out + ".log", "w") as log:
      subprocess.run(cmd, cwd=common.REPO_ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    with open(os.path.join(out, "bench_load.json"), "w") as f:
      json.dump({"load": [load, common.load_average()], "finished": common.utc_now()}, f)
  with open(metrics_path) as f:
    metrics = json.load(f)
  with open(os.path.join(out, "bench_load.json")) as f:
    extra = json.load(f)
  history = metrics["history"]
  return {
      "wall": float(metrics["wall_time_s"]), "accuracy": float(metrics["test_accuracy"]),
      "zeta": float(metrics["zeta"]), "epochs": len(history),
      "compact": sum(h.get("compact_backward", 0) > 0.5 for h in history),
      "skipped": sum(h.get("skipped_epoch", 0) > 0.5 for h in history),
      "idle": sum(h.get("participation_fraction", 1) == 0 for h in history),
      "load": extra["load"], "finished": extra["finished"],
  }


def write(args, results):
  conv = results.get("conventional")
  rows = []
  for name, r in results.items():
    ratio = f"**{r['wall'] / conv['wall']:.3f}**" if conv else "—"
    diff = f"{100 * (r['accuracy'] - conv['accuracy']):+.2f}" if conv else "—"
    rows.append([name, r["epochs"], f"{r['wall']:.1f}", ratio, f"{r['accuracy']:.2%}", diff,
                 f"{r['zeta']:.2%}", r["idle"], r["compact"], r["skipped"],
                 f"{r['load'][0]:.1f} → {r['load'][1]:.1f}", r["finished"]])
  table = common.markdown_table(
      ["run", "epochs", "teacher fit s", "time / conventional", "test accuracy",
       "Δ acc vs conventional (pt)", "ζ", "epochs with 0 participants", "compact epochs",
       "skipped epochs", "load avg start → end", "finished"], rows)
  notes = [f"**{args.epochs} epochs** per run, `flags/mnist.flags` (LeNet-5, 60000 examples, "
           "batch 512, Adam 1e-3, seed 0), `--stage=teacher`, runs one after the other.",
           "Goal: compact+skip ≤ 0.25× the conventional teacher's time at equal accuracy (± 0.2 pt).",
           "The CPU is shared with other processes: see the load averages."]
  body = common.section_preamble(
      f"Idle-epoch skipping, whole MNIST teacher ({args.epochs} epochs)",
      common.command_line(), common.machine_description(), notes)
  common.write_section(f"idle_epochs_e{args.epochs}", body + "\n" + table + "\n")
  print(table, flush=True)


def main():
  args = parse_args()
  os.makedirs(args.output_root, exist_ok=True)
  results = {}
  for name in args.variants.split(","):
    results[name] = run(args, name)
    write(args, results)


if __name__ == "__main__":
  main()

"""Table 3 of the speed benchmarks: a whole MNIST self-regulated teacher run against a
conventional one (alpha=inf), total wall time and test accuracy.

Runs, one after the other (never concurrently),

  python -m tf_srkd.main --flagfile=flags/mnist.flags --stage=teacher --nomlflow \
      --backward=auto --alpha=0.02 --epochs=E --output_dir=ROOT/e<E>-alpha0.02
  python -m tf_srkd.main ... --alpha=inf ...

and reads `teacher/metrics.json` (`wall_time_s`: the teacher's `fit`, and
`test_accuracy`) of each; the process wall time (data loading, evaluation and
saving included) is reported too. A finished run (metrics.json plus this
script's `bench_process.json` with the process time) is reused, not rerun
(pass --fresh to redo it). The paper's setting is 200 epochs;
`--epochs` runs it shorter, and the table says how many epochs were run.

  python bench/timing/sr_vs_conventional.py --epochs=30
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--epochs", type=int, default=200, help="teacher epochs (paper: 200)")
  p.add_argument("--alpha", default="0.02", help="the SR run's alpha (paper: 0.02)")
  p.add_argument("--order", default="sr,conventional",
                 help="which run goes first (sr,conventional or conventional,sr)")
  p.add_argument("--output_root", default=os.path.join(common.REPO_ROOT, "runs", "bench_sr_vs_conv"))
  p.add_argument("--fresh", action="store_true", help="delete this script's earlier run dirs first")
  p.add_argument("--extra", action="append", default=[],
                 help="extra flag for tf_srkd.main (repeatable), e.g. --extra=--seed=1")
  p.add_argument("--no_write", action="store_true", help="do not touch bench/RESULTS.md")
  return p.parse_args()


def run_one(args, alpha, log):
  out = os.path.join(args.output_root, f"mnist-e{args.epochs}-alpha{alpha}")
  if args.fresh and os.path.isdir(out):
    shutil.rmtree(out)
  cmd = [sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/mnist.flags", "--stage=teacher",
         "--nomlflow", "--backward=auto", f"--alpha={alpha}", f"--epochs={args.epochs}",
         f"--output_dir={out}", *args.extra]
  sidecar = os.path.join(out, "bench_process.json")
  if os.path.exists(os.path.join(out, "teacher", "metrics.json")) and os.path.exists(sidecar):
    log(f"reusing the finished run in {out}")
    with open(sidecar) as f:
      process = json.load(f)
    process["reused"] = True
  else:
    log("running: " + " ".join(cmd[1:]))
    load_before = common.load_average()
    began = time.time()
    with open(os.path.join(args.output_root, f"e{args.epochs}-alpha{alpha}.log"), "a") as f:
      subprocess.run(cmd, cwd=common.REPO_ROOT, check=True, stdout=f, stderr=subprocess.STDOUT,
                     env=dict(os.environ))
    process = {"process_s": time.time() - began, "load": [load_before, common.load_average()],
               "machine": common.machine_description(), "finished": common.utc_now()}
    with open(sidecar, "w") as f:
      json.dump(process, f)
  with open(os.path.join(out, "teacher", "metrics.json")) as f:
    metrics = json.load(f)
  history = metrics.get("history", [])
  compact = sum(1 for h in history if h.get("compact_backward", 0.0) > 0.5)
  skipped = sum(1 for h in history if h.get("skipped_epoch", 0.0) > 0.5)
  result = {
      "alpha": alpha,
      "wall_time_s": float(metrics["wall_time_s"]),
      "process_s": process["process_s"],
      "test_accuracy": float(metrics["test_accuracy"]),
      "zeta": float(metrics["zeta"]),
      "compact_epochs": compact,
      "skipped_epochs": skipped,
      "epochs": len(history),
      "last_participation": history[-1].get("participation_fraction") if history else None,
      "load": tuple(process["load"]),
      "finished": process.get("finished", "?"),
      "machine": process.get("machine", ""),
      "reused": process.get("reused", False),
      "out": out,
  }
  log(f"  -> {result}")
  return result


def main():
  args = parse_args()
  os.makedirs(args.output_root, exist_ok=True)
  machine = common.machine_description()
  print(machine)
  alphas = {"sr": args.alpha, "conventional": "inf"}
  results = {}
  for which in args.order.split(","):
    results[which] = run_one(args, alphas[which], print)
  sr, conv = results["sr"], results["conventional"]
  time_ratio = sr["wall_time_s"] / conv["wall_time_s"]
  process_ratio = sr["process_s"] / conv["process_s"]
  acc_diff = 100 * (sr["test_accuracy"] - conv["test_accuracy"])
  rows = []
  for name, r in (("SR teacher, alpha=" + args.alpha, sr), ("conventional, alpha=inf", conv)):
    rows.append([name, r["epochs"], f"{r['wall_time_s']:.1f}", f"{r['process_s']:.1f}",
                 f"{r['test_accuracy']:.2%}", f"{r['zeta']:.1%}",
                 f"{r['last_participation']:.2%}" if r["last_participation"] is not None else "—",
                 f"{r['compact_epochs']}/{r['epochs']}", f"{r['skipped_epochs']}",
                 f"{r['load'][0]:.1f} → {r['load'][1]:.1f}", r["finished"]])
  table = common.markdown_table(
      ["run", "epochs", "teacher fit wall time s", "process wall time s", "test accuracy",
       "zeta", "last-epoch participation", "compact epochs", "skipped idle epochs",
       "load avg start → end",
       "finished"], rows)
  met_time = time_ratio <= 0.5
  met_acc = abs(acc_diff) <= 0.2 or acc_diff > 0
  summary = common.markdown_table(
      ["quantity", "value", "goal"],
      [["fit time SR / conventional", f"**{time_ratio:.3f}**",
        f"≤ 0.5: **{'met' if met_time else 'missed'}**"],
       ["process time SR / conventional", f"{process_ratio:.3f}", ""],
       ["test accuracy SR − conventional", f"{acc_diff:+.2f} pt",
        f"within ± 0.2 pt (or better): **{'met' if met_acc else 'missed'}**"]])
  notes = [
      f"**{args.epochs} epochs** per run" + (
          " (the paper's setting)." if args.epochs == 200 else
          " (the paper's setting is 200; fewer epochs favour the conventional run, because the "
          "SR run's participation is highest in its early epochs and eta = 1 − exp(−alpha·epoch) "
          "is still small)."),
      "Both runs: `flags/mnist.flags` (LeNet-5, batch 512, Adam 1e-3, seed 0), `--stage=teacher "
      "--nomlflow --backward=auto`, run one after the other in separate processes "
      f"(order: {args.order}); the CPU is shared with other processes, so the load average is "
      "shown.",
      "teacher fit wall time = `teacher/metrics.json` `wall_time_s` (the `fit` of the stage); "
      "process wall time adds data loading, test evaluation and saving.",
  ]
  if any(r["reused"] for r in results.values()):
    notes.append("Some runs were reused from earlier invocations (see 'finished'); the machine "
                 "line is the one recorded when the SR run finished.")
    machine = sr["machine"] or machine
  body = common.section_preamble(
      f"3. Whole MNIST SR teacher run vs conventional run ({args.epochs} epochs)",
      common.command_line(), machine, notes)
  body += "\n" + table + "\n\n" + summary + "\n"
  print(body)
  if not args.no_write:
    common.write_section(f"sr_vs_conventional_e{args.epochs}", body)


if __name__ == "__main__":
  main()

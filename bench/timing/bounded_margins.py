"""Bounded-staleness margins against the exact gate: run time, accuracy, zeta, agreement.

For each seed, in one process and one after the other, on the dataset's paper
flagfile (`flags/<dataset>.flags`, Table II settings) with the regulated and
hybrid students:

  exact         the default gate (`--margin_refresh=exact`)
  bounded:K:b   `--margin_refresh=bounded --margin_max_age=K --margin_band=b`
                (`bounded` alone: the defaults)
  audit:K:b     the teacher stage of bounded:K:b with `--margin_audit`: the exact gate
                beside the bounded one on the same weights (its decisions equal
                bounded's; its time is not used)
  conventional  the teacher at alpha = inf (masked), for the teacher's time ratio

Every run goes through `tf_srkd.run.pipeline.run` as `tf-srkd` runs it (no MLflow).
Time = each stage's fit wall time (metrics.json). Decision agreement, from the audit
run: per epoch, the share of rows the exact gate admits and the bounded one did not
(misses) and the reverse (extra admissions).

  python bench/timing/bounded_margins.py --dataset=mnist --seeds=0,1,2
  python bench/timing/bounded_margins.py --arms=exact,bounded:2:0.01,audit:2:0.01,conventional
  python bench/timing/bounded_margins.py --quick --no_write   # a few seconds, checks it runs

With `--cells_dir=DIR` every finished (arm, seed) run is kept as `DIR/<arm>-<seed>.json`
and a restarted bench skips the runs already there, so an interrupted multi-hour
table resumes where it stopped. A cell records the settings it ran with; one that
differs from this invocation's is refused rather than mixed in.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position
from common import mean_std  # pylint: disable=wrong-import-position

from tf_srkd.core import staleness  # pylint: disable=wrong-import-position
from tf_srkd.run import config_flags  # pylint: disable=wrong-import-position
from tf_srkd.run import pipeline  # pylint: disable=wrong-import-position

STAGES = ("teacher", "students/regulated", "students/hybrid")
ARMS = ("exact", "bounded", "audit", "conventional")


def parse_arm(arm):
  """(kind, K, b) of an arm name: exact, conventional, bounded[:K:b] or audit[:K:b]."""
  kind, *bound = arm.split(":")
  if kind not in ARMS or (bound and (kind not in ("bounded", "audit") or len(bound) != 2)):
    raise SystemExit(f"--arms: {arm!r}: expected exact, conventional, bounded[:K:b] or "
                     "audit[:K:b]")
  if not bound:
    return kind, staleness.DEFAULT_MAX_AGE, staleness.DEFAULT_BAND
  return kind, int(bound[0]), float(bound[1])


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion_mnist"))
  p.add_argument("--seeds", default="0")
  p.add_argument("--epochs", type=int, default=0, help="0: the flagfile's")
  p.add_argument("--examples", type=int, default=0, help="training examples (0: all)")
  p.add_argument("--arms", default=",".join(ARMS))
  p.add_argument("--quick", action="store_true", help="3 epochs on 1024 examples")
  p.add_argument("--no_write", action="store_true", help="do not touch bench/RESULTS.md")
  p.add_argument("--cells_dir", default="",
                 help="keep each finished (arm, seed) run here and reuse it on restart")
  args = p.parse_args()
  if args.quick:
    args.epochs, args.examples = 3, 1024
  return args


def arm_config(args, arm, seed, out):
  kind, max_age, band = parse_arm(arm)
  with open(os.path.join(common.REPO_ROOT, "flags", f"{args.dataset}.flags"),
            encoding="utf-8") as f:
    config = config_flags.from_flagfile(f.read())
  changes = dict(seed=seed, output_dir=out, verbose=0, mlflow=False, train_examples=args.examples,
                 modes=("regulated", "hybrid"))
  if args.epochs:
    changes.update(epochs=args.epochs, distill_epochs=None)
  if kind in ("bounded", "audit"):
    changes.update(margin_refresh="bounded", margin_max_age=max_age, margin_band=band,
                   margin_audit=kind == "audit")
  if kind == "audit":
    changes.update(stage="teacher")
  if kind == "conventional":
    changes.update(alpha=float("inf"), stage="teacher")
  return config.replace(**changes)


def cell_settings(args):
  """What a kept cell must share with this invocation to be reused."""
  return {"dataset": args.dataset, "epochs": args.epochs, "examples": args.examples}


def run_arm(args, arm, seed, tmp):
  out = os.path.join(tmp, f"{arm.replace(':', '_')}-{seed}")
  load = common.load_average()
  print(f"seed {seed}: {arm}", flush=True)
  pipeline.run(arm_config(args, arm, seed, out))
  stages = {}
  for stage in STAGES:
    path = os.path.join(out, stage, "metrics.json")
    if os.path.exists(path):
      with open(path) as f:
        stages[stage] = json.load(f)
  return {"stages": stages, "load": (load, common.load_average()), "code": common.code_version()}


def agreement(history, n):
  """(mean and max per-epoch miss share, total misses, total extra admissions, participants)."""
  misses = [h.get("gate_misses", 0.0) for h in history]
  extra = [h.get("gate_extra", 0.0) for h in history]
  participants = sum(h["participation_fraction"] for h in history) * n
  return (statistics.mean(misses), max(misses), round(sum(misses) * n), round(sum(extra) * n),
          round(participants))


def main():
  args = parse_args()
  machine = common.machine_description()
  seeds = [int(s) for s in args.seeds.split(",") if s]
  arms = [a for a in args.arms.split(",") if a]
  results = {}  # (arm, seed) -> run
  with tempfile.TemporaryDirectory() as tmp:
    for seed in seeds:
      for arm in arms:
        results[arm, seed] = common.kept_cell(
            args.cells_dir, f"{arm.replace(':', '_')}-{seed}", cell_settings(args),
            lambda arm=arm, seed=seed: run_arm(args, arm, seed, tmp))
  rows, agree_rows = [], []
  for stage in STAGES:
    for arm in [a for a in arms if parse_arm(a)[0] in ("exact", "bounded")]:
      runs = [results[arm, s]["stages"][stage] for s in seeds if (arm, s) in results]
      if not runs:
        continue
      ratios = []
      for s in seeds:
        this = results.get((arm, s), {}).get("stages", {}).get(stage)
        base = (results.get(("conventional", s), {}).get("stages", {}).get(stage)
                if stage == "teacher" else results.get(("exact", s), {}).get("stages", {}).get(stage))
        if this and base:
          ratios.append(this["wall_time_s"] / base["wall_time_s"])
      skipped = [sum(bool(h.get("skipped_epoch")) for h in r["history"]) for r in runs]
      cached = [statistics.mean(h.get("gate_from_cache", 0.0) if not h.get("skipped_epoch")
                                else 1.0 for h in r["history"]) for r in runs]
      loads = [f"{results[arm, s]['load'][0]:.1f}→{results[arm, s]['load'][1]:.1f}"
               for s in seeds if (arm, s) in results]
      rows.append([stage, _arm_label(arm), mean_std([r["wall_time_s"] for r in runs], "{:.1f}"),
                   mean_std(ratios, "{:.3f}"), mean_std([r["test_accuracy"] for r in runs],
                                                        "{:.4f}"),
                   mean_std([r["zeta"] for r in runs], "{:.4f}"), mean_std(skipped, "{:.0f}"),
                   mean_std(cached, "{:.1%}"), ", ".join(loads)])
    for arm in [a for a in arms if parse_arm(a)[0] == "audit"]:
      for s in seeds:
        audited = results.get((arm, s), {}).get("stages", {}).get(stage)
        if audited:
          size = args.examples or _train_size(args)
          mean, worst, misses, extra, participants = agreement(audited["history"], size)
          agree_rows.append([stage, _arm_label(arm), s, f"{mean:.4%}", f"{worst:.4%}", misses,
                             extra, participants])
  conventional = [results["conventional", s]["stages"]["teacher"] for s in seeds
                  if ("conventional", s) in results]
  if conventional:
    rows.append(["teacher", "conventional",
                 mean_std([r["wall_time_s"] for r in conventional], "{:.1f}"), "1.000",
                 mean_std([r["test_accuracy"] for r in conventional], "{:.4f}"), "1.0000",
                 "0", "0.0%", ", ".join(f"{results['conventional', s]['load'][0]:.1f}→"
                                        f"{results['conventional', s]['load'][1]:.1f}"
                                        for s in seeds if ("conventional", s) in results)])
  table = common.markdown_table(
      ["stage", "gate", "fit s", "time / baseline", "test accuracy", "ζ", "epochs skipped",
       "gate rows from cache", "load avg start→end"], rows)
  if agree_rows:
    table += "\n\nDecision agreement (audit run: the exact gate beside the bounded one, same " \
             "weights):\n\n" + common.markdown_table(
                 ["stage", "gate", "seed", "mean per-epoch misses", "worst epoch", "misses (rows)",
                  "extra admissions (rows)", "participants (rows)"], agree_rows)
  notes = [
      f"`flags/{args.dataset}.flags`{f', {args.epochs} epochs' if args.epochs else ''}"
      f"{f', {args.examples} examples' if args.examples else ''}, modes regulated and hybrid, "
      f"seeds {args.seeds}; `bounded K=k b=x`: `--margin_refresh=bounded "
      "--margin_max_age=k --margin_band=x` (the defaults: K = "
      f"{staleness.DEFAULT_MAX_AGE}, b = {staleness.DEFAULT_BAND}).",
      "Time / baseline: the teacher against the conventional teacher of the same seed; a "
      "student against the exact gate's student of the same seed. Mean ± std over seeds.",
      "Goals: teacher ≤ 0.15× conventional within 0.1 pt of exact accuracy; students ≤ 0.5× "
      "their exact runs' time, within noise of their accuracy.",
  ]
  codes = sorted({r.get("code", common.code_version()) for r in results.values()})
  if codes != [common.code_version()]:
    notes.append(f"Runs kept from earlier invocations (--cells_dir) were measured at: "
                 f"{'; '.join(codes)}.")
  name = f"bounded_margins_{args.dataset}_e{args.epochs or 'flags'}"
  if len(seeds) > 1:
    name += f"_{len(seeds)}seeds"
  common.publish(name, f"Bounded-staleness margins vs the exact gate: {args.dataset}",
                 machine, notes, table, write=not args.no_write)


def _arm_label(arm):
  kind, max_age, band = parse_arm(arm)
  return kind if kind in ("exact", "conventional") else f"{kind} K={max_age} b={band:g}"


def _train_size(args):
  from tf_srkd.data import datasets  # pylint: disable=import-outside-toplevel

  return datasets.get_dataset_spec(args.dataset).train_size


if __name__ == "__main__":
  main()

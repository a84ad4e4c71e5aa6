"""The verdict at the paper's protocol: every gate policy at matched budgets, 3 seeds.

For each dataset (`flags/<dataset>.flags`: the paper's Table II settings, 200
epochs) and each seed, in one process and one after the other (`peers.Runner`):

* **teacher**: conventional (alpha = inf, the time baseline), self-regulation with
  the exact gate and with bounded-staleness margins (`--margin_refresh=bounded`),
  Selective Backprop at beta = 1/zeta - 1 and random at p = zeta, zeta being
  self-regulation's (exact) measured budget of the same seed, and InfoBatch at its
  lowest reachable budget (r = 0.9, delta = 0.875);
* **student** (mode `--mode`, default regulated) from that seed's exact
  self-regulated teacher: conventional KD (alpha = inf), then the same policies,
  matched to the student's own self-regulated zeta.

A peer's cell is *matched* when its achieved zeta is within 10 % of its target in
every seed; the table prints both, and the verdict never calls an unmatched cell a
match. Per policy: mean +- std over the seeds of test accuracy, zeta and fit time /
the same seed's conventional run. One Pareto plot per dataset (accuracy vs zeta,
3-seed error bars; teacher and student panels).

Every finished run is kept in `--cells_dir` (default `runs/peers_protocol`), with the
exact teacher's logits and significance, so a crashed or stopped bench restarts where
it stopped: it takes hours on a CPU; run it alone, in the background:

  nohup python bench/reproduction/peers_protocol.py --datasets=mnist,fashion_mnist \\
      --seeds=0,1,2 > peers_protocol.log 2>&1 &
  python bench/reproduction/peers_protocol.py --quick --no_write   # a check that it runs

Each dataset writes its own section, `peers_protocol_<dataset>`, and
`bench/peers_protocol_<dataset>.png`.
"""

import argparse
import math
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position
from common import mean_std  # pylint: disable=wrong-import-position
import peers  # pylint: disable=wrong-import-position

#: (policy, refresh) in table order; "conventional" is self_regulated at alpha = inf.
ARMS = (("conventional", "exact"), ("self_regulated", "exact"), ("self_regulated", "bounded"),
        ("selective_backprop", "exact"), ("random", "exact"), ("infobatch", "exact"))
INFOBATCH_RATIO = 0.9
MATCH_TOLERANCE = 0.10


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--datasets", default="mnist,fashion_mnist")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--epochs", type=int, default=0, help="0: the flagfile's (paper: 200)")
  p.add_argument("--train_examples", type=int, default=0, help="first K examples (0: all)")
  p.add_argument("--mode", default="regulated", choices=["regulated", "hybrid"])
  p.add_argument("--cells_dir", default=os.path.join(common.REPO_ROOT, "runs", "peers_protocol"))
  p.add_argument("--quick", action="store_true", help="MNIST, 256 examples, 1 epoch, 1 seed")
  p.add_argument("--no_write", action="store_true", help="leave bench/ alone")
  args = p.parse_args(argv)
  if args.quick:
    # One seed: the summary over several is arithmetic, unit-tested on made-up cells.
    args.datasets, args.epochs, args.train_examples, args.seeds = "mnist", 1, 256, "0"
  return args


def arm_name(policy, refresh):
  return f"{policy}+bounded" if refresh == "bounded" else policy


def arm_settings(policy, target):
  """(the setting as text, GateSettings fields) of a peer aimed at budget `target`."""
  if policy == "selective_backprop":
    beta = max(1.0 / max(target, 1e-4) - 1.0, 0.05)  # Its expected keep rate: 1/(beta + 1).
    return f"β={beta:.4g}", dict(sb_beta=beta)
  if policy == "random":
    return f"p={target:.4g}", dict(keep_fraction=min(1.0, target))
  if policy == "infobatch":
    return f"r={INFOBATCH_RATIO:g}, δ=0.875", dict(infobatch_ratio=INFOBATCH_RATIO)
  return "", {}


def flagfile_config(dataset):
  """The dataset's paper flagfile as a Config."""
  from tf_srkd.run import config_flags  # pylint: disable=import-outside-toplevel

  with open(os.path.join(common.REPO_ROOT, "tf_srkd", "flags", f"{dataset}.flags"),
            encoding="utf-8") as f:
    return config_flags.from_flagfile(f.read())


class SeedRuns:
  """One dataset and seed: its runner, loaded on first use, and its kept cells."""

  def __init__(self, dataset, seed, args, root):
    self.dataset, self.seed, self.args, self.root = dataset, seed, args, root
    self.epochs = args.epochs or flagfile_config(dataset).training.epochs
    self._runner = None
    self.settings = {"dataset": dataset, "seed": seed, "epochs": self.epochs,
                     "train_examples": args.train_examples, "mode": args.mode}

  def runner(self):
    if self._runner is None:
      runner_args = argparse.Namespace(seed=self.seed, epochs=self.epochs,
                                       cifar_epochs=self.epochs,
                                       train_examples=self.args.train_examples,
                                       mode=self.args.mode)
      self._runner = peers.Runner(self.dataset, runner_args, os.path.join(self.root, "runs"))
    return self._runner

  def cell(self, stage, policy, refresh, alpha, target=None):
    """One run's {accuracy, zeta, wall, setting, target}, kept in --cells_dir."""
    setting, gate_settings = arm_settings(policy, target)
    name = f"{self.dataset}-s{self.seed}-{stage}-{arm_name(policy, refresh)}"

    def compute():
      if stage == "student":
        self._ensure_teacher()
      accuracy, zeta, wall = self.runner().run(
          stage, "self_regulated" if policy == "conventional" else policy, alpha, refresh,
          **gate_settings)
      if stage == "teacher" and (policy, refresh) == ("self_regulated", "exact"):
        self._save_teacher()
      return {"accuracy": accuracy, "zeta": zeta, "wall": wall, "setting": setting,
              "target": target, "code": common.code_version(), "load": common.load_average()}

    print(f"{name} {setting}", flush=True)
    settings = dict(self.settings, setting=setting)
    if stage == "teacher":  # A teacher does not depend on the students' mode.
      settings.pop("mode")
    return common.kept_cell(self.args.cells_dir, name, settings, compute)

  def _teacher_files(self):
    stem = os.path.join(self.args.cells_dir or self.root, f"{self.dataset}-s{self.seed}-teacher")
    return stem + "-logits.npy", stem + "-significance.npy"

  def _save_teacher(self):
    import numpy as np  # pylint: disable=import-outside-toplevel

    os.makedirs(os.path.dirname(self._teacher_files()[0]), exist_ok=True)
    for path, value in zip(self._teacher_files(), (self.runner().teacher_logits,
                                                    self.runner().significance)):
      np.save(path + ".tmp.npy", value)
      os.replace(path + ".tmp.npy", path)

  def _ensure_teacher(self):
    """The exact self-regulated teacher's logits and significance for the students."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    runner = self.runner()
    if runner.teacher_logits is not None:
      return
    logits, significance = self._teacher_files()
    if not os.path.exists(logits):
      self.cell("teacher", "self_regulated", "exact", runner.config.gating.alpha)
      if runner.teacher_logits is not None:
        return
    runner.teacher_logits, runner.significance = np.load(logits), np.load(significance)


def measure(dataset, seed, args, root):
  """{(stage, arm): cell} of one dataset and seed."""
  runs = SeedRuns(dataset, seed, args, root)
  gating = flagfile_config(dataset).gating
  cells = {}
  for stage, alpha in (("teacher", gating.alpha), ("student", gating.distill_alpha)):
    cells[stage, "conventional"] = runs.cell(stage, "conventional", "exact", math.inf)
    own = cells[stage, "self_regulated"] = runs.cell(stage, "self_regulated", "exact", alpha)
    for policy, refresh in ARMS[2:]:
      target = own["zeta"] if policy in ("selective_backprop", "random") else None
      cells[stage, arm_name(policy, refresh)] = runs.cell(stage, policy, refresh, alpha, target)
  return cells


def matched(cells):
  """None (no target), True when every seed's zeta is within 10 % of its target, else
  the worst relative miss."""
  if cells[0]["target"] is None:
    return None
  worst = max(abs(c["zeta"] / c["target"] - 1.0) for c in cells)
  return True if worst <= MATCH_TOLERANCE else worst


def chance_check(dataset):
  """accuracy -> True when it is not clearly above chance on the dataset's test split
  (`tf_srkd.core.chance`: a model that answers one class scores ~1/classes)."""
  from tf_srkd.core import chance  # pylint: disable=import-outside-toplevel
  from tf_srkd.run import config as config_lib  # pylint: disable=import-outside-toplevel

  spec = config_lib.dataset_spec(flagfile_config(dataset))
  n, classes = spec.test_size, len(spec.class_names)
  if not n or not chance.can_tell(n, classes):
    return lambda accuracy: False
  return lambda accuracy: not chance.clearly_above_chance(accuracy, n, classes)


def summarize(dataset, by_seed, at_chance=lambda accuracy: False):
  """Table rows and plot points of one dataset: {seed: {(stage, arm): cell}}. A cell whose
  accuracy `at_chance` says is chance level is marked in the table, with its seeds."""
  rows, points = [], []
  seeds = sorted(by_seed)
  for stage in ("teacher", "student"):
    for policy, refresh in ARMS:
      arm = arm_name(policy, refresh)
      cells = [by_seed[s][stage, arm] for s in seeds]
      ratios = [by_seed[s][stage, arm]["wall"] / by_seed[s][stage, "conventional"]["wall"]
                for s in seeds]
      match = matched(cells)
      budget = ("—" if match is None else "yes" if match is True
                else f"no ({match:.0%} off)")
      targets = [c["target"] for c in cells if c["target"] is not None]
      accuracy = [c["accuracy"] for c in cells]
      zeta = [c["zeta"] for c in cells]
      setting = ("α=inf" if policy == "conventional" else
                 "; ".join(dict.fromkeys(c["setting"] for c in cells)) or "paper α")
      collapsed = [str(s) for s, c in zip(seeds, cells) if at_chance(c["accuracy"])]
      shown = mean_std(accuracy, "{:.4f}")
      if collapsed:
        shown += f" **AT CHANCE** (seed{'s' if len(collapsed) > 1 else ''} {', '.join(collapsed)})"
      rows.append([stage, arm, setting,
                   mean_std(targets, "{:.3%}") if targets else "—", mean_std(zeta, "{:.3%}"),
                   budget, shown, mean_std(ratios, "{:.3f}")])
      points.append((stage, arm, zeta, accuracy, bool(collapsed)))
  return rows, points


def pareto_figure(dataset, points):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  figure = Figure(figsize=(9, 4), layout="constrained")
  FigureCanvasAgg(figure)
  spread = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
  colors = {arm_name(*arm): f"C{i}" for i, arm in enumerate(ARMS)}  # One per arm, both panels.
  for ax, stage in zip(figure.subplots(1, 2), ("teacher", "student")):
    off_axis = []
    for _, arm, zeta, accuracy, collapsed in [p for p in points if p[0] == stage]:
      if collapsed:  # On the axis, a network at chance would squash the others into a line.
        off_axis.append(f"{arm}: at chance ({statistics.mean(accuracy):.3f} at "
                        f"ζ {statistics.mean(zeta):.3%})")
        continue
      ax.errorbar(statistics.mean(zeta), statistics.mean(accuracy), xerr=spread(zeta),
                  yerr=spread(accuracy), fmt="o", capsize=3, label=arm, color=colors[arm])
    peers.style_pareto_axis(ax, f"{dataset} {stage} (mean ± std over seeds)")
    if off_axis:
      ax.set_xlabel(ax.get_xlabel() + "\nnot shown: " + "; ".join(off_axis), fontsize="small")
  return figure


def main(argv=None):
  args = parse_args(argv)
  machine = common.machine_description()
  seeds = [int(s) for s in args.seeds.split(",") if s]
  with tempfile.TemporaryDirectory() as root:
    if args.no_write and args.cells_dir.startswith(common.REPO_ROOT):
      args.cells_dir = os.path.join(root, "cells")  # A check leaves the repository alone.
    for dataset in args.datasets.split(","):
      by_seed = {s: measure(dataset, s, args, os.path.join(root, dataset, str(s))) for s in seeds}
      rows, points = summarize(dataset, by_seed, chance_check(dataset))
      table = common.markdown_table(
          ["stage", "policy", "setting", "target ζ", "ζ", "matched (±10 %)", "test accuracy",
           "time / conventional"], rows)
      png = os.path.join(root if args.no_write else common.BENCH_DIR,
                         f"peers_protocol_{dataset}.png")
      pareto_figure(dataset, points).savefig(png, dpi=120)
      codes = sorted({c["code"] for cells in by_seed.values() for c in cells.values()})
      loads = [c["load"] for cells in by_seed.values() for c in cells.values()]
      epochs = args.epochs or flagfile_config(dataset).training.epochs
      notes = [
          f"`flags/{dataset}.flags`, {epochs} epochs per stage, seeds {args.seeds}, student "
          f"mode `{args.mode}` from each seed's exact self-regulated teacher; mean ± std over "
          "seeds.",
          "Targets: Selective Backprop β = 1/ζ − 1 and random p = ζ, with ζ the same seed's "
          "self-regulated (exact) budget; InfoBatch at r = 0.9, its lowest practical budget. "
          "Matched: the achieved ζ within 10 % of the target in every seed. AT CHANCE: a "
          "seed's model is not clearly above 1/classes on the test split "
          "(`tf_srkd.core.chance`); its numbers are those of a collapsed network.",
          "Time / conventional: fit wall time against the same seed's α = inf run of the same "
          "stage, measured in the same process unless a run was resumed from --cells_dir.",
          f"Measured at: {'; '.join(codes)}; 1-min load average at the end of each run "
          f"{min(loads):.1f}–{max(loads):.1f}.",
          f"Pareto plot: `{os.path.relpath(png, common.REPO_ROOT)}`.",
      ]
      common.publish(f"peers_protocol_{dataset}" + ("_quick" if args.quick else ""),
                     f"Gate policies at the paper's protocol: {epochs} epochs, "
                     f"{len(seeds)} seeds ({dataset})", machine, notes, table,
                     write=not args.no_write)


if __name__ == "__main__":
  main()

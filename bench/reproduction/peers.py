"""Self-regulation against its peers at matched budgets: InfoBatch, Selective Backprop
and random pruning in the same gate slot, on the same data, seed and code.

For each dataset (MNIST, Fashion-MNIST; CIFAR-10 at `--cifar_epochs`) the script
trains, in this one process and one after the other:

* the **teacher** conventionally (alpha = inf: the time and accuracy baseline),
  with self-regulation (the dataset's paper alpha), then with every other policy
  at 3 settings chosen to bracket self-regulation's measured zeta: random
  p = zeta/2, zeta, 2 zeta; Selective Backprop beta = 1/p - 1 for the same p
  (its expected keep rate for ranks is 1/(beta + 1)); InfoBatch r = 0.3, 0.6, 0.9
  (its budget cannot fall much below 1 - r times the share of below-mean samples,
  so it brackets from above where self-regulation's zeta is small);
* one **distillation mode** (`--mode`, default `regulated`) from the
  self-regulated teacher, the same way: conventional KD as the baseline, the
  student's own self-regulation, then the peers bracketing its zeta.

Table: dataset, stage, policy, setting, zeta, test accuracy, fit wall time,
time / conventional (the same stage's alpha = inf run); the Pareto front (no
other run both cheaper and at least as accurate) is listed per dataset and stage,
and a Pareto plot (accuracy vs zeta, one marker per run) is saved as PNG (and,
with `--mlflow_tracking_uri`, logged to MLflow with the table). The paper trains
200 epochs (1000 on CIFAR-10); `--epochs` is what fits the machine, and the
notes say so.

  python bench/reproduction/peers.py --datasets=mnist,fashion_mnist --epochs=20   # one RESULTS.md section
  python bench/reproduction/peers.py --datasets=cifar10 --cifar_epochs=5          # another one
  python bench/reproduction/peers.py --quick --no_write                           # a check that it runs

Each invocation writes section `peers_<datasets>` and `bench/peers_pareto_<datasets>.png`.
"""

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position

POLICY_ORDER = ("conventional", "self_regulated", "infobatch", "selective_backprop", "random")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--datasets", default="mnist,fashion_mnist,cifar10")
  p.add_argument("--epochs", type=int, default=20, help="MNIST/Fashion-MNIST epochs per "
                 "stage (paper: 200)")
  p.add_argument("--cifar_epochs", type=int, default=10, help="CIFAR-10 epochs (paper: 1000)")
  p.add_argument("--train_examples", type=int, default=0, help="first K examples (0: all)")
  p.add_argument("--mode", default="regulated", choices=["regulated", "hybrid"])
  p.add_argument("--stages", default="teacher,student")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true", help="MNIST, 512 examples, 2 epochs, the "
                 "middle setting of each policy: a check that the script runs")
  p.add_argument("--mlflow_tracking_uri", default=None)
  p.add_argument("--no_write", action="store_true", help="leave bench/RESULTS.md and the "
                 "PNG in bench/ alone (the PNG goes to a temporary directory)")
  args = p.parse_args(argv)
  if args.quick:
    args.datasets, args.epochs, args.train_examples = "mnist", 2, 512
  return args


@dataclasses.dataclass
class Row:
  dataset: str
  stage: str
  policy: str
  setting: str
  zeta: float
  accuracy: float
  wall_s: float
  ratio: float = float("nan")


def base_config(dataset, args):
  """The dataset's paper flagfile as a Config, with this benchmark's epochs and data."""
  from tf_srkd.run import config_flags  # pylint: disable=import-outside-toplevel

  path = os.path.join(common.REPO_ROOT, "tf_srkd", "flags", f"{dataset}.flags")
  with open(path, encoding="utf-8") as f:
    config = config_flags.from_flagfile(f.read())
  epochs = args.cifar_epochs if dataset == "cifar10" else args.epochs
  return config.replace(epochs=epochs, distill_epochs=epochs, seed=args.seed,
                        train_examples=args.train_examples, verbose=0, mlflow=False,
                        skip_idle_epochs=True, backward="auto")


def peer_settings(zeta, quick=False):
  """(policy, label, GateSettings fields) bracketing `zeta`."""
  targets = [min(1.0, t) for t in (zeta / 2, zeta, 2 * zeta)]
  settings = []
  for r in (0.3, 0.6, 0.9):
    settings.append(("infobatch", f"r={r:g}, δ=0.875", dict(infobatch_ratio=r)))
  for t in targets:
    beta = max(1.0 / max(t, 1e-3) - 1.0, 0.05)
    settings.append(("selective_backprop", f"β={beta:.3g}", dict(sb_beta=beta)))
  for t in targets:
    settings.append(("random", f"p={t:.3g}", dict(keep_fraction=t)))
  if quick:
    settings = [s for i, s in enumerate(settings) if i % 3 == 1]
  return settings


class Runner:
  """Trains one stage in-process with a given gate policy and reports (acc, zeta, wall)."""

  def __init__(self, dataset, args, root):
    from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel
    from tf_srkd.run import config as config_lib  # pylint: disable=import-outside-toplevel

    self.args = args
    self.root = root
    self.config = base_config(dataset, args)
    spec = config_lib.dataset_spec(self.config)
    self.train = data.load_split(spec, "train", self.config.data.train_examples)
    self.test = data.load_split(spec, "test")
    self.teacher_logits = None
    self.count = 0

  def run(self, stage, policy, alpha, refresh="exact", **settings):
    """One training run; `stage` is "teacher" or "student"; `refresh`: the
    `--margin_refresh` of self-regulation (the exact gate's teacher is the one the
    students distil from)."""
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    from tf_srkd.core import distillation  # pylint: disable=import-outside-toplevel
    from tf_srkd.core import gates  # pylint: disable=import-outside-toplevel
    from tf_srkd.models import zoo as models  # pylint: disable=import-outside-toplevel
    from tf_srkd.core import modes  # pylint: disable=import-outside-toplevel
    from tf_srkd.core import regulation  # pylint: disable=import-outside-toplevel
    from tf_srkd.run import stages  # pylint: disable=import-outside-toplevel
    from tf_srkd.core import training  # pylint: disable=import-outside-toplevel
    from tf_srkd.run import config as config_lib  # pylint: disable=import-outside-toplevel

    config = self.config.replace(margin_refresh=refresh)
    spec = config_lib.dataset_spec(config)
    n = self.train.size
    keras.utils.set_random_seed(config.seed)
    policy_object = gates.make_policy(policy, n, config.training.epochs, config.seed,
                                      gates.GateSettings(**settings))
    if stage == "teacher":
      network = models.build_model(config.models.teacher_model, spec.image_shape, spec.num_classes)
      model = training.SelfRegulatedModel(network, n, backward=config.gating.backward,
                                          policy=policy_object)
      extras, lr = {}, config.training.teacher_lr
    else:
      network = models.build_model(config.models.student_model, spec.image_shape, spec.num_classes)
      model = distillation.Distiller(
          network, n, modes.get_mode(self.args.mode), temperature=config.training.temperature,
          kd_lambda=config.training.kd_lambda, gate_temperature=config.gating.gate_temperature,
          backward=config.gating.backward, normaliser=config.training.distill_loss_normaliser,
          policy=policy_object)
      extras, lr = {"teacher_logits": self.teacher_logits}, config.training.distill_lr
      if model.weight_by_significance:
        extras["significance"] = self.significance
    stages.compile_model(model, lr, config.training)
    self.count += 1
    _, wall = stages.fit_stage(model, self.train, config.training, config.gating,
                               seed=config.seed, verbose=config.verbose,
                               stage_dir=os.path.join(self.root, f"run{self.count}"),
                               epochs=config.training.epochs, alpha=alpha, extras=extras)
    accuracy = stages.evaluate_accuracy(model.network, self.test, config.training.eval_batch_size)
    zeta = regulation.sample_efficiency(model.participation_counts(), config.training.epochs)
    if (stage == "teacher" and policy == "self_regulated" and math.isfinite(alpha)
        and refresh == "exact"):
      self.teacher_logits = stages.predict_logits(network, self.train.images,
                                                  config.training.eval_batch_size)
      self.significance = regulation.significance(model.participation_counts(),
                                                  self.train.labels).astype(np.float32)
    return accuracy, zeta, wall


def measure(dataset, args, root, log):
  runner = Runner(dataset, args, root)
  config = runner.config
  rows = []
  for stage in args.stages.split(","):
    alpha = config.gating.alpha if stage == "teacher" else config.gating.distill_alpha
    if stage == "student" and runner.teacher_logits is None:
      runner.run("teacher", "self_regulated", config.gating.alpha)  # The teacher to distil from.

    def one(policy, setting, stage_alpha, **settings):
      began = time.time()
      accuracy, zeta, wall = runner.run(stage, policy if policy != "conventional"
                                        else "self_regulated", stage_alpha, **settings)
      row = Row(dataset, stage, policy, setting, zeta, accuracy, wall)
      log(f"{dataset} {stage} {policy} {setting}: zeta {zeta:.2%}, accuracy {accuracy:.4f}, "
          f"fit {wall:.1f} s ({time.time() - began:.0f} s in all)")
      rows.append(row)
      return row

    if stage == "student":
      # Conventional KD (every sample): the regulating mode with alpha = inf.
      base = one("conventional", "KD, every sample", math.inf)
    else:
      base = one("conventional", "α=inf", math.inf)
    own = one("self_regulated", f"α={alpha:g}", alpha)
    for policy, setting, settings in peer_settings(own.zeta, args.quick):
      one(policy, setting, alpha, **settings)
    for row in rows:
      if row.stage == stage:
        row.ratio = row.wall_s / base.wall_s
  return rows


def pareto_front(rows):
  """The runs no other run beats on both zeta (lower) and accuracy (higher or equal)."""
  return [r for r in rows if not any(
      o is not r and o.zeta <= r.zeta and o.accuracy >= r.accuracy
      and (o.zeta < r.zeta or o.accuracy > r.accuracy) for o in rows)]


def pareto_figure(rows):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  panels = sorted({(r.dataset, r.stage) for r in rows})
  figure = Figure(figsize=(4.5 * len(panels), 4), layout="constrained")
  FigureCanvasAgg(figure)
  markers = dict(zip(POLICY_ORDER, "sD^vo"))
  for ax, (dataset, stage) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
    for policy in POLICY_ORDER:
      points = [(r.zeta, r.accuracy) for r in rows
                if (r.dataset, r.stage, r.policy) == (dataset, stage, policy)]
      if points:
        ax.scatter(*zip(*points), marker=markers[policy], label=policy)
    style_pareto_axis(ax, f"{dataset} {stage}")
  return figure


def style_pareto_axis(ax, title):
  """A Pareto panel's axes: ζ on a log scale against test accuracy."""
  ax.set_xscale("log")
  ax.set_xlabel("ζ (fraction of sample-backward passes)")
  ax.set_ylabel("test accuracy")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")


def main(argv=None):
  args = parse_args(argv)
  machine = common.machine_description()
  print(machine)
  rows = []
  with tempfile.TemporaryDirectory() as root:
    for dataset in args.datasets.split(","):
      rows += measure(dataset, args, os.path.join(root, dataset), print)
    table = common.markdown_table(
        ["dataset", "stage", "policy", "setting", "ζ", "test accuracy", "fit wall s",
         "time / conventional"],
        [[r.dataset, r.stage, r.policy, r.setting, f"{r.zeta:.2%}", f"{r.accuracy:.4f}",
          f"{r.wall_s:.1f}", f"{r.ratio:.2f}"] for r in rows])
    fronts = []
    for dataset, stage in sorted({(r.dataset, r.stage) for r in rows}):
      front = sorted(pareto_front([r for r in rows if (r.dataset, r.stage) == (dataset, stage)]),
                     key=lambda r: r.zeta)
      fronts.append(f"{dataset} {stage}: " + "; ".join(
          f"{r.policy} ({r.setting}) ζ {r.zeta:.2%} → {r.accuracy:.4f}" for r in front))
    png_dir = root if args.no_write else common.BENCH_DIR
    png = os.path.join(png_dir, f"peers_pareto_{args.datasets.replace(',', '_')}.png")
    pareto_figure(rows).savefig(png, dpi=120)
    epochs = ", ".join(f"{d}: {args.cifar_epochs if d == 'cifar10' else args.epochs}"
                       for d in args.datasets.split(","))
    notes = [
        f"Epochs per stage: {epochs} (the paper: 200 for MNIST/Fashion-MNIST, 1000 for "
        "CIFAR-10). Fewer epochs favour the conventional run: self-regulation's "
        "participation is highest in the early epochs, where eta = 1 - exp(-alpha n) is small.",
        "Student stage: mode `%s` from the self-regulated teacher; its conventional baseline "
        "is the same mode with alpha = inf (KD on every sample)." % args.mode,
        "Settings bracket self-regulation's measured ζ (random p and Selective Backprop "
        "β = 1/p - 1 at ζ/2, ζ, 2ζ); InfoBatch r = 0.3, 0.6, 0.9 with δ = 0.875 cannot reach "
        "budgets far below 1 - r · (share of below-mean samples).",
        "Pareto front (no run both cheaper and at least as accurate), per dataset and stage — "
        "read it as which policy wins at which budget: " + " | ".join(fronts),
        f"Pareto plot: `{os.path.relpath(png, common.REPO_ROOT)}`.",
    ]
    common.publish("peers_" + args.datasets.replace(",", "_") + ("_quick" if args.quick else ""),
                   f"Gate policies at matched budgets: {args.datasets}", machine, notes, table,
                   write=not args.no_write)
    if args.mlflow_tracking_uri:
      import mlflow  # pylint: disable=import-outside-toplevel

      mlflow.set_tracking_uri(args.mlflow_tracking_uri)
      mlflow.set_experiment("peers")
      with mlflow.start_run(run_name="peers"):
        mlflow.log_text(table, "peers_table.md")
        mlflow.log_artifact(png)


if __name__ == "__main__":
  main()

"""Paper vs tf_srkd: accuracy and zeta of a protocol over several seeds.

For each seed the script trains (or reuses) one self-regulated teacher with the
dataset's paper flagfile, then distills the requested students from it, each
run a separate `python -m tf_srkd.main` process, one at a time. It then prints
and stores (section `fidelity_<dataset>_<label>` of bench/RESULTS.md) the
paper-vs-ours table: accuracy and zeta as mean +- std over the seeds, the
difference to the paper, and whether each self-regulating model reaches the
paper's accuracy at no more than the paper's zeta.

  python bench/fidelity.py --dataset=mnist --seeds=0,1,2
  python bench/fidelity.py --dataset=mnist --seeds=0,1,2 --epochs=50 --label=batchnorm50 \\
      -- --loss_normaliser=batch          # flags after -- go to the student runs

Runs go to `--root` (default runs/fidelity): `<dataset>-e<epochs>-s<seed>/` holds a
seed's teacher (shared by every `--label`), `<dataset>-e<epochs>-s<seed>-<label>/`
its students. Finished stages are reused, so an interrupted protocol resumes
and a new label costs only its students. With `--mlflow` each run is tracked
(experiment `fidelity-<dataset>`) and one more run there, `fidelity-<label>`,
holds the table and the mean/std of every model's accuracy and zeta.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import REPO_ROOT, load_average, machine_description, markdown_table, publish

from tf_srkd import report

_PAPER_KEYS = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10"}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="mnist", choices=sorted(_PAPER_KEYS))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--epochs", type=int, default=0, help="teacher and student epochs; "
                      "0: the flagfile's (paper's)")
  parser.add_argument("--distill_epochs", type=int, default=0, help="student epochs only "
                      "(screening students against a full-length teacher); 0: --epochs")
  parser.add_argument("--modes", default="regulated,hybrid")
  parser.add_argument("--label", default="default", help="names the student settings")
  parser.add_argument("--teacher_flags", default="", help="extra flags of the teacher runs, "
                      "space-separated (they become part of the teacher's directory name)")
  parser.add_argument("--root", default=os.path.join(REPO_ROOT, "runs", "fidelity"))
  parser.add_argument("--mlflow", action="store_true")
  parser.add_argument("--no_write", action="store_true")
  args, student_flags = parser.parse_known_args(argv)
  args.student_flags = [f for f in student_flags if f != "--"]
  return args


def _run(command, log_path):
  """Runs one tf_srkd process, its console going to `log_path`; fails loudly."""
  started = time.time()
  with open(log_path, "a", encoding="utf-8") as log:
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    code = subprocess.call(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
  if code:
    sys.exit(f"fidelity: {' '.join(command)} exited {code}; see {log_path}")
  return time.time() - started


def _main_command(args, seed, output_dir, extra):
  command = [sys.executable, "-m", "tf_srkd.main", f"--flagfile=flags/{args.dataset}.flags",
             f"--seed={seed}", f"--output_dir={output_dir}", "--verbose=2"]
  if args.epochs:
    command.append(f"--epochs={args.epochs}")
  if args.mlflow:
    command += ["--mlflow", f"--mlflow_experiment=fidelity-{args.dataset}"]
  else:
    command.append("--nomlflow")
  return command + list(extra)


def run_seed(args, seed):
  """Teacher and students of one seed; returns {model: metrics dict}."""
  epochs_tag = f"e{args.epochs}" if args.epochs else "paper"
  teacher_extra = args.teacher_flags.split()
  teacher_tag = "".join(f.strip("-").replace("=", "") for f in teacher_extra)
  teacher_dir = os.path.join(args.root, f"{args.dataset}-{epochs_tag}-s{seed}"
                             + (f"-{teacher_tag}" if teacher_tag else ""))
  if not os.path.exists(os.path.join(teacher_dir, "teacher", "metrics.json")):
    print(f"seed {seed}: teacher -> {teacher_dir}", flush=True)
    _run(_main_command(args, seed, teacher_dir, ["--stage=teacher"] + teacher_extra),
         teacher_dir + ".log")
  student_dir = f"{teacher_dir}-{args.label}" + (
      f"-d{args.distill_epochs}" if args.distill_epochs else "")
  print(f"seed {seed}: students {args.modes} -> {student_dir}", flush=True)
  _run(_main_command(args, seed, student_dir,
                     ["--stage=distill", f"--teacher_dir={teacher_dir}", f"--modes={args.modes}"]
                     + ([f"--distill_epochs={args.distill_epochs}"] if args.distill_epochs else [])
                     + args.student_flags), student_dir + ".log")
  with open(os.path.join(teacher_dir, "teacher", "metrics.json"), encoding="utf-8") as f:
    results = {"teacher": json.load(f)}
  for mode in args.modes.split(","):
    with open(os.path.join(student_dir, "students", mode, "metrics.json"), encoding="utf-8") as f:
      results[mode] = json.load(f)
  return results


def _mean_std(values):
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paper_numbers(dataset, model):
  """(accuracy, zeta) the paper reports for `model` ('teacher' or a mode)."""
  paper = report.PAPER_TABLES
  if model == "teacher":
    alphas = paper["table_1_teacher_accuracy_by_alpha"]
    # The teacher the paper distils from uses Table II's alpha.
    alpha = {"mnist": "0.02"}.get(dataset, "0.04")
    return dict(zip(alphas["alpha"], alphas[dataset]))[alpha], None
  accuracy = paper["tables_3_to_5_student_test_accuracy"][dataset].get(model)
  efficiency = paper["table_6_sample_efficiency"][dataset].get(model)
  return accuracy, (efficiency[0] / efficiency[1] if efficiency else None)


def table(dataset, per_seed):
  """The paper-vs-ours Markdown table."""
  rows = []
  for model in per_seed[0]:
    acc, acc_sd = _mean_std([r[model].get("test_accuracy") for r in per_seed])
    zeta, zeta_sd = _mean_std([r[model].get("zeta") for r in per_seed])
    paper_acc, paper_zeta = paper_numbers(dataset, model)
    reached = "—"
    if paper_acc is not None and acc is not None:
      reached = "yes" if acc >= paper_acc and (paper_zeta is None or zeta <= paper_zeta) else "no"
    rows.append([
        model, f"{paper_acc:.4f}" if paper_acc else "—",
        f"{acc:.4f} ± {acc_sd:.4f}", f"{(acc - paper_acc) * 100:+.2f} pt" if paper_acc else "—",
        f"{paper_zeta:.3%}" if paper_zeta else "—",
        f"{zeta:.3%} ± {zeta_sd:.3%}" if zeta is not None else "—",
        f"{(zeta - paper_zeta) * 100:+.3f} pt" if paper_zeta and zeta is not None else "—",
        reached])
  per_run = [[str(i), model, f"{r[model].get('test_accuracy'):.4f}",
              f"{r[model]['zeta']:.3%}" if r[model].get("zeta") is not None else "—"]
             for i, r in enumerate(per_seed) for model in r]
  return (markdown_table(["model", "paper acc", f"ours acc (mean ± std, n={len(per_seed)})",
                          "Δ acc", "paper ζ", "ours ζ (mean ± std)", "Δ ζ",
                          "≥ paper acc at ≤ paper ζ"], rows)
          + "\n\nPer seed (index in --seeds order):\n\n"
          + markdown_table(["seed #", "model", "test acc", "ζ"], per_run))


def log_to_mlflow(dataset, label, per_seed, body, notes):
  """One MLflow run holding the table (artifact) and mean/std per model (metrics).

  Uses MLflow's own tracking-URI resolution ($MLFLOW_TRACKING_URI, else its default).
  """
  import mlflow  # pylint: disable=import-outside-toplevel

  mlflow.set_experiment(f"fidelity-{dataset}")
  with mlflow.start_run(run_name=f"fidelity-{label}"):
    mlflow.set_tags({"role": "fidelity", "dataset": dataset, "label": label,
                     "seeds": len(per_seed)})
    for model in per_seed[0]:
      for key, name in (("test_accuracy", "acc"), ("zeta", "zeta")):
        mean, std = _mean_std([r[model].get(key) for r in per_seed])
        if mean is not None:
          mlflow.log_metrics({f"{model}_{name}_mean": mean, f"{model}_{name}_std": std})
    mlflow.log_text("\n".join(f"- {n}" for n in notes) + "\n\n" + body, "fidelity.md")


def main(argv):
  args = parse_args(argv)
  os.makedirs(args.root, exist_ok=True)
  seeds = [int(s) for s in args.seeds.split(",")]
  load_start = load_average()
  started = time.time()
  per_seed = [run_seed(args, seed) for seed in seeds]
  notes = [
      f"Protocol: `flags/{args.dataset}.flags`"
      + (f" with --epochs={args.epochs}" if args.epochs else " (the paper's epochs)")
      + (f", students --distill_epochs={args.distill_epochs}" if args.distill_epochs else "")
      + f", seeds {args.seeds}; one teacher per seed, students `{args.modes}`"
      + (f" with `{' '.join(args.student_flags)}`" if args.student_flags else "")
      + (f"; teacher flags `{args.teacher_flags}`" if args.teacher_flags else "") + ".",
      "ζ = Σv / (epochs·|D|) (eq. 5); the paper's ζ is Table VI's. Mean ± sample std over seeds.",
      f"Wall time of this invocation {time.time() - started:.0f} s (finished stages are reused); "
      f"1-min load average at start {load_start:.1f}.",
  ]
  body = table(args.dataset, per_seed)
  label = args.label + (f"_d{args.distill_epochs}" if args.distill_epochs else "")
  publish(f"fidelity_{args.dataset}_{label}",
          f"Fidelity: {args.dataset}, {label} ({len(seeds)} seeds)", machine_description(),
          notes, body, write=not args.no_write)
  if args.mlflow:
    log_to_mlflow(args.dataset, label, per_seed, body, notes)


if __name__ == "__main__":
  main(sys.argv[1:])

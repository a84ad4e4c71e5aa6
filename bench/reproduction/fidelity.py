"""Paper vs tf_srkd: accuracy and zeta of a protocol over several seeds.

For each seed the script trains (or reuses) one self-regulated teacher with the
dataset's paper flagfile, then distills the requested students from it, each
run a separate `python -m tf_srkd.main` process, one at a time. It then prints
and stores (section `fidelity_<dataset>_<label>` of bench/RESULTS.md) the
paper-vs-ours table (`tf_srkd.reporting.fidelity`): accuracy and zeta as mean +- std over the seeds, the
difference to the paper, and whether each self-regulating model reaches the
paper's accuracy at no more than the paper's zeta.

  python bench/reproduction/fidelity.py --dataset=mnist --seeds=0,1,2
  python bench/reproduction/fidelity.py --dataset=mnist --seeds=0,1,2 --epochs=50 --label=batchnorm50 \\
      -- --distill_loss_normaliser=batch          # flags after -- go to the student runs

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
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import REPO_ROOT, load_average, machine_description, publish  # pylint: disable=wrong-import-position

from tf_srkd.reporting import fidelity  # pylint: disable=wrong-import-position
from tf_srkd.storage import layout  # pylint: disable=wrong-import-position


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="mnist", choices=sorted(fidelity.TEACHER_ALPHA))
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
  teacher = layout.RunDir(teacher_dir).teacher
  if not teacher.finished:
    print(f"seed {seed}: teacher -> {teacher_dir}", flush=True)
    _run(_main_command(args, seed, teacher_dir, ["--stage=teacher"] + teacher_extra),
         teacher_dir + ".log")
  student_dir = f"{teacher_dir}-{args.label}" + (
      f"-d{args.distill_epochs}" if args.distill_epochs else "")
  students = layout.RunDir(student_dir)
  done = all(students.student(m).finished for m in args.modes.split(","))
  if not done:  # Finished students are read as they are (their run checked its settings).
    print(f"seed {seed}: students {args.modes} -> {student_dir}", flush=True)
    _run(_main_command(args, seed, student_dir,
                       ["--stage=distill", f"--teacher_dir={teacher_dir}",
                        f"--modes={args.modes}"]
                       + ([f"--distill_epochs={args.distill_epochs}"] if args.distill_epochs
                          else [])
                       + args.student_flags), student_dir + ".log")
  significance = np.load(teacher.significance)
  stages = {"teacher": teacher}
  stages.update({mode: students.student(mode) for mode in args.modes.split(",")})
  results = {}
  for model, stage in stages.items():
    with open(stage.metrics, encoding="utf-8") as f:
      results[model] = json.load(f)
    counts = np.load(stage.participation) if os.path.exists(stage.participation) else None
    weighted = model in ("hybrid", "significance")
    results[model].update(fidelity.where_samples_go(
        results[model].get("history"), counts, significance if weighted else None))
  return results


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
  body = fidelity.fidelity_table(args.dataset, per_seed)
  label = args.label + (f"_d{args.distill_epochs}" if args.distill_epochs else "")
  publish(f"fidelity_{args.dataset}_{label}",
          f"Fidelity: {args.dataset}, {label} ({len(seeds)} seeds)", machine_description(),
          notes, body, write=not args.no_write)
  if args.mlflow:
    text = "\n".join(f"- {n}" for n in notes) + "\n\n" + body
    fidelity.log_to_mlflow(os.environ.get("MLFLOW_TRACKING_URI"), args.dataset, label, per_seed,
                           text)


if __name__ == "__main__":
  main(sys.argv[1:])

"""Students trained on significance-ranked subsets: how small a subset still suffices?

  python -m tf_srkd.cli.subset --teacher_dir=runs/mnist-... --fractions=0.01,0.05,0.1,0.5,1

For each fraction f and each ranking (`top`: the most significant f of every
class, `random`, `bottom`: the least significant; rules and tie-breaking in
`tf_srkd.data.subsets`), a student is trained on that subset with conventional KD
from the run's teacher (`kd`) and with plain supervised training (`supervised`,
cross-entropy only), and tested on the whole test split. Everything else (data,
student architecture, batch size, learning rate, tau, lambda, seed) comes from
the teacher run's `flags.txt`. By default every student trains the run's
distillation epochs (`--schedule=epochs`: a smaller subset costs less);
`--schedule=steps` scales the epochs by 1/f so every student takes as many steps
as a full-data one.

Writes under `--output_dir` (default `<teacher run>/subsets/`): `ids/<ranking>-f<f>.npy`
(sorted int32 sample ids, the i-th example of the TFDS train split), one stage
directory per student (`<method>-<ranking>-f<f>/`, reused when finished),
`summary.json` (every result), `table.md` and `curve.png` (accuracy vs f, one line
per ranking, one panel per method); with MLflow on, one parent run with a child
run per student and these files as artifacts. At f = 1 the three rankings are the
same set: one student per method is trained and reported under all three.

Splits above the run's `--max_in_memory_mb` stay on disk (`tf_srkd.data.streaming`),
as in the run itself: a subset reads only its own rows, and a subset that is
itself above the limit is read by id while its students train.
"""

import os
import time

from absl import flags

from tf_srkd.cli import environment as cli
from tf_srkd.run import config as config_lib
from tf_srkd.run import config_flags
from tf_srkd.storage import layout
from tf_srkd.data import subsets
from tf_srkd.run.subset_study import METHODS
from tf_srkd.run.subset_study import Plan
from tf_srkd.run.subset_study import run

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
  """The tool's flags (defined only when run as a program)."""
  flags.DEFINE_string("teacher_dir", None, "The run (or its teacher/ directory) whose teacher "
                      "and significance rank the samples; its flags.txt sets everything else.",
                      flag_values=flag_values)
  flags.DEFINE_list("fractions", ["0.01", "0.02", "0.05", "0.1", "0.25", "0.5", "1.0"],
                    "Subset fractions f in (0, 1].", flag_values=flag_values)
  flags.DEFINE_list("rankings", list(subsets.RANKINGS), "Subsets per fraction.",
                    flag_values=flag_values)
  flags.DEFINE_list("methods", list(METHODS), "kd: conventional KD from the teacher; "
                    "supervised: cross-entropy only.", flag_values=flag_values)
  flags.DEFINE_integer("epochs", None, "Epochs per student at f = 1 (default: the run's "
                       "distillation epochs).", flag_values=flag_values)
  flags.DEFINE_enum("schedule", "epochs", ["epochs", "steps"], "epochs: every student trains "
                    "--epochs epochs; steps: --epochs / f epochs (as many steps as at f = 1).",
                    flag_values=flag_values)
  flags.DEFINE_string("output_dir", None, "Default: <teacher run>/subsets.",
                      flag_values=flag_values)
  flags.DEFINE_integer("seed", None, "Seed of the tie hash, the random subsets and training "
                       "(default: the run's).", flag_values=flag_values)
  flags.DEFINE_bool("mlflow", True, "Track in MLflow.", flag_values=flag_values)
  flags.DEFINE_string("mlflow_tracking_uri", None, "MLflow tracking URI.", flag_values=flag_values)
  flags.DEFINE_string("mlflow_experiment", None, "Default: <dataset>_subsets.",
                      flag_values=flag_values)
  flags.DEFINE_integer("verbose", 0, "Keras fit verbosity.", flag_values=flag_values)


def plan_from_flags(values) -> Plan:
  """The checked plan for parsed flags.

  Raises:
    config_lib.ConfigError: one line naming the bad flag or file.
  """
  def require(ok, message):
    if not ok:
      raise config_lib.ConfigError(message)

  require(values.teacher_dir, "--teacher_dir: required (a run directory with flags.txt)")
  run = layout.RunDir(values.teacher_dir)
  if not os.path.exists(run.flags) and os.path.basename(values.teacher_dir.rstrip("/")) == "teacher":
    run = layout.RunDir(os.path.dirname(values.teacher_dir.rstrip("/")))
  require(os.path.isfile(run.flags), f"--teacher_dir={values.teacher_dir}: expected the run's "
          f"flags.txt at {run.flags}")
  try:
    fractions = tuple(float(f) for f in values.fractions)
  except ValueError as e:
    raise config_lib.ConfigError(f"--fractions={','.join(values.fractions)}: expected numbers "
                                 "in (0, 1]") from e
  require(fractions and all(0 < f <= 1 for f in fractions),
          f"--fractions={','.join(values.fractions)}: expected numbers in (0, 1]")
  for flag, given, known in (("rankings", values.rankings, subsets.RANKINGS),
                             ("methods", values.methods, METHODS)):
    require(given and set(given) <= set(known),
            f"--{flag}={','.join(given)}: expected a comma list of {', '.join(known)}")
  require(values.epochs is None or values.epochs > 0, f"--epochs={values.epochs}: expected > 0")
  base = config_flags.read_flagfile(run.flags)
  config = base.replace(teacher_dir=values.teacher_dir, stage="distill", modes=("conventional",),
      output_dir=values.output_dir or os.path.join(run.path, "subsets"),
      distill_epochs=values.epochs or base.training.resolved_distill_epochs,
      seed=base.seed if values.seed is None else values.seed, mlflow=values.mlflow,
      mlflow_tracking_uri=values.mlflow_tracking_uri, verbose=values.verbose,
      mlflow_experiment=values.mlflow_experiment or f"{base.data.dataset}_subsets", export=())
  config_lib.validate(config)
  return Plan(config, fractions, tuple(values.rankings), tuple(values.methods), values.schedule)


def main(argv):
  del argv
  try:
    plan = plan_from_flags(FLAGS)
  except config_lib.ConfigError as e:
    cli.fail(e)
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel
  from tf_srkd.tracking import base as tracking  # pylint: disable=import-outside-toplevel

  tracker = tracking.NullTracker()
  if plan.config.tracking.mlflow:
    from tf_srkd.tracking import mlflow_tracking  # pylint: disable=import-outside-toplevel
    try:
      tracker = mlflow_tracking.connect(plan.config)
    except mlflow_tracking.TrackingError as e:
      cli.fail(e)
  began = time.time()
  try:
    run(plan, tracker)
  except (config_lib.ConfigError, data.DataError) as e:
    cli.fail(e)
  print(f"wall time {time.time() - began:.1f} s; outputs in {plan.config.output_dir}")


def run_main():
  """The `tf-srkd-subset` console script (`python -m tf_srkd.cli.subset`)."""
  cli.run_program(main, define_flags)


if __name__ == "__main__":
  run_main()

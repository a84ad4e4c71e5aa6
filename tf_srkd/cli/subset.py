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

import dataclasses
import math
import os
import time

from absl import flags

from tf_srkd.cli import environment as cli
from tf_srkd.run import config as config_lib
from tf_srkd.run import config_flags
from tf_srkd.storage import layout
from tf_srkd.data import subsets

METHODS = ("kd", "supervised")
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


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the tool will do, checked before anything is written."""

  config: config_lib.Config
  fractions: tuple
  rankings: tuple
  methods: tuple
  schedule: str

  def epochs_at(self, fraction) -> int:
    epochs = self.config.resolved_distill_epochs
    return epochs if self.schedule == "epochs" else math.ceil(epochs / fraction)


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
  config = dataclasses.replace(
      base, teacher_dir=values.teacher_dir, stage="distill", modes=("conventional",),
      output_dir=values.output_dir or os.path.join(run.path, "subsets"),
      distill_epochs=values.epochs or base.resolved_distill_epochs,
      seed=base.seed if values.seed is None else values.seed, mlflow=values.mlflow,
      mlflow_tracking_uri=values.mlflow_tracking_uri, verbose=values.verbose,
      mlflow_experiment=values.mlflow_experiment or f"{base.dataset}_subsets", export=())
  config_lib.validate(config)
  return Plan(config, fractions, tuple(values.rankings), tuple(values.methods), values.schedule)


def settings_record(plan: Plan) -> dict:
  """What decides the students' results (a rerun with other values is refused)."""
  return dict(config_lib.identity(plan.config), schedule=plan.schedule)


def _check_output_dir(plan: Plan):
  path = os.path.join(plan.config.output_dir, "settings.json")
  if os.path.exists(path):
    from tf_srkd.storage import checked_reads  # pylint: disable=import-outside-toplevel

    if checked_reads.read_json(path) != settings_record(plan):
      raise config_lib.ConfigError(f"--output_dir={plan.config.output_dir}: holds subsets made "
                                   "with other settings; use a new --output_dir")


def markdown_table(rows, fractions, rankings) -> str:
  """One line per (method, ranking), one column per fraction: test accuracy."""
  header = ["method", "subset"] + [f"f={f:g}" for f in fractions]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  cell = {(r["method"], r["ranking"], r["fraction"]): r["test_accuracy"] for r in rows}
  for method in sorted({r["method"] for r in rows}, key=METHODS.index):
    for ranking in rankings:
      values = [cell.get((method, ranking, f)) for f in fractions]
      lines.append(f"| {method} | {ranking} | " + " | ".join(
          "—" if v is None else f"{v:.4f}" for v in values) + " |")
  return "\n".join(lines) + "\n"


def curve_figure(rows, title):
  """Accuracy vs f (log axis), one line per ranking, one panel per method."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
  figure = Figure(figsize=(5 * len(methods), 4), layout="constrained")
  FigureCanvasAgg(figure)
  for ax, method in zip(figure.subplots(1, len(methods), squeeze=False)[0], methods):
    for ranking, marker in zip(subsets.RANKINGS, "o^v"):
      points = sorted((r["fraction"], r["test_accuracy"]) for r in rows
                      if r["method"] == method and r["ranking"] == ranking)
      if points:
        ax.plot(*zip(*points), marker=marker, label=ranking)
    ax.set_xscale("log")
    ax.set_xlabel("subset fraction f (per class)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{title}: {method}")
    ax.grid(alpha=0.3)
    ax.legend()
  return figure


def run(plan: Plan, tracker=None) -> list:
  """Trains every student of the plan (reusing finished ones); returns the result rows."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from tf_srkd.run import stages  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import streaming  # pylint: disable=import-outside-toplevel

  config = plan.config
  spec = config_lib.dataset_spec(config)
  strategy = tf.distribute.get_strategy()
  # In memory, or on disk above --max_in_memory_mb, as in `pipeline.run`.
  train = streaming.load(spec, "train", config.train_examples, config.download,
                         config.max_in_memory_mb)
  test = streaming.load(spec, "test", 0, config.download, config.max_in_memory_mb)
  teacher = stages.load_stage(layout.teacher_stage(config.teacher_dir), strategy, spec, train.size)
  _check_output_dir(plan)
  out = config.output_dir
  from tf_srkd.storage import run_lock  # pylint: disable=import-outside-toplevel

  lock = run_lock.RunDirLock(out)
  try:
    lock.acquire()
  except run_lock.RunDirBusy as e:
    raise config_lib.ConfigError(str(e)) from e
  try:
    return _run_locked(plan, tracker, config, spec, strategy, train, test, teacher, out)
  finally:
    lock.release()


def _run_locked(plan, tracker, config, spec, strategy, train, test, teacher, out):
  """`run` once the output directory is this process' alone."""
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel
  from tf_srkd.storage import io_utils  # pylint: disable=import-outside-toplevel
  from tf_srkd.run import stages  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import streaming  # pylint: disable=import-outside-toplevel
  from tf_srkd.tracking import base as tracking  # pylint: disable=import-outside-toplevel

  os.makedirs(os.path.join(out, "ids"), exist_ok=True)
  io_utils.write_json(os.path.join(out, "settings.json"), settings_record(plan))
  if data.is_stored(train.images):  # On disk too, as in `pipeline.distill_students`.
    logits = streaming.predict_to_disk(teacher.network, train.images, config.eval_batch_size,
                                       "teacher_logits")
  else:
    logits = stages.predict_logits(teacher.network, train.images, config.eval_batch_size)
  tracker = tracker or tracking.NullTracker()
  rows = []
  with tracker.run(config, config_flags.to_flagfile(config),
                   num_train_examples=config_lib.num_train_examples(config)):
    for fraction in plan.fractions:
      lists = {r: subsets.select(teacher.significance, train.labels, fraction, r, config.seed)
               for r in plan.rankings}
      for ranking, ids in lists.items():
        io_utils.save_npy(os.path.join(out, "ids", f"{ranking}-f{fraction:g}.npy"), ids)
      everything = all(len(ids) == train.size for ids in lists.values())
      for ranking, ids in (("all", next(iter(lists.values()))),) if everything else lists.items():
        for method in plan.methods:
          result = _train_student(plan, method, ranking, fraction, ids, train, test, logits,
                                  strategy, tracker)
          for name in (plan.rankings if everything else (ranking,)):
            rows.append(dict(method=method, ranking=name, fraction=fraction, size=int(len(ids)),
                             epochs=plan.epochs_at(fraction),
                             test_accuracy=result["test_accuracy"],
                             wall_time_s=result.get("wall_time_s")))
    _write_outputs(plan, rows, tracker)
  return rows


def subset_split(train, ids, max_in_memory_mb: float):
  """The transfer set of a subset's students: the rows `ids` of `train`.

  Its images are `streaming.take`'s: from a split on disk, only these rows are
  read, and they stay on disk when they exceed `max_in_memory_mb`.
  """
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import streaming  # pylint: disable=import-outside-toplevel

  return data.SplitArrays(streaming.take(train.images, ids, max_in_memory_mb), train.labels[ids])


def _train_student(plan, method, ranking, fraction, ids, train, test, logits, strategy, tracker):
  from tf_srkd.core import distillation  # pylint: disable=import-outside-toplevel
  from tf_srkd.models import zoo as models  # pylint: disable=import-outside-toplevel
  from tf_srkd.core import modes  # pylint: disable=import-outside-toplevel
  from tf_srkd.run import stages  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import streaming  # pylint: disable=import-outside-toplevel
  from tf_srkd.core import training  # pylint: disable=import-outside-toplevel

  config = plan.config
  spec = config_lib.dataset_spec(config)
  subset = subset_split(train, ids, config.max_in_memory_mb)

  def build():
    network = models.build_model(config.student_model, spec.image_shape, spec.num_classes)
    if method == "supervised":
      return training.SelfRegulatedModel(network, subset.size, regulate=False, name="supervised")
    return distillation.Distiller(
        network, subset.size, modes.get_mode("conventional"), temperature=config.temperature,
        kd_lambda=config.kd_lambda, scale_temperature_squared=config.kd_scale_temperature_squared,
        normaliser=config.distill_loss_normaliser, name="kd")

  name = f"{method}-{ranking}-f{fraction:g}"
  stage = stages.StageSpec(name=name, role="student", model_name=config.student_model,
                           stage_dir=layout.StageDir(os.path.join(config.output_dir, name)),
                           epochs=plan.epochs_at(fraction), alpha=float("inf"),
                           learning_rate=config.distill_lr, mode=method)

  def extras():  # Read only when the stage trains (a finished one is reused).
    if method != "kd":
      return {}
    return {"teacher_logits": streaming.take(logits, ids, config.max_in_memory_mb)}

  return stages.run_stage(stage, config, strategy, subset, test, tracker, build, extras).metrics


def _write_outputs(plan, rows, tracker):
  from tf_srkd.storage import io_utils  # pylint: disable=import-outside-toplevel

  out = plan.config.output_dir
  run_dir = layout.RunDir(out)
  io_utils.write_json(run_dir.summary, {"dataset": plan.config.dataset, "rows": rows})
  table = markdown_table(rows, plan.fractions, plan.rankings)
  io_utils.write_text(os.path.join(out, "table.md"), table)
  figure = curve_figure(rows, plan.config.dataset)
  figure.savefig(os.path.join(out, "curve.png"), dpi=120)
  print(table)
  run_id = getattr(tracker, "parent_run_id", None)
  if run_id:
    for name in ("table.md", "curve.png"):
      tracker.guard(f"log {name}", tracker.client.log_artifact, run_id, os.path.join(out, name))
    tracker.guard("log ids", tracker.client.log_artifacts, run_id, os.path.join(out, "ids"), "ids")


def main(argv):
  del argv
  try:
    plan = plan_from_flags(FLAGS)
  except config_lib.ConfigError as e:
    cli.fail(e)
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel
  from tf_srkd.tracking import base as tracking  # pylint: disable=import-outside-toplevel

  tracker = tracking.NullTracker()
  if plan.config.mlflow:
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

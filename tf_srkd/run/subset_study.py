"""Students trained on significance-ranked subsets: the study a `Plan` describes.

For each fraction f and ranking (`tf_srkd.data.subsets`), a student is trained on that
subset with conventional KD from the run's teacher (`kd`) and with plain supervised
training (`supervised`), tested on the whole test split; the results go to
`summary.json`, `table.md` and `curve.png` under the plan's output directory (and to
the tracker it is handed). The command line that builds a `Plan` from flags is
`tf_srkd.cli.subset`.
"""

import dataclasses
import math
import os

from tf_srkd.data import subsets
from tf_srkd.run import config as config_lib
from tf_srkd.run import config_flags
from tf_srkd.storage import layout

METHODS = ("kd", "supervised")


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the tool will do, checked before anything is written."""

  config: config_lib.Config
  fractions: tuple
  rankings: tuple
  methods: tuple
  schedule: str

  def epochs_at(self, fraction) -> int:
    epochs = self.config.training.resolved_distill_epochs
    return epochs if self.schedule == "epochs" else math.ceil(epochs / fraction)


def settings_record(plan: Plan) -> dict:
  """What decides the students' results (a rerun with other values is refused)."""
  return dict(config_lib.identity(plan.config), schedule=plan.schedule)


def check_output_dir(plan: Plan):
  """Refuses an output directory that holds subsets made with other settings."""
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
  train = streaming.load(spec, "train", config.data.train_examples, config.data.download,
                         config.data.max_in_memory_mb)
  test = streaming.load(spec, "test", 0, config.data.download, config.data.max_in_memory_mb)
  teacher = stages.load_stage(layout.teacher_stage(config.models.teacher_dir), strategy, spec,
                              train.size)
  check_output_dir(plan)
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
    logits = streaming.predict_to_disk(teacher.network, train.images,
                                       config.training.eval_batch_size,
                                       "teacher_logits")
  else:
    logits = stages.predict_logits(teacher.network, train.images, config.training.eval_batch_size)
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
                                  strategy, tracker, teacher.network)
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


def _train_student(plan, method, ranking, fraction, ids, train, test, logits, strategy, tracker,
                   teacher_network):
  from tf_srkd.core import distill_terms  # pylint: disable=import-outside-toplevel
  from tf_srkd.core import distillation  # pylint: disable=import-outside-toplevel
  from tf_srkd.models import zoo as models  # pylint: disable=import-outside-toplevel
  from tf_srkd.core import modes  # pylint: disable=import-outside-toplevel
  from tf_srkd.run import stages  # pylint: disable=import-outside-toplevel
  from tf_srkd.data import streaming  # pylint: disable=import-outside-toplevel
  from tf_srkd.core import training  # pylint: disable=import-outside-toplevel

  config = plan.config
  spec = config_lib.dataset_spec(config)
  subset = subset_split(train, ids, config.data.max_in_memory_mb)
  # The run's --distillation_loss terms; those on the teacher's layers need it live.
  losses, weights = distill_terms.from_flags(config.training.distillation_loss,
                                             config.training.distillation_loss_weights)
  live = losses is not None and any(
      t.teacher_layer for t in distill_terms.terms_of(losses, weights))

  def build():
    network = models.build_model(config.models.student_model, spec.image_shape, spec.num_classes)
    if method == "supervised":
      return training.SelfRegulatedModel(network, subset.size, regulate=False, name="supervised")
    return distillation.Distiller(
        network, subset.size, modes.get_mode("conventional"),
        temperature=config.training.temperature, kd_lambda=config.training.kd_lambda,
        scale_temperature_squared=config.training.kd_scale_temperature_squared,
        normaliser=config.training.distill_loss_normaliser,
        teacher=teacher_network if live else None,
        distillation_losses=losses, distillation_loss_weights=weights, name="kd")

  name = f"{method}-{ranking}-f{fraction:g}"
  stage = stages.StageSpec(name=name, role="student", model_name=config.models.student_model,
                           stage_dir=layout.StageDir(os.path.join(config.output_dir, name)),
                           epochs=plan.epochs_at(fraction), alpha=float("inf"),
                           learning_rate=config.training.distill_lr, mode=method)

  def extras():  # Read only when the stage trains (a finished one is reused).
    if method != "kd" or live:
      return {}
    return {"teacher_logits": streaming.take(logits, ids, config.data.max_in_memory_mb)}

  return stages.run_stage(stage, config, strategy, subset, test, tracker, build, extras).metrics


def _write_outputs(plan, rows, tracker):
  from tf_srkd.storage import io_utils  # pylint: disable=import-outside-toplevel

  out = plan.config.output_dir
  run_dir = layout.RunDir(out)
  io_utils.write_json(run_dir.summary, {"dataset": plan.config.data.dataset, "rows": rows})
  table = markdown_table(rows, plan.fractions, plan.rankings)
  io_utils.write_text(os.path.join(out, "table.md"), table)
  figure = curve_figure(rows, plan.config.data.dataset)
  figure.savefig(os.path.join(out, "curve.png"), dpi=120)
  print(table)
  for name in ("table.md", "curve.png"):
    tracker.log_parent_artifact(os.path.join(out, name))
  tracker.log_parent_artifact(os.path.join(out, "ids"), "ids")

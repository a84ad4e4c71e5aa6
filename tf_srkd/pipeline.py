"""The stages in order: data -> teacher -> significance -> students -> summary.

`run(config, strategy)` is the whole job. Output-directory contract (under
`config.output_dir`):

  flags.txt, run_config.json          resolved flags / the result-determining subset
  teacher/model.keras                 the trained teacher network (logits)
  teacher/participation.npy           int32 [N]
  teacher/significance.npy            float32 [N]
  teacher/metrics.json                written last: its presence marks the stage done
  students/<mode>/model.keras, participation.npy (self-regulating modes), metrics.json
  summary.json

Every file is written atomically. A stage whose metrics.json exists is reused,
not redone; an interrupted stage resumes from `<stage>/backup`.
"""

import dataclasses
import logging
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from tf_srkd import config as config_lib
from tf_srkd import data
from tf_srkd import distillation
from tf_srkd import io_utils
from tf_srkd import layout
from tf_srkd import models
from tf_srkd import modes as modes_lib
from tf_srkd import regulation
from tf_srkd import resume
from tf_srkd import tracking
from tf_srkd import training


@dataclasses.dataclass
class StageResult:
  """What a finished stage hands to the next one and to the summary."""

  network: keras.Model
  metrics: dict
  participation: np.ndarray = None
  significance: np.ndarray = None


# -- output directory -----------------------------------------------------------


def prepare_output_dir(config: config_lib.Config, is_chief: bool = True):
  """Checks that `output_dir` is new or was written by the same settings.

  A restart with the same result-determining settings resumes. Different
  settings are refused unless `overwrite` is set, in which case the old
  directory is moved aside (renamed), never deleted.

  Raises:
    config_lib.ConfigError: on a settings mismatch without `overwrite`.
  """
  out = config.output_dir
  marker = os.path.join(out, "run_config.json")
  if os.path.exists(marker):
    previous = io_utils.read_json(marker)
    current = config_lib.identity(config)
    if previous != current:
      changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
      if not config.overwrite:
        raise config_lib.ConfigError(
            f"--output_dir={out}: holds a run made with different settings ({', '.join(changed)}); "
            "use a new --output_dir, or pass --overwrite to move the old one aside")
      if is_chief:
        aside = f"{out.rstrip(os.sep)}.old-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
        os.replace(out, aside)
        logging.warning("moved the previous run in %s to %s", out, aside)
  if is_chief:
    io_utils.write_text(os.path.join(out, "flags.txt"), config_lib.to_flagfile(config))
    io_utils.write_json(marker, config_lib.identity(config))


# -- shared stage machinery -------------------------------------------------------


class EpochHistory(keras.callbacks.Callback):
  """Keeps every epoch's logs in `<stage>/history.json`, surviving resumes."""

  def __init__(self, path, is_chief):
    super().__init__()
    self.path = path
    self.is_chief = is_chief
    self.epochs = {}
    if os.path.exists(path):
      self.epochs = {int(e["epoch"]): e for e in io_utils.read_json(path)}

  def trim(self, start_epoch):
    self.epochs = {e: v for e, v in self.epochs.items() if e < start_epoch}

  def on_epoch_end(self, epoch, logs=None):
    entry = {"epoch": epoch}
    entry.update({k: float(v) for k, v in (logs or {}).items()})
    self.epochs[epoch] = entry
    if self.is_chief:
      io_utils.write_json(self.path, self.as_list())

  def as_list(self):
    return [self.epochs[e] for e in sorted(self.epochs)]


def compile_model(model, learning_rate, config):
  model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=config.jit_compile)
  model.optimizer.build(model.network.trainable_variables)


def fit_stage(model, split, config, *, stage_dir, epochs, alpha, extras=None, callbacks=(),
              is_chief=True):
  """Trains `model` for `epochs`, resuming from `<stage_dir>/backup` if present.

  With `config.skip_idle_epochs`, epochs in which provably no sample takes part
  (see `training.IdleEpochSkipper`) are not run: they are logged with
  participation 0 and `skipped_epoch` 1, and training resumes at the first
  epoch with a participant. The result is bit-identical to running them.

  Returns:
    (history list of per-epoch dicts, wall time in seconds of this process' share).
  """
  checkpoint = resume.StageCheckpoint(os.path.join(stage_dir, "backup"), model, is_chief)
  start = checkpoint.restore()
  history = EpochHistory(os.path.join(stage_dir, "history.json"), is_chief)
  history.trim(start)
  previous = history.epochs.get(start - 1, {}).get("participation_fraction")
  if start:
    logging.info("%s: resuming at epoch %d of %d", stage_dir, start, epochs)
  augment_fn = None
  if config.augment:
    augment_fn = data.random_shift_augment(2, flip=config.dataset_spec.image_shape[-1] == 3,
                                           seed=config.seed)
  schedule = training.RegulationSchedule(alpha, split.size, start, previous)
  skipper = None
  if config.skip_idle_epochs and model.regulate and model.backward != "masked":
    skipper = training.IdleEpochSkipper(split.labels, alpha, epochs)
  began = time.time()
  epoch = start
  while epoch < epochs:
    dataset = data.train_dataset(split, config.batch_size, config.seed, epoch, epochs, extras,
                                 augment_fn)
    model.fit(dataset, epochs=epochs, initial_epoch=epoch,
              steps_per_epoch=data.steps_per_epoch(split.size, config.batch_size),
              callbacks=[schedule, *([skipper] if skipper else []), history,
                         resume.CheckpointCallback(checkpoint), *callbacks],
              verbose=config.verbose)
    if skipper is None or skipper.idle_from is None:
      break
    epoch = _log_idle_epochs(model, skipper, split, alpha, epochs, [history, *callbacks])
    schedule.previous_fraction = 0.0
    checkpoint.save(epoch)
  return history.as_list(), time.time() - began


def _log_idle_epochs(model, skipper, split, alpha, epochs, callbacks):
  """Logs the idle epochs from `skipper.idle_from`; returns the first busy epoch."""
  margins, predictions = skipper.cache
  counts = model.participation_counts()
  accuracy = float(np.mean(predictions == split.labels))
  epoch = skipper.idle_from
  while epoch < epochs and not skipper.next_participants(margins, predictions, epoch).any():
    eta = regulation.threshold(alpha, epoch)
    logs = {name: 0.0 for name in ("loss",) + model.loss_part_names()}
    logs.update(accuracy=accuracy, participation_fraction=0.0, eta=eta, compact_backward=1.0,
                gate_from_cache=1.0,
                zeta=regulation.sample_efficiency(counts, epoch + 1), skipped_epoch=1.0)
    for callback in callbacks:
      callback.on_epoch_end(epoch, logs)
    epoch += 1
  logging.info("skipped idle epochs %d-%d: no sample could take part", skipper.idle_from,
               epoch - 1)
  return epoch


def evaluate_accuracy(network, split: data.SplitArrays, batch_size: int) -> float:
  """Top-1 accuracy of `network` (logits) on a split, at temperature 1."""
  logits = predict_logits(network, split.images, batch_size)
  return float(np.mean(np.argmax(logits, axis=-1) == split.labels))


def predict_logits(network, images, batch_size):
  """Inference-mode logits for raw uint8 images, in order."""
  return np.asarray(network.predict(data.image_batches(images, batch_size), verbose=0),
                    dtype=np.float32)


def _finish_stage(stage_dir, network, metrics, arrays, is_chief):
  """Writes a stage's files; metrics.json goes last and marks completion."""
  if not is_chief:
    return
  for name, array in arrays.items():
    io_utils.save_npy(os.path.join(stage_dir, name), array)
  io_utils.save_keras(os.path.join(stage_dir, "model.keras"), network)
  io_utils.write_json(os.path.join(stage_dir, "metrics.json"), metrics)
  shutil.rmtree(os.path.join(stage_dir, "backup"), ignore_errors=True)


def _load_network(path, strategy):
  with strategy.scope():
    return keras.models.load_model(path, compile=False)


# -- teacher ---------------------------------------------------------------------


def train_teacher(config, strategy, train, test, tracker, is_chief=True) -> StageResult:
  """Algorithm 1 (self-regulated teacher) then Algorithm 2 (significance)."""
  stage_dir = os.path.join(config.output_dir, "teacher")
  spec = config.dataset_spec
  if os.path.exists(os.path.join(stage_dir, "metrics.json")):
    logging.info("teacher: finished earlier, reusing %s", stage_dir)
    teacher = _load_teacher(stage_dir, strategy)
    with tracker.stage("teacher", role="teacher", model_name=config.teacher_model,
                       alpha=config.alpha) as stage:
      _log_finished_stage(stage, teacher.metrics, teacher.network, teacher.participation)
      stage.log_significance(teacher.significance, train.labels, spec.class_names)
    return teacher
  keras.utils.set_random_seed(config.seed)
  with strategy.scope():
    network = models.build_model(config.teacher_model, spec.image_shape, spec.num_classes)
    model = training.SelfRegulatedModel(network, train.size, regulate=True,
                                        backward=config.backward, name="teacher")
    compile_model(model, config.teacher_lr, config)
  with tracker.stage("teacher", role="teacher", model_name=config.teacher_model,
                     alpha=config.alpha) as stage:
    history, wall = fit_stage(model, train, config, stage_dir=stage_dir, epochs=config.epochs,
                              alpha=config.alpha, callbacks=stage.callbacks(), is_chief=is_chief)
    counts = model.participation_counts()
    significance = regulation.significance(counts, train.labels, spec.num_classes)
    metrics = {
        "test_accuracy": evaluate_accuracy(network, test, config.eval_batch_size),
        "zeta": regulation.sample_efficiency(counts, config.epochs),
        "participations": int(counts.sum()),
        "params": int(network.count_params()),
        "model": config.teacher_model,
        "alpha": config.alpha if np.isfinite(config.alpha) else "inf",
        "epochs": config.epochs,
        "train_examples": train.size,
        "wall_time_s": wall,
        "history": history,
    }
    _finish_stage(stage_dir, network, metrics,
                  {"participation.npy": counts.astype(np.int32),
                   "significance.npy": significance.astype(np.float32)}, is_chief)
    _log_finished_stage(stage, metrics, network, counts)
    stage.log_significance(significance, train.labels, spec.class_names)
  return StageResult(network, metrics, counts, significance)


def _load_teacher(teacher_dir, strategy) -> StageResult:
  stage = layout.teacher_stage(teacher_dir)
  model_path, significance_path, base = stage.model, stage.significance, stage.path
  metrics_path = os.path.join(base, "metrics.json")
  metrics = io_utils.read_json(metrics_path) if os.path.exists(metrics_path) else {}
  participation_path = os.path.join(base, "participation.npy")
  participation = np.load(participation_path) if os.path.exists(participation_path) else None
  network = _load_network(model_path, strategy)
  if "params" not in metrics:
    metrics["params"] = int(network.count_params())
  return StageResult(network, metrics, participation, np.load(significance_path))


def _log_finished_stage(stage, metrics, network, participation=None):
  """Final metrics, the whole per-epoch history, participation and the model."""
  stage.log_metrics(_final_metrics(metrics))
  stage.log_history(metrics.get("history"))
  if participation is not None:
    stage.log_participation(participation, metrics.get("history"))
  stage.log_model(network)


def _final_metrics(metrics):
  keys = ("test_accuracy", "zeta", "params", "wall_time_s", "participations")
  return {k: float(metrics[k]) for k in keys if metrics.get(k) is not None}


# -- students --------------------------------------------------------------------


def distill_students(config, strategy, train, test, teacher: StageResult, tracker,
                     is_chief=True) -> dict:
  """Algorithm 3 in every requested mode; returns mode -> metrics."""
  spec = config.dataset_spec
  results = {}
  teacher_logits = None
  for mode_name in config.modes:
    mode = modes_lib.get_mode(mode_name)
    stage_dir = os.path.join(config.output_dir, "students", mode_name)
    alpha = config.distill_alpha if mode.regulate else float("inf")
    if os.path.exists(os.path.join(stage_dir, "metrics.json")):
      logging.info("student %s: finished earlier, reusing %s", mode_name, stage_dir)
      results[mode_name] = io_utils.read_json(os.path.join(stage_dir, "metrics.json"))
      with tracker.stage(f"student-{mode_name}", role="student", model_name=config.student_model,
                         mode=mode_name, alpha=alpha) as stage:
        participation_path = os.path.join(stage_dir, "participation.npy")
        _log_finished_stage(
            stage, results[mode_name], _load_network(os.path.join(stage_dir, "model.keras"), strategy),
            np.load(participation_path) if os.path.exists(participation_path) else None)
      continue
    extras = {}
    if not config.augment:
      if teacher_logits is None:  # One inference pass over the transfer set per run.
        teacher_logits = predict_logits(teacher.network, train.images, config.eval_batch_size)
      extras["teacher_logits"] = teacher_logits
    if mode.weight_by_significance:
      extras["significance"] = teacher.significance.astype(np.float32)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
      student = models.build_model(config.student_model, spec.image_shape, spec.num_classes)
      model = distillation.Distiller(
          student, train.size, mode, temperature=config.temperature, kd_lambda=config.kd_lambda,
          scale_temperature_squared=config.kd_scale_temperature_squared,
          gate_temperature=config.gate_temperature,
          backward=config.backward if mode.regulate else "masked",
          teacher=teacher.network if config.augment else None, name=f"student_{mode_name}")
      compile_model(model, config.distill_lr, config)
    with tracker.stage(f"student-{mode_name}", role="student", model_name=config.student_model,
                       mode=mode_name, alpha=alpha) as stage:
      history, wall = fit_stage(model, train, config, stage_dir=stage_dir,
                                epochs=config.resolved_distill_epochs, alpha=alpha, extras=extras,
                                callbacks=stage.callbacks(), is_chief=is_chief)
      counts = model.participation_counts()
      metrics = {
          "test_accuracy": evaluate_accuracy(student, test, config.eval_batch_size),
          "zeta": (regulation.sample_efficiency(counts, config.resolved_distill_epochs)
                   if mode.regulate else None),
          "participations": int(counts.sum()) if mode.regulate else None,
          "params": int(student.count_params()),
          "model": config.student_model,
          "mode": mode_name,
          "alpha": alpha if np.isfinite(alpha) else "inf",
          "epochs": config.resolved_distill_epochs,
          "train_examples": train.size,
          "wall_time_s": wall,
          "history": history,
      }
      arrays = {"participation.npy": counts.astype(np.int32)} if mode.regulate else {}
      _finish_stage(stage_dir, student, metrics, arrays, is_chief)
      _log_finished_stage(stage, metrics, student, counts if mode.regulate else None)
    results[mode_name] = metrics
  return results


# -- the job ---------------------------------------------------------------------


def export_students(config, modes, tracker):
  """TFLite export + LiteRT verification of every student (`--export`).

  Files go to `students/<mode>/tflite/`; with MLflow on, each student's run gets
  the verification metrics and the `.tflite` files.
  """
  from export import tflite  # pylint: disable=import-outside-toplevel

  run_ids = getattr(tracker, "stage_run_ids", {}) or {}
  results = tflite.export_run(
      config.output_dir, config.export, modes=modes,
      mlflow_run_ids={m: run_ids[f"student-{m}"] for m in modes if f"student-{m}" in run_ids})
  for mode, by_quantization in results.items():
    for quantization, result in by_quantization.items():
      logging.info("export %s/%s: %s", mode, quantization, {
          k: v for k, v in result.items()
          if any(t in k for t in ("accuracy", "agreement", "size", "latency", "file"))})
  return results



def summarize(config, train_size, teacher_metrics, student_metrics) -> dict:
  """The `summary.json` contract."""

  def pick(m):
    return {"test_accuracy": m.get("test_accuracy"), "zeta": m.get("zeta"), "params": m.get("params")}

  return {
      "dataset": config.dataset,
      "train_examples": train_size,
      "teacher": pick(teacher_metrics),
      "students": {mode: pick(m) for mode, m in student_metrics.items()},
  }


def format_summary(summary) -> str:
  """A fixed-width table of test accuracy, zeta and parameters per model."""

  def fmt(x, pattern):
    return "-" if x is None else pattern.format(x)

  rows = [("teacher", summary["teacher"])] + [
      (f"student/{mode}", m) for mode, m in summary["students"].items()]
  lines = [f"{summary['dataset']}: {summary['train_examples']} training examples",
           f"{'model':<22} {'test_acc':>9} {'zeta':>9} {'params':>9}"]
  for name, m in rows:
    lines.append(f"{name:<22} {fmt(m.get('test_accuracy'), '{:.4f}'):>9} "
                 f"{fmt(m.get('zeta'), '{:.2%}'):>9} {fmt(m.get('params'), '{:,}'):>9}")
  return "\n".join(lines)


def run(config: config_lib.Config, strategy=None, tracker=None, is_chief=True) -> dict:
  """Runs the configured stages and returns the summary.

  Args:
    config: a validated configuration.
    strategy: a `tf.distribute.Strategy` (default: the default strategy).
    tracker: a tracker (default: `tracking.NullTracker()`).
    is_chief: False on non-chief workers, which write nothing.

  Returns:
    The `summary.json` dict (teacher and the students trained or reused).
  """
  config_lib.validate(config)
  strategy = strategy or tf.distribute.get_strategy()
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise config_lib.ConfigError(
        f"--batch_size={config.batch_size}: the global batch must divide evenly over the "
        f"{replicas} replicas of the {type(strategy).__name__}")
  tracker = tracker or tracking.NullTracker()
  spec = config.dataset_spec
  train = data.load_split(spec, "train", config.train_examples, config.download)
  test = data.load_split(spec, "test", 0, config.download)
  prepare_output_dir(config, is_chief)
  with tracker.run(config, config_lib.to_flagfile(config)):
    if config.teacher_dir:
      teacher = _load_teacher(config.teacher_dir, strategy)
    elif config.stage == "distill":
      teacher = _load_teacher(os.path.join(config.output_dir, "teacher"), strategy)
    else:
      teacher = train_teacher(config, strategy, train, test, tracker, is_chief)
    if teacher.significance is not None and teacher.significance.shape[0] != train.size:
      raise config_lib.ConfigError(
          f"teacher significance has {teacher.significance.shape[0]} entries but the training "
          f"data has {train.size} examples (check --train_examples against the teacher's run)")
    students = {}
    if config.stage in ("distill", "all"):
      students = distill_students(config, strategy, train, test, teacher, tracker, is_chief)
    if config.export and students and is_chief:
      export_students(config, list(students), tracker)
    summary = summarize(config, train.size, teacher.metrics, students)
    if is_chief:
      io_utils.write_json(os.path.join(config.output_dir, "summary.json"), summary)
  return summary

"""The stages in order: data -> teacher -> significance -> students -> summary.

`run(config, strategy)` is the whole job; where its files go is
`layout.RunDir`'s business, how one stage trains, writes and logs is
`stages.run_stage`'s. Every file is written atomically. A finished stage is
reused, not redone; an interrupted stage resumes from its backup/ checkpoint.
Exporting the students (`--export`) is the entry point's job (`tf_srkd.main`),
not the library's.
"""

import logging
import os
import time
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from tf_srkd.run import config as config_lib
from tf_srkd.run import config_flags
from tf_srkd.data import arrays as data
from tf_srkd.core import distill_terms
from tf_srkd.core import distillation
from tf_srkd.run import console
from tf_srkd.core import gates
from tf_srkd.models import input_contract
from tf_srkd.storage import io_utils
from tf_srkd.storage import layout
from tf_srkd.models import sources as model_sources
from tf_srkd.core import modes as modes_lib
from tf_srkd.storage import run_lock
from tf_srkd.run import stages
from tf_srkd.data import streaming
from tf_srkd.tracking import base as tracking
from tf_srkd.core import training
from tf_srkd.storage import checked_reads


# -- output directory -----------------------------------------------------------


def prepare_output_dir(config: config_lib.Config, is_chief: bool = True,
                       teacher_digest: Optional[str] = None,
                       model_files_digest: Optional[str] = None,
                       measured_inputs: Optional[dict] = None,
                       lock: Optional[run_lock.RunDirLock] = None):
  """Checks that `output_dir` is new or was written by the same settings.

  A restart with the same result-determining settings (and, with
  `--teacher_dir`, the same teacher files: `teacher_digest`) resumes. Different
  settings, or stage directories without the `run_config.json` that says how
  they were made, are refused unless `overwrite` is set, in which case the old
  directory is moved aside (renamed), never deleted.

  `lock` (the chief's `run_lock.RunDirLock` of `output_dir`, already held) is taken
  again on the new directory after an old one is moved aside.
  `measured_inputs` (what `--teacher_input/--student_input=auto` measured) is
  recorded beside the identity but not compared: it follows from the model files
  and the data, which the identity holds, and a `--stage=distill` restart does not
  measure the teacher again.

  Raises:
    config_lib.ConfigError: on a settings mismatch without `overwrite`.
  """
  out = config.output_dir
  run_dir = layout.RunDir(out)
  marker = run_dir.run_config
  current = config_lib.identity(config, teacher_digest, model_files_digest)
  if measured_inputs:
    current["measured_inputs"] = measured_inputs
  problem = None
  if os.path.exists(marker):
    previous = checked_reads.read_json(marker)
    compared = [k for k in set(previous) | set(current) if k != "measured_inputs"]
    changed = sorted(k for k in compared if previous.get(k) != current.get(k))
    if changed:
      problem = f"holds a run made with different settings ({', '.join(changed)})"
    elif isinstance(previous.get("measured_inputs"), dict):  # Keep what is not measured now.
      current["measured_inputs"] = {**previous["measured_inputs"],
                                    **current.get("measured_inputs", {})}
  elif os.path.isdir(run_dir.teacher.path) or os.path.isdir(run_dir.students):
    # Without the record of their settings, stages cannot be trusted to match these.
    problem = f"holds stages but no {os.path.basename(marker)} saying how they were made"
  if problem:
    if not config.overwrite:
      raise config_lib.ConfigError(
          f"--output_dir={out}: {problem}; use a new --output_dir, or pass --overwrite to "
          "move the old one aside")
    if is_chief:
      aside = f"{out.rstrip(os.sep)}.old-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
      os.replace(out, aside)
      logging.warning("moved the previous run in %s to %s", out, aside)
      if lock is not None:
        lock.acquire()  # The held lock moved aside with the old directory.
  if is_chief:
    io_utils.write_text(run_dir.flags, config_flags.to_flagfile(config))
    io_utils.write_json(marker, current)


def load_teacher(config, strategy, train_size) -> Tuple[Optional[stages.StageResult],
                                                         Optional[str]]:
  """The teacher this run distils from without training it, checked, and its digest.

  `--teacher_dir`'s teacher, or the run's own for `--stage=distill`; every file is
  validated (see `stages.load_stage`) before anything is written.

  Returns:
    (the teacher or None when the run trains its own, the content hash of
    `--teacher_dir`'s files or None).
  """
  if config.models.teacher_dir:
    stage = layout.teacher_stage(config.models.teacher_dir)
    teacher = stages.load_stage(stage, strategy, config_lib.dataset_spec(config), train_size)
    return teacher, checked_reads.digest([stage.model, stage.significance, stage.participation])
  if config.stage == "distill":
    own = layout.RunDir(config.output_dir).teacher
    return stages.load_stage(own, strategy, config_lib.dataset_spec(config), train_size), None
  # A finished own teacher is checked when reused (`stages.run_stage`), after the
  # settings check: under other settings it is moved aside (--overwrite), not read.
  return None, None


def check_models(config, train, build_teacher: bool,
                 teacher_network=None) -> Tuple[Optional[str], dict, dict]:
  """Builds (or loads) the run's models once, so a bad source stops the run before
  anything is written; settles the pixel range each takes (`input_contract`).

  Args:
    config: the run's configuration.
    train: the transfer set (a pre-trained model's range is measured on its images).
    build_teacher: False when the teacher is read back from a run (`load_teacher`).
    teacher_network: that read-back teacher, whose layers `--distillation_loss` may name.

  Returns:
    (the digest of the `.keras` and weights files of the sources, None without such
    files; {"teacher": scaling, "student": scaling}; {flag: what `auto` measured, as a
    dict} for the models it measured, recorded in run_config.json).

  Raises:
    config_lib.ConfigError: one line naming the model flag (or file) and the problem,
      or a pre-trained teacher at chance under both scalings.
  """
  spec = config_lib.dataset_spec(config)
  sources = [("student", config.models.student_model, config.models.student_weights,
              config.models.student_input)]
  if build_teacher:
    sources.append(("teacher", config.models.teacher_model, config.models.teacher_weights,
                    config.models.teacher_input))
  files, scalings, measured = [], {"teacher": "unit", "student": "unit"}, {}
  networks = {"teacher": teacher_network}
  for role, name, weights, requested in sources:
    network = networks[role] = model_sources.build(name, spec.image_shape, spec.num_classes,
                                                   weights, flag=f"{role}_model")
    files += model_sources.files_of(name, weights)
    scalings[role] = "unit" if requested == "auto" else requested
    if requested == "auto" and model_sources.is_pretrained(name, weights):
      scalings[role], measured[f"{role}_input"] = _measure_input(config, role, name, weights,
                                                                 network, train)
  if config.stage != "teacher":
    _check_distillation_layers(config, networks["teacher"], networks["student"])
  return (checked_reads.digest(files) if files else None), scalings, measured


def distillation_losses(training):
  """(losses, weights) of `--distillation_loss` for `distillation.Distiller`
  (`distill_terms.from_flags`)."""
  return distill_terms.from_flags(training.distillation_loss, training.distillation_loss_weights)


def _check_distillation_layers(config, teacher, student):
  """The layers `--distillation_loss` names exist and their features can be compared,
  before anything is written."""
  losses, weights = distillation_losses(config.training)
  if losses is not None:
    try:
      distill_terms.projections(distill_terms.terms_of(losses, weights), teacher, student,
                                build=False)
    except ValueError as e:
      raise config_lib.ConfigError(f"--distillation_loss: {e}") from e


def _measure_input(config, role, name, weights, network, train):
  """`auto` for a pre-trained model: (its scaling, the measurement as a dict)."""
  spec = config_lib.dataset_spec(config)
  ids = input_contract.detection_ids(train.size, config.seed)
  m = input_contract.measure(network, data.take_rows(train.images, ids), train.labels[ids],
                             spec.num_classes, min(config.training.eval_batch_size, len(ids)))
  source = weights or name
  # A teacher used as is must already be trained; one that is fine-tuned here (perhaps
  # from another label set) or a student (an untrained .keras architecture is common)
  # may start at chance.
  may_start_at_chance = role == "student" or config.models.teacher_finetune_epochs > 0
  if m.choice is None and not may_start_at_chance:
    raise config_lib.ConfigError(input_contract.refusal(f"{role}_input", source, m,
                                                        spec.num_classes))
  if m.choice is None:
    console.say(f"--{role}_input=auto: {source} is at chance under both scalings "
                f"({m.unit_accuracy:.4f} on [0, 1], {m.pixels_accuracy:.4f} on 0..255); "
                f"taking it as unit (pass --{role}_input=pixels if it takes 0..255)")
    choice = "unit"
  else:
    console.say(input_contract.describe(f"{role}_input", source, m))
    choice = m.choice
  return choice, {"choice": choice, "unit_accuracy": round(m.unit_accuracy, 6),
                  "pixels_accuracy": round(m.pixels_accuracy, 6), "images": m.images}


# -- teacher and students -------------------------------------------------------------


def train_teacher(config, strategy, train, test, tracker, is_chief=True,
                  scaling: str = "unit") -> stages.StageResult:
  """Algorithm 1 (self-regulated teacher) then Algorithm 2 (significance).

  `scaling`: the pixel range the teacher takes (`input_contract`; `check_models`).
  """
  spec = config_lib.dataset_spec(config)
  # A pre-trained teacher trains only its fine-tuning epochs (0: used as is).
  pretrained = model_sources.is_pretrained(config.models.teacher_model,
                                           config.models.teacher_weights)
  epochs = config.models.teacher_finetune_epochs if pretrained else config.training.epochs

  def build():
    network = input_contract.wrap(
        model_sources.build(config.models.teacher_model, spec.image_shape, spec.num_classes,
                            config.models.teacher_weights, flag="teacher_model"), scaling,
        spec.image_shape)
    policy = gates.make_policy(config.gating.gate, train.size, epochs, config.seed,
                               gates.GateSettings.of(config.gating))
    return training.SelfRegulatedModel(
        network, train.size, regulate=True,
        backward=model_sources.backward_for(config.gating.backward, network), policy=policy,
        name="teacher")

  stage = stages.StageSpec(name="teacher", role="teacher", model_name=config.models.teacher_model,
                           stage_dir=layout.RunDir(config.output_dir).teacher,
                           epochs=epochs, alpha=config.gating.alpha,
                           learning_rate=config.training.teacher_lr, gate=config.gating.gate,
                           input_scaling=scaling)
  return stages.run_stage(stage, config, strategy, train, test, tracker, build,
                          is_chief=is_chief)


def distill_students(config, strategy, train, test, teacher: stages.StageResult, tracker,
                     is_chief=True, scaling: str = "unit") -> dict:
  """Algorithm 3 in every requested mode; returns mode -> metrics.

  `scaling`: the pixel range the students take (`input_contract`; `check_models`).
  """
  spec = config_lib.dataset_spec(config)
  run_dir = layout.RunDir(config.output_dir)
  cached = {}

  def teacher_logits():  # One inference pass over the transfer set per run.
    if "logits" not in cached and data.is_stored(train.images):  # On disk too.
      cached["logits"] = streaming.predict_to_disk(
          teacher.network, train.images, config.training.eval_batch_size, "teacher_logits")
    if "logits" not in cached:
      cached["logits"] = stages.predict_logits(teacher.network, train.images,
                                               config.training.eval_batch_size)
    return cached["logits"]

  losses, weights = distillation_losses(config.training)
  # Terms that read the teacher's layers run it in every step; logits alone come cached.
  live_teacher = losses is not None and any(
      t.teacher_layer for t in distill_terms.terms_of(losses, weights))
  results = {}
  for mode_name in config.training.modes:
    mode = modes_lib.get_mode(mode_name)

    def make_extras(mode=mode):
      extras = {}
      if not (config.data.augment or live_teacher):
        extras["teacher_logits"] = teacher_logits()
      if mode.weight_by_significance:
        extras["significance"] = teacher.significance.astype(np.float32)
      return extras

    def build(mode=mode):
      student = input_contract.wrap(
          model_sources.build(config.models.student_model, spec.image_shape, spec.num_classes,
                              config.models.student_weights, flag="student_model"), scaling,
          spec.image_shape)
      policy = (gates.make_policy(config.gating.distill_gate, train.size,
                                  config.training.resolved_distill_epochs,
                                  config.seed, gates.GateSettings.of(config.gating))
                if mode.regulate else None)
      return distillation.Distiller(
          student, train.size, mode, temperature=config.training.temperature,
          kd_lambda=config.training.kd_lambda,
          scale_temperature_squared=config.training.kd_scale_temperature_squared,
          gate_temperature=config.gating.gate_temperature,
          backward=model_sources.backward_for(config.gating.backward, student) if mode.regulate
          else "masked",
          normaliser=config.training.distill_loss_normaliser,
          teacher=teacher.network if config.data.augment or live_teacher else None, policy=policy,
          distillation_losses=distillation_losses(config.training)[0],
          distillation_loss_weights=weights,
          name=f"student_{mode.name}")

    stage = stages.StageSpec(
        name=f"student-{mode_name}", role="student", model_name=config.models.student_model,
        stage_dir=run_dir.student(mode_name), epochs=config.training.resolved_distill_epochs,
        alpha=config.gating.distill_alpha if mode.regulate else float("inf"),
        learning_rate=config.training.distill_lr, mode=mode_name,
        gate=config.gating.distill_gate if mode.regulate else None, input_scaling=scaling)
    results[mode_name] = stages.run_stage(stage, config, strategy, train, test, tracker, build,
                                          make_extras, is_chief=is_chief).metrics
  return results


# -- the job ---------------------------------------------------------------------


def summarize(config, train_size, teacher_metrics, student_metrics) -> dict:
  """The `summary.json` contract."""

  def pick(m):
    picked = {"test_accuracy": m.get("test_accuracy"), "zeta": m.get("zeta"),
              "params": m.get("params")}
    if m.get("at_chance"):  # `stage_health.chance_check`
      picked["at_chance"] = True
    return picked

  return {
      "dataset": config.data.dataset,
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
  lines = [f"{summary['dataset']}: {summary['train_examples']} training examples "
           "(zeta: fraction of sample-epochs in backward passes, as in MLflow)",
           f"{'model':<22} {'test_acc':>9} {'zeta':>9} {'params':>9}"]
  for name, m in rows:
    if m.get("zeta") is None and m.get("test_accuracy") is not None:
      m = dict(m, zeta=1.0)  # Not self-regulating: every sample, every epoch (as in MLflow).
    lines.append(f"{name:<22} {fmt(m.get('test_accuracy'), '{:.4f}'):>9} "
                 f"{fmt(m.get('zeta'), '{:.4f}'):>9} {fmt(m.get('params'), '{:,}'):>9}"
                 + ("  AT CHANCE" if m.get("at_chance") else ""))
  return "\n".join(lines)


def run(config: config_lib.Config, strategy=None, tracker=None, is_chief=True,
        lock: Optional[run_lock.RunDirLock] = None) -> dict:
  """Runs the configured stages and returns the summary.

  Args:
    config: a validated configuration.
    strategy: a `tf.distribute.Strategy` (default: the default strategy).
    tracker: a tracker (default: `tracking.NullTracker()`).
    is_chief: False on non-chief workers, which write nothing.
    lock: the chief's lock of `output_dir` (`run_lock`), taken here right before the
      first write and left held for the caller to release (the entry point exports
      after this returns); None: one of its own, released on return.

  Raises:
    run_lock.RunDirBusy: another process is writing `output_dir`.

  Returns:
    The `summary.json` dict (teacher and the students trained or reused).
  """
  config_lib.validate(config)
  strategy = strategy or tf.distribute.get_strategy()
  replicas = strategy.num_replicas_in_sync
  if config.training.batch_size % replicas:
    raise config_lib.ConfigError(
        f"--batch_size={config.training.batch_size}: the global batch must divide evenly over the "
        f"{replicas} replicas of the {type(strategy).__name__}")
  tracker = tracker or tracking.NullTracker()
  spec = config_lib.dataset_spec(config)
  # In memory, or on disk above --max_in_memory_mb (`streaming`); the same batches either way.
  train = streaming.load(spec, "train", config.data.train_examples, config.data.download,
                         config.data.max_in_memory_mb)
  test = streaming.load(spec, "test", 0, config.data.download, config.data.max_in_memory_mb)
  teacher, teacher_digest = load_teacher(config, strategy, train.size)
  files_digest, scalings, measured = check_models(
      config, train, teacher is None, None if teacher is None else teacher.network)
  own_lock = lock is None and is_chief
  if own_lock:
    lock = run_lock.RunDirLock(config.output_dir)
  try:
    if is_chief:
      lock.acquire()  # Every check passed: the first write of the run comes next.
    prepare_output_dir(config, is_chief, teacher_digest, files_digest, measured, lock)
    return _run_stages(config, strategy, tracker, is_chief, train, test, teacher, scalings)
  finally:
    if own_lock:
      lock.release()


def _run_stages(config, strategy, tracker, is_chief, train, test, teacher, scalings) -> dict:
  """The stages of `run` after the output directory is ready; returns the summary."""
  with tracker.run(config, config_flags.to_flagfile(config),
                   num_train_examples=config_lib.num_train_examples(config)):
    if not config.models.teacher_dir and config.stage != "distill":
      # The run's own teacher: trained, or (finished) checked, reused and tracked.
      teacher = train_teacher(config, strategy, train, test, tracker, is_chief,
                              scalings["teacher"])
    students = {}
    if config.stage in ("distill", "all"):
      students = distill_students(config, strategy, train, test, teacher, tracker, is_chief,
                                  scalings["student"])
    summary = summarize(config, train.size, teacher.metrics, students)
    if is_chief:
      io_utils.write_json(layout.RunDir(config.output_dir).summary, summary)
  return summary

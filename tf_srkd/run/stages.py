"""One training stage, teacher or student: train it (or reuse it), write it, track it.

`run_stage` is the single path for every model a run trains: a finished stage
(its metrics.json exists) is loaded and re-logged, not redone; otherwise the
model is built from a fixed seed, trained by `fit_stage` (resuming from the
stage's backup/ checkpoint), evaluated, written (metrics.json last) and logged.
"""

import dataclasses
import os
import shutil
import time
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from tf_srkd.core import callbacks as callbacks_lib
from tf_srkd.run import config as config_lib
from tf_srkd.run import console
from tf_srkd.data import arrays as data
from tf_srkd.data import epoch_batches
from tf_srkd.storage import io_utils
from tf_srkd.storage import layout
from tf_srkd.core import margin_cache
from tf_srkd.core import staleness
from tf_srkd.models import sources as model_sources
from tf_srkd.models import precise_bn
from tf_srkd.core import regulation
from tf_srkd.run import resume
from tf_srkd.run import stage_health
from tf_srkd.storage import checked_reads
from tf_srkd.models import loading


@dataclasses.dataclass
class StageResult:
  """What a finished stage hands to the next one and to the summary."""

  network: keras.Model
  metrics: dict
  participation: np.ndarray = None
  significance: np.ndarray = None


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One model of a run: what it is, where it goes, how it trains.

  Attributes:
    name: the tracker's stage name ("teacher", "student-<mode>").
    role: "teacher" (also computes the significance) or "student".
    model_name: the model's source (`model_sources`: a registry name, an application, ...).
    stage_dir: its directory in the run's layout.
    epochs: epochs to train.
    alpha: its self-regulation rate (inf: everyone takes part).
    learning_rate: Adam's learning rate.
    mode: the distillation mode of a student.
    gate: the gate policy of a self-regulating stage (`tf_srkd.core.gates`), else None.
    input_scaling: the pixel range the model takes (`input_contract`: unit or pixels).
  """

  name: str
  role: str
  model_name: str
  stage_dir: layout.StageDir
  epochs: int
  alpha: float
  learning_rate: float
  mode: Optional[str] = None
  gate: Optional[str] = None
  input_scaling: str = "unit"


def execution_steps(requested: int, steps_per_epoch: int) -> int:
  """Steps per compiled call: the largest divisor of `steps_per_epoch` not above
  `requested` (0: all of them).

  Keras' epoch loop hands the iterator to the compiled function once per
  `steps_per_execution` steps and does not stop a call at an epoch boundary;
  a call that ran past it would train the next epoch's first batches under
  this epoch's eta, backward and gate-policy state.
  """
  if requested < 0:
    raise ValueError(f"steps_per_execution must be >= 0, got {requested}")
  if requested == 0 or requested >= steps_per_epoch:
    return steps_per_epoch
  return max(k for k in range(1, requested + 1) if steps_per_epoch % k == 0)


def compile_model(model, learning_rate, training):
  """Adam at `learning_rate`, built now so checkpoints can restore its slots.

  Whole epochs per compiled call by default (`training.steps_per_execution`):
  a trickle epoch of the self-regulated teacher is ~118 steps of which most
  apply no update, so the per-call Python round trip of Keras' loop was a
  large share of it (bench/RESULTS.md "trickle").
  """
  per_call = training.steps_per_execution
  if tf.distribute.has_strategy():
    # `distributed.apply_if` takes the update's condition in cross-replica context,
    # which a tf.while_loop over steps cannot hold ("You must feed a value for
    # placeholder", TF 2.21): one step per call under a strategy.
    per_call = 1
  if per_call != 1:
    per_call = execution_steps(per_call, data.steps_per_epoch(model.num_examples,
                                                              training.batch_size))
  model.compile(optimizer=keras.optimizers.Adam(learning_rate, epsilon=training.adam_epsilon),
                jit_compile=training.jit_compile,
                steps_per_execution=per_call)
  model.optimizer.build(model.trained_variables())


def fit_stage(model, split, training, gating, *, seed, stage_dir, epochs, alpha, extras=None,
              augment_fn=None, callbacks=(), epoch_listeners=(), is_chief=True, name=None,
              verbose=2):
  """Trains `model` for `epochs`, resuming from `<stage_dir>/backup` if present.

  With `gating.skip_idle_epochs`, epochs in which provably no sample takes part
  (see `callbacks.IdleEpochSkipper`) are not run: they are recorded with
  participation 0 and `skipped_epoch` 1, through the same `EpochHistory.record`
  as the epochs that ran, and training resumes at the first epoch with a
  participant. The result is bit-identical to running them. With
  `gating.reuse_margins`, compact steps take the gate of every row whose
  margin is still exact from the model's `margin_cache`.

  Args:
    model: a compiled `SelfRegulatedModel`.
    split: the transfer set (`data.SplitArrays`).
    training: the run's `TrainingConfig` (batch size).
    gating: the run's `GateConfig` (margin reuse, idle-epoch skipping).
    seed: the run's seed (the per-epoch shuffles).
    stage_dir: the stage's directory (history.json and backup/ go there).
    epochs: the stage's epoch count.
    alpha: the self-regulation rate of the schedule.
    extras: per-sample features gathered into every batch (teacher logits, ...).
    augment_fn: the per-batch augmentation (`augmentation`), or None.
    callbacks: further Keras callbacks (e.g. the tracker's).
    epoch_listeners: `fn(epoch, logs)` called for every epoch, run or skipped.
    is_chief: False on workers that write nothing.
    name: the stage's name in the message of a diverged (NaN/inf) epoch.
    verbose: Keras' fit verbosity.

  Returns:
    (history list of per-epoch dicts, wall time in seconds of this process' share).
  """
  stage = layout.StageDir(stage_dir)
  checkpoint, start, history, previous = _resume(stage, model, epochs, is_chief, epoch_listeners)
  schedule = callbacks_lib.RegulationSchedule(alpha, split.size, start, previous)
  rollover, skipper = _margin_reuse(model, gating, augment_fn is not None, split.labels, alpha,
                                    epochs)
  guard = callbacks_lib.FiniteLogsGuard(name or stage_dir, stage.backup)
  began = time.time()
  epoch = start
  while epoch < epochs:
    model.fit(_epoch_batches(split, training.batch_size, seed, epoch, epochs, extras, augment_fn),
              epochs=epochs, initial_epoch=epoch,
              # The batches are already shuffled per epoch (Keras warns otherwise).
              shuffle=False, steps_per_epoch=data.steps_per_epoch(split.size, training.batch_size),
              callbacks=[schedule, *[c for c in (rollover, skipper) if c], guard, history,
                         callbacks_lib.CheckpointCallback(checkpoint), *callbacks,
                         callbacks_lib.ConsoleProgbar()],
              verbose=verbose)
    if skipper is None or skipper.idle_from is None:
      break
    for idle_epoch, logs in skipper.idle_epochs():
      history.record(idle_epoch, logs)
      epoch = idle_epoch + 1
    console.say(f"skipped idle epochs {skipper.idle_from}-{epoch - 1}: no sample could take part")
    schedule.previous_fraction = 0.0  # The last (idle) epoch had no participant.
    checkpoint.save(epoch)
  return history.as_list(), time.time() - began


def _resume(stage: layout.StageDir, model, epochs, is_chief, listeners):
  """(checkpoint, first epoch to run, the stage's history, the last run epoch's participation)."""
  checkpoint = resume.StageCheckpoint(stage.backup, model, is_chief)
  start = checkpoint.restore(epochs)
  history = callbacks_lib.EpochHistory(stage.history, is_chief, listeners=listeners)
  history.trim(start)
  previous = history.epochs.get(start - 1, {}).get("participation_fraction")
  if start:
    console.say(f"{stage.path}: resuming at epoch {start} of {epochs}")
  return checkpoint, start, history, previous


def augmentation(data_config, seed, channels):
  """`--augment`'s per-batch random shift (and flip for colour images), or None.

  Args:
    data_config: the run's `DataConfig`.
    seed: the run's seed.
    channels: the images' channels (3: colour, flipped too).
  """
  if not data_config.augment:
    return None
  return data.random_shift_augment(2, flip=channels == 3, seed=seed)


def _margin_reuse(model, gating, augmented, labels, alpha, epochs):
  """Configures the model's margins; returns (margin-cache rollover, idle-epoch skipper),
  each or None.

  Only Algorithm 1's compact gate records margins (another policy decides without
  them), and a margin stays exact only while the network changes with the optimizer's
  updates alone and the row's pixels stay the same: BatchNorm's moving statistics move
  in every training forward, and `--augment` shows each epoch other pixels, so a
  BatchNorm network or an augmented run reuses no margin, exact or bounded, and gets no
  idle-epoch skipping (whose proof reads the cached margins).
  """
  rollover = skipper = None
  model.configure_margins(reuse=False)  # Read when `fit` traces the step.
  if (model.regulate and model.backward != "masked" and model.policy.idle_epochs
      and not augmented and not model_sources.has_batch_norm(model.network)):
    bound = (staleness.Staleness(gating.margin_max_age, gating.margin_band)
             if gating.margin_refresh == "bounded" else None)
    model.configure_margins(gating.reuse_margins, bound, audit=gating.margin_audit)
    if gating.skip_idle_epochs or gating.reuse_margins:
      rollover = margin_cache.MarginCacheRollover(gating.reuse_margins)
    # The audit runs every epoch: a skipped one would log no misses where rows kept
    # since may have fallen below eta (skipping changes no bit, running them neither).
    if gating.skip_idle_epochs and not gating.margin_audit:
      skipper = callbacks_lib.IdleEpochSkipper(labels, alpha, epochs, bound)
  return rollover, skipper


def _epoch_batches(split, batch_size, seed, epoch, epochs, extras, augment_fn):
  """The batches of epochs [epoch, epochs), shuffled per epoch from the run's seed.

  Distillation batches carry per-sample extras: when all of it is in memory, they are
  cut from one gather per epoch instead of gathering every batch by id (the same
  batches, bit for bit); arrays on disk (`streaming`) are read by id.
  """
  in_memory = not any(data.is_stored(v) for v in (split.images, *(extras or {}).values()))
  make_dataset = epoch_batches.train_dataset if extras and in_memory else data.train_dataset
  return make_dataset(split, batch_size, seed, epoch, epochs, extras, augment_fn)


def predict_logits(network, images, batch_size):
  """Inference-mode logits for raw uint8 images, in order (`data.predict_logits`)."""
  return data.predict_logits(network, images, batch_size)


def evaluate_accuracy(network, split: data.SplitArrays, batch_size: int) -> float:
  """Top-1 accuracy of `network` (logits) on a split, at temperature 1."""
  logits = predict_logits(network, split.images, batch_size)
  return float(np.mean(np.argmax(logits, axis=-1) == split.labels))


def load_stage(stage: layout.StageDir, strategy, dataset_spec, num_examples) -> StageResult:
  """A finished stage read back from its directory, every file checked first.

  Args:
    stage: the stage directory.
    strategy: the model is loaded under its scope.
    dataset_spec: the run's dataset (the model's input shape and classes).
    num_examples: the run's training examples (the arrays' length).

  Returns:
    The network, metrics and arrays (arrays that are absent are None).

  Raises:
    config.ConfigError: a file that is damaged or does not fit this run (see `checked_reads`).
  """
  metrics = checked_reads.read_json(stage.metrics) if os.path.exists(stage.metrics) else {}
  epochs = metrics.get("epochs")
  participation = significance = None
  if os.path.exists(stage.participation):
    participation = checked_reads.load_array(
        stage.participation, kinds=checked_reads.INT_KINDS, length=num_examples, low=0,
        high=epochs if isinstance(epochs, int) else None)
  if os.path.exists(stage.significance):
    significance = checked_reads.load_array(stage.significance, kinds=checked_reads.FLOAT_KINDS,
                                         length=num_examples, low=0, high=1)
  with strategy.scope():
    network = loading.load_model(stage.model, dataset_spec.image_shape,
                                     dataset_spec.num_classes)
  if "params" not in metrics:
    metrics["params"] = int(network.count_params())
  return StageResult(network, metrics, participation, significance)


def run_stage(spec: StageSpec, config, strategy, train, test, tracker, build: Callable,
              make_extras: Callable = dict, is_chief=True) -> StageResult:
  """Trains one model, or reuses it when its stage finished earlier; writes and tracks it.

  Args:
    spec: the stage.
    config: the run's `Config`.
    strategy: the run's `tf.distribute.Strategy`.
    train, test: the transfer set and the test split (`data.SplitArrays`).
    tracker: the run's tracker; the stage gets a child run either way.
    build: `build() -> SelfRegulatedModel`, called seeded and under the strategy's scope.
    make_extras: `() -> dict` of per-sample features for the batches (teacher
      logits, significance); called only when the stage trains.
    is_chief: False on workers that write nothing.

  Returns:
    The stage's network, metrics and arrays.
  """
  tracked = dict(role=spec.role, model_name=spec.model_name, mode=spec.mode, alpha=spec.alpha,
                 gate=spec.gate)
  description = console.describe_stage(spec.name, **tracked)
  if spec.stage_dir.finished:
    console.stage_reused(description, spec.stage_dir.path)
    result = load_stage(spec.stage_dir, strategy, config_lib.dataset_spec(config), train.size)
    with tracker.stage(spec.name, epochs=spec.epochs, **tracked) as stage:
      _log_result(stage, result, train, test, config)
    return result
  began = time.time()
  console.stage_started(description, train.size, spec.epochs)
  extras = make_extras()
  keras.utils.set_random_seed(config.seed)
  with strategy.scope():
    model = build()
    compile_model(model, spec.learning_rate, config.training)
  stage_health.say_if_too_few_steps(spec, config, train.size,
                                    model_sources.has_batch_norm(model.network))
  with tracker.stage(spec.name, epochs=spec.epochs, **tracked) as stage:
    augment_fn = augmentation(config.data, config.seed,
                              config_lib.dataset_spec(config).image_shape[-1])
    history, wall = fit_stage(model, train, config.training, config.gating, seed=config.seed,
                              stage_dir=spec.stage_dir.path, epochs=spec.epochs, alpha=spec.alpha,
                              extras=extras, augment_fn=augment_fn, callbacks=stage.callbacks(),
                              epoch_listeners=[stage.log_epoch], is_chief=is_chief,
                              name=spec.name, verbose=config.verbose)
    result = _trained_result(spec, model, train, test, config, history, wall)
    if is_chief:
      _write_result(spec.stage_dir, result)
    _log_result(stage, result, train, test, config)
  console.stage_finished(spec.name, result.metrics, time.time() - began)
  return result


def _trained_result(spec, model, train, test, config, history, wall) -> StageResult:
  """Counts, the teacher's significance, and the metrics.json of a trained model."""
  network = model.network
  counts = model.participation_counts()
  significance = None
  trained = spec.epochs > 0  # 0: a pre-trained teacher used as is, without counts.
  bn_batches = 0
  if trained and config.training.precise_bn_batches:
    # Before evaluation, the teacher's logits for the students and export: the moving
    # statistics must belong to the final weights, not to the average of the run's.
    bn_batches = precise_bn.recompute(network, train.images, config.training.batch_size,
                                      config.training.precise_bn_batches, config.seed)
  if spec.role == "teacher" and trained:
    significance = regulation.significance(counts, train.labels, config_lib.dataset_spec(config).num_classes)
  test_accuracy = evaluate_accuracy(network, test, config.training.eval_batch_size)
  metrics = {
      "test_accuracy": test_accuracy,
      "zeta": (regulation.sample_efficiency(counts, spec.epochs)
               if model.regulate and trained else None),
      "participations": int(counts.sum()) if model.regulate and trained else None,
      "params": int(network.count_params()),
      "model": spec.model_name,
      "alpha": spec.alpha if np.isfinite(spec.alpha) else "inf",
      "epochs": spec.epochs,
      "train_examples": train.size,
      "wall_time_s": wall,
      "history": history,
  }
  if spec.mode is not None:
    metrics["mode"] = spec.mode
  if spec.gate not in (None, "self_regulated"):
    metrics["gate"] = spec.gate
  if spec.input_scaling != "unit":
    metrics["input_scaling"] = spec.input_scaling
  if bn_batches:  # Not the flag's name: the run's params already hold the flag's value.
    metrics["precise_bn_batches_used"] = bn_batches
  metrics.update(stage_health.chance_check(spec, network, model, train, test, config,
                                           test_accuracy))
  return StageResult(network, metrics, counts if model.regulate and trained else None,
                     significance)


def _write_result(stage: layout.StageDir, result: StageResult):
  """Writes a stage's files; metrics.json goes last and marks completion."""
  if result.participation is not None:
    io_utils.save_npy(stage.participation, result.participation.astype(np.int32))
  if result.significance is not None:
    io_utils.save_npy(stage.significance, result.significance.astype(np.float32))
  io_utils.save_keras(stage.model, result.network)
  io_utils.write_json(stage.metrics, result.metrics)
  shutil.rmtree(stage.backup, ignore_errors=True)


def _log_result(stage, result: StageResult, train, test, config):
  """Datasets, the whole per-epoch history, participation, the final metrics at the last
  epoch's step, the model at that step (so it carries them), significance."""
  metrics = result.metrics
  train_split = f"train[:{config.data.train_examples}]" if config.data.train_examples else "train"
  if train.size != config_lib.num_train_examples(config):  # A subset of it (`tf_srkd.cli.subset`).
    train_split = f"{train_split}-subset-{train.size}"
  stage.log_datasets(config.data.dataset, [(train_split, train, "training"), ("test", test,
                                                                              "testing")])
  stage.log_history(metrics.get("history"))
  if result.participation is not None:
    stage.log_participation(result.participation, metrics.get("history"))
  params = {k: metrics[k] for k in ("input_scaling", "precise_bn_batches_used") if k in metrics}
  if params:
    stage.log_params(params)
  stage.log_final(metrics)
  stage.log_model(result.network, config_lib.dataset_spec(config), test.images)
  if result.significance is not None:
    stage.log_significance(result.significance, train.labels, config_lib.dataset_spec(config).class_names)

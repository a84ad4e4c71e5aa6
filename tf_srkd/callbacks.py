"""The Keras callbacks of a training stage.

  RegulationSchedule   eta(n) at each epoch start, `auto` backward, eta/zeta in the logs,
                       the gate policy's epoch hooks
  IdleEpochSkipper     finds epochs in which provably no sample takes part
  FiniteLogsGuard      stops the stage at the first epoch whose logs hold a NaN or inf
  EpochHistory         every epoch's logs in `<stage>/history.json`; the one path by
                       which epoch logs reach their consumers (trained or skipped epochs)
  CheckpointCallback   a `resume.StageCheckpoint` after every epoch
"""

import math
import os

import keras
import numpy as np

from tf_srkd import config as config_lib
from tf_srkd import io_utils
from tf_srkd import regulation
from tf_srkd import validation

#: Participation fraction under which `compact` beats `masked`. Measured on
#: LeNet-5/MNIST (bench/RESULTS.md, table 2 and the step breakdown): the
#: inference pass costs ~0.30 of a training step and compact is still cheaper
#: than masked at 50 % participation (0.85 vs 1.03 of a plain epoch); the
#: break-even lies near 0.65-0.7.
COMPACT_BREAK_EVEN = 0.65


class RegulationSchedule(keras.callbacks.Callback):
  """Sets eta(n) at each epoch start, picks the backward for `auto`, and adds
  eta, the backward used and the cumulative zeta to the epoch logs.

  Attributes:
    previous_fraction: the last epoch's participation fraction (None: unknown),
      from which `auto` picks the next epoch's backward.
  """

  def __init__(self, alpha, num_examples, start_epoch=0, previous_fraction=None):
    super().__init__()
    self.alpha = float(alpha)
    self.num_examples = int(num_examples)
    self.start_epoch = int(start_epoch)
    self.previous_fraction = previous_fraction
    self._eta = 0.0

  def on_epoch_begin(self, epoch, logs=None):
    model = self.model
    self._eta = regulation.threshold(self.alpha, epoch)
    model.eta.assign(self._eta)
    model.policy.on_epoch_begin(epoch)
    if model.backward == "auto" and self.previous_fraction is not None:
      model.set_backward("compact" if self.previous_fraction < COMPACT_BREAK_EVEN else "masked")

  def on_epoch_end(self, epoch, logs=None):
    self.model.policy.on_epoch_end(epoch)
    if logs is None:
      return
    self.previous_fraction = float(logs.get("participation_fraction", 1.0))
    logs["eta"] = self._eta if math.isfinite(self._eta) else 1.0
    logs["skipped_epoch"] = 0.0
    logs["compact_backward"] = float(self.model.active_backward == "compact")
    counts = self.model.participation_counts()
    logs["zeta"] = regulation.sample_efficiency(counts, epoch + 1)


class IdleEpochSkipper(keras.callbacks.Callback):
  """Detects epochs in which provably no sample takes part, so they can be skipped.

  Exact reasoning: when an epoch ran with the compact (inference-mode) gate and
  applied no update, the model that starts the next epoch is the one that
  started this one, so every sample's margin and prediction are already known
  from this epoch's gate pass; only eta changes. The next epoch's participants
  are then `prediction != label or margin < eta(n + 1)`, with no forward pass.
  If there are none, `idle_from` is set and training stops after this epoch;
  the caller reports `idle_epochs()` and resumes at the first busy one. In the
  busy epoch that follows, batches before the first update take their gate
  from the cache too (`gate_from_cache` in the logs), with no forward pass.

  Only the compact gate is cached: with masked backward the gate comes from
  the training-mode forward, which for dropout models is not the cached one.
  """

  def __init__(self, labels, alpha, epochs):
    super().__init__()
    self.labels = np.asarray(labels, np.int32)
    self.alpha = float(alpha)
    self.epochs = int(epochs)
    self.idle_from = None
    self.cache = None  # (margins, predictions) valid for the current weights, or None.
    self._iterations = None
    self._compact = False

  def on_epoch_begin(self, epoch, logs=None):
    model = self.model
    self._compact = model.regulate and model.active_backward == "compact"
    if self._compact and self.cache is not None:
      model.previous_margin.assign(self.cache[0])
      model.previous_prediction.assign(self.cache[1])
      model.gate_cache_valid.assign(1)
    else:
      model.gate_cache_valid.assign(0)
    if self._compact:
      model.reset_gate_cache()
      self._iterations = int(model.optimizer.iterations.numpy())

  def on_epoch_end(self, epoch, logs=None):
    self.idle_from = None
    self.cache = None
    if not self._compact:
      return
    margins, predictions = self.model.gate_cache()  # A collective: every worker reads.
    if int(self.model.optimizer.iterations.numpy()) != self._iterations:
      return  # The weights moved during the epoch: earlier rows are stale.
    self.cache = (margins, predictions)
    if epoch + 1 < self.epochs and not self.next_participants(margins, predictions,
                                                              epoch + 1).any():
      self.idle_from = epoch + 1
      self.model.stop_training = True

  def next_participants(self, margins, predictions, epoch):
    """The participants of `epoch` for an unchanged model, from the cache."""
    return (predictions != self.labels) | (margins < regulation.threshold(self.alpha, epoch))

  def idle_epochs(self):
    """Yields (epoch, logs) for each idle epoch from `idle_from` up to the first busy one.

    The logs are those a run of the epoch would have produced: losses and
    participation 0, the cached accuracy, eta, zeta, and `skipped_epoch` 1.
    """
    margins, predictions = self.cache
    counts = self.model.participation_counts()
    accuracy = float(np.mean(predictions == self.labels))
    epoch = self.idle_from
    while epoch < self.epochs and not self.next_participants(margins, predictions, epoch).any():
      logs = {name: 0.0 for name in ("loss",) + self.model.loss_part_names()}
      logs.update(accuracy=accuracy, participation_fraction=0.0,
                  eta=regulation.threshold(self.alpha, epoch), compact_backward=1.0,
                  gate_from_cache=1.0, zeta=regulation.sample_efficiency(counts, epoch + 1),
                  skipped_epoch=1.0)
      yield epoch, logs
      epoch += 1


class FiniteLogsGuard(keras.callbacks.Callback):
  """Stops the stage at the end of the first epoch whose logs are not finite.

  Runs before `EpochHistory` and `CheckpointCallback`, so a diverged epoch
  reaches neither history.json (strict JSON has no NaN) nor the checkpoint: the
  backup keeps the last good epoch, and nothing downstream sees the NaN.

  Args:
    stage_name: the stage, for the message ("teacher", "student-hybrid").
    backup: the stage's checkpoint directory, for the message.
  """

  def __init__(self, stage_name, backup):
    super().__init__()
    self.stage_name = stage_name
    self.backup = backup

  def on_epoch_end(self, epoch, logs=None):
    for key, value in (logs or {}).items():
      if not math.isfinite(float(value)):
        kept = (f"the checkpoint of epoch {epoch - 1} is kept in {self.backup}" if epoch
                else "nothing was checkpointed")
        raise config_lib.ConfigError(
            f"{self.stage_name}: epoch {epoch}: {key} is {float(value)}; training stopped "
            f"({kept}); try a lower learning rate")


class EpochHistory(keras.callbacks.Callback):
  """Keeps every epoch's logs in `<stage>/history.json`, surviving resumes.

  `record` is the one path for an epoch's logs: `fit` reaches it through
  `on_epoch_end`, skipped idle epochs through a direct call; each recorded
  epoch then goes to every listener (e.g. the tracker's `log_epoch`).
  """

  def __init__(self, path, is_chief, listeners=()):
    super().__init__()
    self.path = path
    self.is_chief = is_chief
    self.listeners = list(listeners)
    self.epochs = {}
    if os.path.exists(path):
      entries = validation.read_json(path, list)
      if not all(isinstance(e, dict) and isinstance(e.get("epoch"), int) for e in entries):
        raise config_lib.ConfigError(f"{path}: expected a list of per-epoch logs with an "
                                     "integer 'epoch' each")
      self.epochs = {e["epoch"]: e for e in entries}

  def trim(self, start_epoch):
    self.epochs = {e: v for e, v in self.epochs.items() if e < start_epoch}

  def on_epoch_end(self, epoch, logs=None):
    self.record(epoch, logs)

  def record(self, epoch, logs):
    """Stores one epoch's logs (and writes the file on the chief); tells the listeners."""
    entry = {"epoch": epoch}
    entry.update({k: float(v) for k, v in (logs or {}).items()})
    self.epochs[epoch] = entry
    if self.is_chief:
      io_utils.write_json(self.path, self.as_list())
    for listener in self.listeners:
      listener(epoch, logs)

  def as_list(self):
    return [self.epochs[e] for e in sorted(self.epochs)]


class CheckpointCallback(keras.callbacks.Callback):
  """Saves a `resume.StageCheckpoint` at the end of every epoch."""

  def __init__(self, checkpoint):
    super().__init__()
    self.checkpoint = checkpoint

  def on_epoch_end(self, epoch, logs=None):
    self.checkpoint.save(epoch + 1)

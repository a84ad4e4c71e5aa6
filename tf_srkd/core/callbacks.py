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

from tf_srkd.errors import ConfigError
from tf_srkd.storage import io_utils
from tf_srkd.core import regulation
from tf_srkd.core import staleness as staleness_lib
from tf_srkd.storage import checked_reads

#: Participation fraction under which `compact` beats `masked`. Measured on
#: LeNet-5/MNIST (bench/RESULTS.md, table 2 and the step breakdown): the
#: inference pass costs ~0.30 of a training step and compact is still cheaper
#: than masked at 50 % participation (0.85 vs 1.03 of a plain epoch); the
#: break-even lies near 0.65-0.7.
COMPACT_BREAK_EVEN = 0.65

#: `auto`'s backward for a regulated run's first epoch, which has no
#: previous participation to choose from. At eta(0) = 0 the participants are
#: the misclassified samples; bench/timing/trickle_floor.py (section `auto_epoch0`)
#: times epoch 0 both ways from the same weights. "masked" until that
#: measurement says "compact" is cheaper.
AUTO_FIRST_BACKWARD = "masked"


#: What the per-epoch console line shows: what a person reads while a stage trains. The
#: diagnostics (loss parts, gate_from_cache, compact_backward, skipped_epoch, zeta) stay
#: in the epoch logs, so history.json and MLflow keep every one of them.
CONSOLE_KEYS = ("loss", "accuracy", "participation_fraction", "eta", "val_loss", "val_accuracy")


def _shown(logs):
  if logs is None:
    return None
  return {("participation" if k == "participation_fraction" else k): v
          for k, v in logs.items() if k in CONSOLE_KEYS}


class ConsoleProgbar(keras.callbacks.ProgbarLogger):
  """Keras' progress bar and epoch line, showing `CONSOLE_KEYS` only.

  Given to `fit` after the callbacks that add to the logs (`RegulationSchedule`), it
  replaces the one Keras would add; the logs other callbacks see are not changed.
  """

  def on_train_batch_end(self, batch, logs=None):
    super().on_train_batch_end(batch, _shown(logs))

  def on_test_batch_end(self, batch, logs=None):
    super().on_test_batch_end(batch, _shown(logs))

  def on_epoch_end(self, epoch, logs=None):
    super().on_epoch_end(epoch, _shown(logs))

  def on_test_end(self, logs=None):
    super().on_test_end(_shown(logs))


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
    elif model.backward == "auto" and epoch == 0:
      model.set_backward(AUTO_FIRST_BACKWARD if math.isfinite(self.alpha) else "masked")

  def on_epoch_end(self, epoch, logs=None):
    self.model.policy.on_epoch_end(epoch)
    if logs is None:
      return
    self.previous_fraction = float(logs.get("participation_fraction", 1.0))
    logs["eta"] = self._eta if math.isfinite(self._eta) else 1.0
    logs["skipped_epoch"] = 0.0
    logs["compact_backward"] = float(self.model.active_backward == "compact")
    counts = self.model.participation_counts()
    trained = getattr(self.model, "epochs_trained", None)  # `tf_srkd.api`: over every fit.
    if trained is not None:
      trained.assign_add(1)
      logs["zeta"] = regulation.sample_efficiency(counts, int(trained.numpy()))
    else:
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
  from the cache too when margins are reused (`--reuse_margins`;
  `gate_from_cache` in the logs), with no forward pass.

  The epoch's values come from `margin_cache.MarginCacheRollover` (which must
  run before this callback); the model is unchanged iff the optimizer's
  iteration count did not move during the epoch.

  Only the compact gate is cached: with masked backward the gate comes from
  the training-mode forward, which for dropout models is not the cached one.

  Under a staleness bound (`staleness`), rows the bound keeps do not take part
  and need no forward pass either, so an epoch is also provably idle when every
  row is current or kept, and no current row takes part; the kept rows age
  through the skipped epochs as they would through run ones.
  """

  def __init__(self, labels, alpha, epochs, staleness=None):
    super().__init__()
    self.labels = np.asarray(labels, np.int32)
    self.alpha = float(alpha)
    self.epochs = int(epochs)
    self.staleness = staleness
    self.idle_from = None
    self.cache = None  # (margins, predictions, stamps, current) for unchanged weights, or None.
    self._iterations = None

  def on_epoch_begin(self, epoch, logs=None):
    self._iterations = int(self.model.optimizer.iterations.numpy())

  def on_epoch_end(self, epoch, logs=None):
    self.idle_from = None
    self.cache = None
    carry = self.model.margin_cache.carry  # None after a masked epoch.
    iterations = int(self.model.optimizer.iterations.numpy())
    if carry is None or iterations != self._iterations:
      return  # The weights moved during the epoch: earlier rows are stale.
    margins, predictions, versions, stamps = carry
    current = np.asarray(versions) == iterations + 1
    if self.staleness is None and not current.all():
      return  # Some row was not gated in this epoch's compact pass.
    self.cache = (margins, predictions, stamps, current)
    if epoch + 1 < self.epochs and self._provably_idle(epoch + 1):
      self.idle_from = epoch + 1
      self.model.stop_training = True

  def _provably_idle(self, epoch):
    """Whether no sample takes part in `epoch` for an unchanged model.

    Current rows are gated from the cache; under a staleness bound, every other row
    must be one the bound keeps (it then does not take part): a row the step would
    forward has an unknown fresh margin.
    """
    margins, predictions, stamps, current = self.cache
    eta = regulation.threshold(self.alpha, epoch)
    if self.staleness is None:
      known = current
    else:
      kept = np.asarray(staleness_lib.keeps_cached(
          stamps, predictions, self.labels, margins, epoch, eta, self.staleness))
      known = current | kept
    if not known.all():
      return False
    participants = current & ((predictions != self.labels) | (margins < eta))
    return not participants.any()

  def idle_epochs(self):
    """Yields (epoch, logs) for each idle epoch from `idle_from` up to the first busy one.

    The logs are those a run of the epoch would have produced: losses and
    participation 0, the cached accuracy, eta, zeta, and `skipped_epoch` 1.
    """
    predictions = self.cache[1]
    counts = self.model.participation_counts()
    accuracy = float(np.mean(predictions == self.labels))
    epoch = self.idle_from
    while epoch < self.epochs and self._provably_idle(epoch):
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
        raise ConfigError(
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
      entries = checked_reads.read_json(path, list)
      if not all(isinstance(e, dict) and isinstance(e.get("epoch"), int) for e in entries):
        raise ConfigError(f"{path}: expected a list of per-epoch logs with an "
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

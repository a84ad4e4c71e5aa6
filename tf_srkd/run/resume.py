"""Crash-safe resume of one training stage, on `tf.train.CheckpointManager`.

After every epoch the chief saves the network weights, the optimizer state
(Adam's moments and iteration count), the participation counts, the last
compact epoch's margin cache (`margin_cache.MarginCache.carry`: margins,
predictions and their versions) and the next epoch index under
`<stage_dir>/backup`. With the cache, a resumed run serves the same rows from
it and skips the same idle epochs as an uninterrupted one. A checkpoint written
before the cache was saved (no `margins` entry) still restores; the run then
recomputes every margin, which is exact too.
Restarting the same command restores them and continues with the next epoch;
because the batch order and augmentation are pure functions of (seed, epoch),
the resumed run is identical to an uninterrupted one.

Participation lives in an on-read variable whose cross-replica restore would
divide the counts by the replica count, so the checkpoint holds an ordinary
snapshot variable and the restore writes it back exactly
(`SelfRegulatedModel.set_participation`). A gate policy's per-sample state
(`GatePolicy.state()`: InfoBatch's scores, Selective Backprop's loss history)
is saved the same way, as `policy_<name>` snapshots; Algorithm 1 has none.
"""

from typing import Optional

import numpy as np
import tensorflow as tf

from tf_srkd.run import config as config_lib


class StageCheckpoint:
  """Checkpoint of one stage's training state.

  Args:
    directory: where checkpoints go (`<stage_dir>/backup`).
    model: the `SelfRegulatedModel` being trained (its optimizer must be built).
    is_chief: only the chief writes; every worker reads.
  """

  def __init__(self, directory, model, is_chief=True):
    self.directory = directory
    self.model = model
    self.is_chief = is_chief
    n = model.num_examples
    with tf.init_scope():
      self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
      self._participation = tf.Variable(np.zeros([n], np.int32), trainable=False)
      self._margins = _CarriedMargins(n)
      self._policy_state = {name: tf.Variable(value, trainable=False)
                            for name, value in model.policy.state().items()}
    state = dict(network=model.network, optimizer=model.optimizer, epoch=self._epoch,
                 participation=self._participation,
                 **{f"policy_{name}": v for name, v in self._policy_state.items()})
    self._checkpoint = tf.train.Checkpoint(margins=self._margins, **state)
    self._without_margins = tf.train.Checkpoint(**state)  # Checkpoints written without a margin cache.
    self._manager = tf.train.CheckpointManager(self._checkpoint, directory, max_to_keep=1)

  def restore(self, epochs: Optional[int] = None) -> int:
    """Restores the latest checkpoint if any; returns the epoch to start from.

    Args:
      epochs: the stage's epoch count, the upper bound of a sane saved epoch.

    Raises:
      config.ConfigError: the checkpoint is damaged or does not fit this stage;
        resuming from it would train from garbage, and silently restarting at 0
        would hide the damage.
    """
    latest = self._manager.latest_checkpoint
    if not latest:
      return 0
    try:
      has_margins = any(name.startswith("margins/")
                        for name, _ in tf.train.list_variables(latest))
      checkpoint = self._checkpoint if has_margins else self._without_margins
      checkpoint.restore(latest).assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as e:
      raise self._damaged(latest, " ".join(str(e).split())[:160]) from e
    epoch, counts = int(self._epoch.numpy()), self._participation.numpy()
    if not 0 < epoch <= (epochs if epochs is not None else epoch):
      raise self._damaged(latest, f"saved epoch {epoch}, expected 1 to {epochs}")
    if counts.size and (counts.min() < 0 or counts.max() > epoch):
      raise self._damaged(latest, f"participation counts outside [0, {epoch}]")
    iterations = int(self.model.optimizer.iterations.numpy())
    carry = self._margins.carry() if has_margins else None
    if carry is not None and not 0 <= carry[2].min() <= carry[2].max() <= iterations + 1:
      raise self._damaged(latest, f"margin versions outside [0, {iterations + 1}]")
    self.model.set_participation(counts)
    self.model.margin_cache.carry = carry
    self.model.policy.load_state({k: v.numpy() for k, v in self._policy_state.items()})
    return epoch

  def _damaged(self, latest, problem):
    return config_lib.ConfigError(
        f"{latest}: damaged checkpoint ({problem}); delete {self.directory} to restart this "
        "stage from epoch 0")

  def save(self, next_epoch: int):
    """Snapshots the state reached at the end of epoch `next_epoch - 1`.

    Every worker must call this (reading participation is a collective under a
    strategy); only the chief writes.
    """
    counts = self.model.participation_counts()
    if not self.is_chief:
      return
    self._epoch.assign(next_epoch)
    self._participation.assign(counts)
    self._margins.assign(self.model.margin_cache.carry)
    for name, value in self.model.policy.state().items():
      self._policy_state[name].assign(value)
    self._manager.save(checkpoint_number=next_epoch)



class _CarriedMargins(tf.Module):
  """Plain-variable snapshot of `MarginCache.carry` (the model's copies are
  distributed variables whose cross-replica restore would not be exact)."""

  def __init__(self, n):
    super().__init__()
    self.present = tf.Variable(0, dtype=tf.int32, trainable=False)
    self.margin = tf.Variable(np.zeros([n], np.float32), trainable=False)
    self.prediction = tf.Variable(np.zeros([n], np.int32), trainable=False)
    self.version = tf.Variable(np.zeros([n], np.int32), trainable=False)

  def assign(self, carry):
    """Snapshots `carry` ((margins, predictions, versions) or None)."""
    self.present.assign(int(carry is not None))
    if carry is not None:
      for variable, values in zip((self.margin, self.prediction, self.version), carry):
        variable.assign(values)

  def carry(self):
    """The restored carry, or None when the saved run had none."""
    if not int(self.present.numpy()):
      return None
    return (self.margin.numpy(), self.prediction.numpy(), self.version.numpy())

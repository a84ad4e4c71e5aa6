"""Crash-safe resume of one training stage, on `tf.train.CheckpointManager`.

After every epoch the chief saves the network weights, the optimizer state
(Adam's moments and iteration count), the participation counts, the last
compact epoch's margin cache (`margin_cache.MarginCache.carry`: margins,
predictions, their versions and epoch stamps) and the next epoch index under
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
      self._unstamped_margins = _CarriedMargins(n, stamps=False)
      self._policy_state = {name: tf.Variable(value, trainable=False)
                            for name, value in model.policy.state().items()}
    state = dict(network=model.network, optimizer=model.optimizer, epoch=self._epoch,
                 participation=self._participation,
                 **{f"policy_{name}": v for name, v in self._policy_state.items()})
    if model.trained_extras():  # Absent otherwise: earlier checkpoints keep their layout.
      state["trained_extras"] = model.trained_extras()
    self._checkpoint = tf.train.Checkpoint(margins=self._margins, **state)
    # Checkpoints written without a margin cache, or with one without stamps.
    self._without_margins = tf.train.Checkpoint(**state)
    self._unstamped = tf.train.Checkpoint(margins=self._unstamped_margins, **state)
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
      names = [name for name, _ in tf.train.list_variables(latest)]
      has_margins = any(name.startswith("margins/") for name in names)
      stamped = any(name.startswith("margins/stamp/") for name in names)
      checkpoint, margins = ((self._checkpoint, self._margins) if stamped else
                             (self._unstamped, self._unstamped_margins) if has_margins else
                             (self._without_margins, None))
      checkpoint.restore(latest).assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as e:
      raise self._damaged(latest, " ".join(str(e).split())[:160]) from e
    epoch, counts = int(self._epoch.numpy()), self._participation.numpy()
    if not 0 < epoch <= (epochs if epochs is not None else epoch):
      raise self._damaged(latest, f"saved epoch {epoch}, expected 1 to {epochs}")
    if counts.size and (counts.min() < 0 or counts.max() > epoch):
      raise self._damaged(latest, f"participation counts outside [0, {epoch}]")
    iterations = int(self.model.optimizer.iterations.numpy())
    carry = margins.carry() if margins is not None else None
    if carry is not None and not 0 <= carry[2].min() <= carry[2].max() <= iterations + 1:
      raise self._damaged(latest, f"margin versions outside [0, {iterations + 1}]")
    if carry is not None and not 0 <= carry[3].min() <= carry[3].max() <= epoch:
      raise self._damaged(latest, f"margin stamps outside [0, {epoch}]")
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
  distributed variables whose cross-replica restore would not be exact).

  Args:
    n: examples.
    stamps: False for checkpoints written before values carried their epoch
      stamps; their values restore with stamp 0 ("never computed"), which only a
      `--margin_refresh=bounded` run reads, and such runs always wrote stamps.
  """

  def __init__(self, n, stamps=True):
    super().__init__()
    self.n = n
    self.present = tf.Variable(0, dtype=tf.int32, trainable=False)
    self.margin = tf.Variable(np.zeros([n], np.float32), trainable=False)
    self.prediction = tf.Variable(np.zeros([n], np.int32), trainable=False)
    self.version = tf.Variable(np.zeros([n], np.int32), trainable=False)
    if stamps:
      self.stamp = tf.Variable(np.zeros([n], np.int32), trainable=False)

  def _variables(self):
    return tuple(v for v in (self.margin, self.prediction, self.version,
                             getattr(self, "stamp", None)) if v is not None)

  def assign(self, carry):
    """Snapshots `carry` ((margins, predictions, versions, stamps) or None)."""
    self.present.assign(int(carry is not None))
    if carry is not None:
      for variable, values in zip(self._variables(), carry):
        variable.assign(values)

  def carry(self):
    """The restored carry, or None when the saved run had none."""
    if not int(self.present.numpy()):
      return None
    values = tuple(v.numpy() for v in self._variables())
    if len(values) == 3:
      values += (np.zeros([self.n], np.int32),)
    return values

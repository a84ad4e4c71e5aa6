"""Crash-safe resume of one training stage, on `tf.train.CheckpointManager`.

After every epoch the chief saves the network weights, the optimizer state
(Adam's moments and iteration count), the participation counts and the next
epoch index under `<stage_dir>/backup`. The idle-epoch gate cache is not saved:
a resumed run starts with it invalid and recomputes it, which is exact because
an idle epoch that is run instead of skipped changes nothing.
Restarting the same command restores them and continues with the next epoch;
because the batch order and augmentation are pure functions of (seed, epoch),
the resumed run is identical to an uninterrupted one.

Participation lives in an on-read variable whose cross-replica restore would
divide the counts by the replica count, so the checkpoint holds an ordinary
snapshot variable and the restore writes it back exactly
(`SelfRegulatedModel.set_participation`).
"""


import numpy as np
import tensorflow as tf


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
    self._checkpoint = tf.train.Checkpoint(
        network=model.network, optimizer=model.optimizer, epoch=self._epoch,
        participation=self._participation)
    self._manager = tf.train.CheckpointManager(self._checkpoint, directory, max_to_keep=1)

  def restore(self) -> int:
    """Restores the latest checkpoint if any; returns the epoch to start from."""
    latest = self._manager.latest_checkpoint
    if not latest:
      return 0
    self._checkpoint.restore(latest).assert_existing_objects_matched()
    self.model.set_participation(self._participation.numpy())
    return int(self._epoch.numpy())

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
    self._manager.save(checkpoint_number=next_epoch)


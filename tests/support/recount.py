"""Brute-force participation recount shared by the trainer and multi-worker tests."""

import keras
import numpy as np

from tf_srkd.data import arrays as data
from tf_srkd.core import regulation


class BruteForceRecount(keras.callbacks.Callback):
  """Recomputes every global batch's gate from the weights *before* its step.

  Valid for models whose training- and inference-mode outputs agree (LeNet).
  """

  def __init__(self, split, batch_size, seed, alpha, epochs):
    super().__init__()
    self.counts = np.zeros(split.size, np.int64)
    self.per_epoch = []
    self.alpha = alpha
    self.batches = list(data.train_dataset(split, batch_size, seed, 0, epochs).as_numpy_iterator())
    self.step = 0
    self.epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch
    self.per_epoch.append(0)

  def on_train_batch_begin(self, batch, logs=None):
    features, labels = self.batches[self.step]
    self.step += 1
    logits = self.model.network(features["image"], training=False)
    g = regulation.gate(logits, labels, regulation.threshold(self.alpha, self.epoch))[0].numpy()
    np.add.at(self.counts, features["id"], g.astype(np.int64))
    self.per_epoch[-1] += int(g.sum())

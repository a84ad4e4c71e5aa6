"""Precise BatchNorm: moving statistics recomputed for the final weights.

During training, BatchNormalization keeps exponential moving averages of its
batch statistics (momentum 0.99 in Keras, 0.999 in several `keras.applications`),
taken while the weights were still changing. After a short schedule (a few
hundred steps) they lag far behind the final weights, and the model in inference
mode can answer one class while the same weights with batch statistics are
fine. `recompute` replaces them by the average of each layer's batch statistics
over a fixed number of training batches with the final weights, as "precise BN"
(Wu & Johnson, "Rethinking Batch in BatchNorm", 2021) and
`torch.optim.swa_utils.update_bn` do: the mean of the batch means and the mean of
the batch variances, every batch weighted alike.

A frozen BatchNormalization (`trainable=False`) keeps its statistics: Keras runs
it in inference mode even in a training forward.
"""

from typing import List

import numpy as np
import tensorflow as tf

from tf_srkd.data import arrays as data


def batch_norm_layers(network) -> List:
  """The trainable BatchNormalization layers of `network`, nested ones included."""
  import keras  # pylint: disable=import-outside-toplevel

  return [layer for layer in network._flatten_layers(include_self=False)  # pylint: disable=protected-access
          if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
          and not layer.renorm]


def batch_ids(num_examples: int, batch_size: int, batches: int, seed: int) -> List[np.ndarray]:
  """The rows of each batch: a seeded permutation cut into full batches (at most one
  pass over the data; one short batch when the data hold less than one batch)."""
  order = np.random.default_rng([seed, 0xb2]).permutation(num_examples)
  size = min(batch_size, num_examples)
  count = max(1, min(batches, num_examples // size))
  return [np.sort(order[i * size:(i + 1) * size]) for i in range(count)]


def recompute(network, images, batch_size: int, batches: int, seed: int) -> int:
  """Sets every BatchNorm layer's moving mean and variance to its average batch
  statistics over `batches` training batches with the current weights.

  Args:
    network: a Keras model taking [0, 1] images.
    images: the training images, raw uint8 (in memory or `streaming` on disk).
    batch_size: rows per batch (the stage's training batch size).
    batches: how many batches (at most one pass over `images`).
    seed: the batches' seed.

  Returns:
    The number of batches used (0: no trainable BatchNormalization, nothing changed).
  """
  layers = batch_norm_layers(network)
  if not layers or batches <= 0:
    return 0
  momenta = [layer.momentum for layer in layers]
  # Momentum 0: after a training forward each moving statistic *is* that batch's
  # statistic (the forward itself normalises with batch statistics either way), so
  # one traced function reads every layer's batch statistics at graph speed.
  for layer in layers:
    layer.momentum = 0.0
  try:

    @tf.function(reduce_retracing=True)
    def batch_statistics(x):
      network(x, training=True)
      return ([tf.identity(layer.moving_mean) for layer in layers],
              [tf.identity(layer.moving_variance) for layer in layers])

    ids = batch_ids(len(images), batch_size, batches, seed)
    sums_mean = [np.zeros(layer.moving_mean.shape, np.float64) for layer in layers]
    sums_var = [np.zeros(layer.moving_variance.shape, np.float64) for layer in layers]
    for rows in ids:
      means, variances = batch_statistics(data.preprocess(data.take_rows(images, rows)))
      for i, (m, v) in enumerate(zip(means, variances)):
        sums_mean[i] += m.numpy()
        sums_var[i] += v.numpy()
    for layer, s_m, s_v in zip(layers, sums_mean, sums_var):
      layer.moving_mean.assign((s_m / len(ids)).astype(np.float32))
      layer.moving_variance.assign((s_v / len(ids)).astype(np.float32))
  finally:
    for layer, momentum in zip(layers, momenta):
      layer.momentum = momentum
  return len(ids)

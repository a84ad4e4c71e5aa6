"""Selective Backprop: Jiang et al., "Accelerating deep learning by focusing on the
biggest losers", arXiv 1910.00762 (2019).

Every sample of a batch goes through a forward pass; a sample with loss L takes
part in the backward pass with probability

  P(L) = percentile(L among the recent losses) ** beta

(`--sb_beta`; higher beta is more selective), the percentile being the fraction
of recent losses <= L, ties sharing their mean rank (`keep_probability`). The reference implementation's recent losses are the
last R = 1024 losses seen (two batches of 512); here they are the losses of the
current *global* batch (every replica's rows, gathered), a window whose content
does not depend on how the batch is split over replicas, so the decisions are
exact under any strategy (docs/choices.md). Sample i is kept iff
u[i] < P(L_i), u = `base.uniforms("selective_backprop", seed, n, N)`.

The gate's forward runs in inference mode, like the compact step's; its loss is
the stage's own per-sample objective (cross-entropy for a teacher, KD + lambda
CE for a student), unweighted. Each sample's gate loss of the last epoch is
kept (`record["losses"]`) so the rule can be checked from outside.
"""

import numpy as np
import tensorflow as tf

from tf_srkd.core import distributed
from tf_srkd.core.gates import base


def global_batch(values):
  """The real rows' `values` of every replica of the global batch, in some order.

  Replicas may hold different row counts (the last batch of an epoch); each is
  padded with +inf to the largest before the gather, and the pads sort last.

  Returns:
    (gathered values with +inf pads, the number of real values).
  """
  ctx = tf.distribute.get_replica_context()
  n = tf.shape(values)[0]
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return values, n
  sizes = ctx.all_gather(tf.reshape(n, [1]), axis=0)
  pad = tf.fill([tf.reduce_max(sizes) - n], tf.constant(float("inf"), values.dtype))
  return ctx.all_gather(tf.concat([values, pad], 0), axis=0), tf.reduce_sum(sizes)


def keep_probability(losses, reference, count, beta):
  """P(L) = percentile(L) ** beta for each of `losses`, with the reference
  implementation's percentile, `scipy.stats.percentileofscore(kind="rank")`:

    percentile(L) = (#{ref < L} + #{ref <= L} + [some ref == L]) / (2 count)

  For a loss found once in the reference this is #{ref <= L} / count; tied losses
  share the mean of their ranks. The tie rule matters when a network collapses to
  one output for every input: its losses then take one value per class, and
  ranking ties at the top (#{ref <= L} / count = 1) would keep a whole class with
  probability 1 whatever beta is.

  Args:
    losses: [rows] the losses to rank.
    reference: the recent losses (+inf entries are padding, never counted).
    count: the number of real reference losses.
    beta: the selectivity exponent.
  """
  ordered = tf.sort(tf.cast(reference, tf.float32))
  values = tf.cast(losses, tf.float32)
  below = tf.searchsorted(ordered, values, side="left")
  at_most = tf.searchsorted(ordered, values, side="right")
  ranks = below + at_most + tf.cast(at_most > below, below.dtype)
  fraction = tf.cast(ranks, tf.float32) / tf.cast(2 * tf.maximum(count, 1), tf.float32)
  return tf.pow(fraction, tf.cast(beta, tf.float32))


class SelectiveBackprop(base.GatePolicy):
  """Keep with probability percentile(loss) ** beta (module doc)."""

  name = "selective_backprop"

  def create_variables(self):
    self.uniform = self.table(np.zeros([self.num_examples], np.float32), "sb_uniform")
    self.losses = self.accumulator(self.num_examples, "sb_losses")

  def describe(self):
    return f"selective_backprop beta={self.settings.sb_beta:g}"

  def on_epoch_begin(self, epoch):
    uniform = base.uniforms(self.name, self.seed, epoch, self.num_examples)
    self.uniform.assign(uniform)
    self.zero(self.losses)
    self.record = {"epoch": epoch, "uniform": uniform}

  def on_epoch_end(self, epoch):
    self.record["losses"] = self.read(self.losses)

  def decide(self, model, ids, rows, labels):
    logits, taps = model.forward(rows["image"], training=False)
    losses, _ = model._per_sample_loss(rows, labels, logits, taps)  # pylint: disable=protected-access
    losses = tf.stop_gradient(losses)
    n = tf.shape(ids)[0]
    reference, count = global_batch(losses[:n])
    probability = keep_probability(losses, reference, count, self.settings.sb_beta)
    gate = tf.cast(tf.gather(self.uniform, rows["id"]) < probability, tf.float32)
    distributed.scatter_add_by_id(self.losses, ids, losses[:n])
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return base.Decision(gate=gate, scale=tf.ones_like(gate), predicted=predicted)

"""Exact reuse of the compact gate's margins and predictions, per sample.

A sample's margin delta and predicted class from the inference-mode gate pass
depend only on the weights, and the weights only change when the optimizer
applies an update (its `iterations` counter moves; an empty batch moves
neither). So every value is stored with its *version*: the optimizer iteration
at which it was computed, plus 1 (0 means "never computed"). At a step whose
optimizer is at iteration k, a row whose stored version is k + 1 carries the
margin the forward pass would give now (mathematically: bit-for-bit up to the
batch composition of the pass that made it, as for any row-wise inference),
so only the other rows run through the network. A whole epoch without an
update leaves every version current; that is the idle-epoch case
(`callbacks.IdleEpochSkipper`). Each value also carries a *stamp*, the epoch it
was computed in by a forward pass (`staleness.stamp_of`): under
`--margin_refresh=bounded` a row may keep an older, inexact value for a bounded
number of epochs (`staleness.keeps_cached`); it then keeps its version and stamp.

State, in `MarginCache`:
  * `cached_*`: this epoch's values, on-read SUM variables: each id is written
    once per epoch, by the one replica that sees it, onto zeros, so the summed
    read is exact under any strategy;
  * `previous_*`: the last compact epoch's values, mirrored (every replica can
    read any id), copied at epoch start by `MarginCacheRollover`;
  * `carry`: that last epoch's values on the host (numpy), which the rollover
    copies in, the idle-epoch skipper reads, and the resume checkpoint saves;
  * `epoch`: the epoch being trained (set by the rollover), for the stamps.
"""

import keras
import numpy as np
import tensorflow as tf

from tf_srkd.core import distributed
from tf_srkd.core import staleness as staleness_lib

_VARIABLES = ("margin", "prediction", "version", "stamp")
_DTYPES = {"margin": np.float32, "prediction": np.int32, "version": np.int32,
           "stamp": np.int32}


def current_version(iterations):
  """The version a value computed now gets: the optimizer iteration + 1 (int32)."""
  return tf.cast(iterations, tf.int32) + 1


class MarginCache:
  """The per-sample margin/prediction/version arrays of one model (see the module doc).

  Create it under the strategy's scope (the model's constructor).

  Args:
    num_examples: N; sample ids are in [0, N).
  """

  def __init__(self, num_examples):
    self.num_examples = int(num_examples)
    for name in _VARIABLES:
      zeros = np.zeros([self.num_examples], _DTYPES[name])
      setattr(self, f"cached_{name}", keras.Variable(
          zeros, dtype=zeros.dtype.name, trainable=False, synchronization="on_read",
          aggregation="sum", name=f"cached_{name}"))
      setattr(self, f"previous_{name}", keras.Variable(
          zeros, dtype=zeros.dtype.name, trainable=False, aggregation="only_first_replica",
          name=f"previous_{name}"))
    self.epoch = keras.Variable(0, dtype="int32", trainable=False, name="cache_epoch")
    self.carry = None  # (margins, predictions, versions, stamps) of the last compact epoch.
    self._reset = None

  # -- in the step -----------------------------------------------------------

  def margins_for(self, ids, images, labels, version, forward, bounded=None):
    """(delta, predicted, from_cache, versions, stamps) of a batch, forwarding only the
    rows whose cached values may not be used.

    Args:
      ids: int32 [b] sample ids of the rows (padding rows may repeat an id).
      images: [b, ...] the rows' images.
      labels: [b] their labels.
      version: `current_version(optimizer.iterations)`.
      forward: `fn(images, labels) -> (delta, predicted)`, the inference gate pass.
      bounded: None (exact: only values of the current weights are reused), or
        (eta, `staleness.Staleness`): rows that `staleness.keeps_cached` allows keep
        their older values too.

    Returns:
      float32 [b] margins, int32 [b] predictions, float32 [b] 1 where the row's
      values came from the cache, and the int32 [b] versions and stamps to record.
    """
    cached_version = tf.gather(self.previous_version, ids)
    fresh = tf.equal(cached_version, version)
    cached_delta = tf.gather(self.previous_margin, ids)
    cached_predicted = tf.gather(self.previous_prediction, ids)
    cached_stamp = tf.gather(self.previous_stamp, ids)
    keep = fresh
    versions = tf.fill(tf.shape(ids), version)
    if bounded is not None:
      eta, bound = bounded
      held = tf.logical_and(tf.logical_not(fresh), staleness_lib.keeps_cached(
          cached_stamp, cached_predicted, labels, cached_delta, self.epoch, eta, bound))
      keep = tf.logical_or(fresh, held)
      versions = tf.where(held, cached_version, versions)
    # A stamp is the epoch of the forward pass that computed the value: a reused value
    # keeps its own, so an idle epoch run or skipped leaves the same stamps.
    stamps = tf.where(keep, cached_stamp, tf.fill(tf.shape(ids), staleness_lib.stamp_of(self.epoch)))
    stale = tf.reshape(tf.where(tf.logical_not(keep)), [-1])
    n_stale, n = tf.size(stale), tf.size(ids)

    def every_row():  # A busy epoch: the same pass as without the cache.
      return forward(images, labels)

    def stale_rows():
      delta, predicted = forward(tf.gather(images, stale), tf.gather(labels, stale))
      where = tf.expand_dims(stale, 1)
      return (tf.tensor_scatter_nd_update(cached_delta, where, delta),
              tf.tensor_scatter_nd_update(cached_predicted, where, predicted))

    def no_row():
      return cached_delta, cached_predicted

    delta, predicted = tf.cond(
        tf.equal(n_stale, n), every_row,
        lambda: tf.cond(n_stale > 0, stale_rows, no_row))
    return delta, predicted, tf.cast(keep, tf.float32), versions, stamps

  def record(self, ids, delta, predicted, versions, stamps=None):
    """Stores this epoch's values of the real rows `ids` (each id once per epoch).

    `versions` and `stamps` are per row (a scalar version is broadcast; stamps
    default to this epoch's).
    """
    versions = tf.broadcast_to(versions, tf.shape(ids))
    if stamps is None:
      stamps = tf.fill(tf.shape(ids), staleness_lib.stamp_of(self.epoch))
    distributed.scatter_add_by_id(self.cached_margin, ids, delta)
    distributed.scatter_add_by_id(self.cached_prediction, ids, predicted)
    distributed.scatter_add_by_id(self.cached_version, ids, versions)
    distributed.scatter_add_by_id(self.cached_stamp, ids, stamps)

  # -- between epochs (host) ---------------------------------------------------

  def begin_epoch(self, strategy, reuse, epoch):
    """Zeroes this epoch's arrays; with `reuse`, makes `carry` readable by the step."""
    self.epoch.assign(int(epoch))
    if reuse:
      if self.carry is None:  # Nothing known: no version current, no stamp held.
        self.previous_version.assign(np.zeros([self.num_examples], np.int32))
        self.previous_stamp.assign(np.zeros([self.num_examples], np.int32))
      else:
        for name, values in zip(_VARIABLES, self.carry):
          getattr(self, f"previous_{name}").assign(values)
    if self._reset is None:  # One trace, kept with the cache.
      variables = [getattr(self, f"cached_{name}") for name in _VARIABLES]

      @tf.function
      def reset():
        for variable in variables:  # Zeros on every replica: the summed read is 0.
          variable.assign(tf.zeros_like(variable))

      self._reset = reset
    strategy.run(self._reset)

  def read(self):
    """This epoch's (margins, predictions, versions, stamps) as numpy (a collective)."""
    return tuple(
        np.asarray(keras.ops.convert_to_numpy(getattr(self, f"cached_{name}").value),
                   _DTYPES[name]) for name in _VARIABLES)


class MarginCacheRollover(keras.callbacks.Callback):
  """Hands each compact epoch's margins to the next epoch (and to `carry`).

  At a compact epoch's start the last compact epoch's values become the step's
  `previous_*` (with `reuse`) and this epoch's arrays are zeroed; at its end
  they are read into `model.margin_cache.carry`. A masked epoch records
  nothing and clears `carry`. Must run after `RegulationSchedule` (which picks
  the epoch's backward) and before `IdleEpochSkipper` (which reads `carry`).

  Args:
    reuse: whether the step reads the cache (`--reuse_margins`).
  """

  def __init__(self, reuse):
    super().__init__()
    self.reuse = bool(reuse)
    self._compact = False

  def on_epoch_begin(self, epoch, logs=None):
    model = self.model
    self._compact = model.regulate and model.active_backward == "compact"
    if self._compact:
      model.margin_cache.begin_epoch(model.distribute_strategy, self.reuse, epoch)

  def on_epoch_end(self, epoch, logs=None):
    cache = self.model.margin_cache
    cache.carry = cache.read() if self._compact else None

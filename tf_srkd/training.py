"""Self-regulated training (Algorithm 1) as a thin `keras.Model` wrapper.

`SelfRegulatedModel` wraps a classifier network and overrides `train_step`:
every sample's gate g (take part or not) is a per-sample mask on the loss, the
loss follows the one normalisation rule of `losses.normalised_loss`, and a batch
in which no sample takes part (globally, over all replicas) leaves the weights
*and* the optimizer state untouched. Participation counts live in a
non-trainable variable indexed by sample id.

Two backward strategies compute the same update:
  * ``masked``: one training-mode forward over the batch decides the gate and
    gives the loss; non-participants get weight 0 (their backward still runs).
  * ``compact``: an inference-mode forward decides the gate, then forward and
    backward run only on the participating rows. For models with dropout the
    inference-mode gate differs from the training-mode one (documented in
    README); for deterministic models both give the same gates.
``auto`` switches between the two per epoch from the previous epoch's
participation fraction (compact below `COMPACT_BREAK_EVEN`).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from tf_srkd import config as config_lib
from tf_srkd import losses
from tf_srkd import regulation

#: Participation fraction under which `compact` beats `masked`. Measured on
#: LeNet-5/MNIST (bench/RESULTS.md, table 2 and the step breakdown): the
#: inference pass costs ~0.30 of a training step and compact is still cheaper
#: than masked at 50 % participation (0.85 vs 1.03 of a plain epoch); the
#: break-even lies near 0.65-0.7.
COMPACT_BREAK_EVEN = 0.65

def apply_if(optimizer, grads, variables, should_apply):
  """`optimizer.apply(grads, variables)` only where `should_apply` is true.

  The skipped branch does nothing at all: no weight, slot or iteration changes.
  Under a distribution strategy the optimizer synchronises replicas with
  `merge_call`, which TensorFlow forbids inside a replica-context `tf.cond`;
  as Keras' own `LossScaleOptimizer` does, the condition is therefore taken in
  cross-replica context. `should_apply` must be identical on every replica.
  """

  def no_op():
    return tf.no_op()

  if not tf.distribute.has_strategy() or tf.__internal__.distribute.strategy_supports_no_merge_call():

    def apply_fn():
      optimizer.apply(grads, variables)
      return tf.no_op()

    tf.cond(should_apply, apply_fn, no_op)
    return

  def cross_replica(distribution, grads, should):
    flag = distribution.experimental_local_results(should)[0]

    def apply_fn():
      distribution.extended.call_for_each_replica(
          lambda g: optimizer.apply(g, variables), args=(grads,))
      return tf.no_op()

    tf.cond(flag, apply_fn, no_op)

  tf.distribute.get_replica_context().merge_call(cross_replica, args=(grads, should_apply))


def global_sum(value):
  """Sum of a per-replica scalar over all replicas (identity without a strategy)."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return value
  return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


def scatter_add_by_id(variable, ids, values):
  """variable[ids] += values for a per-sample [N] state variable.

  A single (non-distributed) variable takes a sparse update, O(batch). An
  on-read variable under a strategy does not implement `scatter_add`, so it
  takes a dense [N] delta on the local replica's copy, which stays exact
  because reads sum the replicas.
  """
  target = getattr(variable, "value", variable)
  if isinstance(target, tf.Variable) and not isinstance(target, tf.distribute.DistributedValues):
    target.scatter_add(tf.IndexedSlices(tf.cast(values, target.dtype), ids))
  else:
    variable.assign_add(tf.scatter_nd(tf.expand_dims(ids, 1), tf.cast(values, variable.dtype),
                                      tf.shape(variable, out_type=tf.int32)))


def _pad_if_empty(features, labels):
  """Appends one all-zero row when a batch is empty, with weight 0.

  TF's oneDNN convolution kernels crash on zero-row batches ("input depth must
  be evenly divisible by filter depth"); a replica can receive an empty batch
  (compact selection, or the last uneven batch of an epoch under a strategy).

  Returns:
    (features, labels, valid): `valid` is float32 1 for real rows, 0 for the pad.
  """
  n = tf.shape(labels)[0]

  def pad():
    padded = tf.nest.map_structure(
        lambda t: tf.concat([t, tf.zeros(tf.concat([[1], tf.shape(t)[1:]], 0), t.dtype)], 0),
        (features, labels))
    return padded + (tf.zeros([1], tf.float32),)

  def keep():
    return features, labels, tf.ones([n], tf.float32)

  features, labels, valid = tf.cond(n > 0, keep, pad)
  return features, labels, valid


class SelfRegulatedModel(keras.Model):
  """Trains `network` with Algorithm 1's per-sample gate.

  Subclasses change the objective by overriding `per_sample_loss`. Features are
  a dict with at least `image` and `id`; labels are integer classes.

  Attributes:
    network: the wrapped classifier (outputs logits); this is what gets saved.
    participation: int32 [N] participation counts v, exact under any strategy
      (on-read synchronised, summed over replicas when read).
    eta: the current threshold; set at each epoch start by `RegulationSchedule`.
  """

  def __init__(self, network, num_examples, *, regulate=True, weight_by_significance=False,
               gate_temperature=1.0, backward="masked", **kwargs):
    super().__init__(**kwargs)
    if backward not in config_lib.BACKWARDS:
      raise ValueError(f"backward must be one of {config_lib.BACKWARDS}, got {backward!r}")
    self.network = network
    self.num_examples = int(num_examples)
    self.regulate = bool(regulate)
    self.weight_by_significance = bool(weight_by_significance)
    self.gate_temperature = float(gate_temperature)
    self.backward = backward
    # `auto` starts masked: early epochs have most samples taking part.
    self.active_backward = "compact" if backward == "compact" else "masked"
    self.participation = keras.Variable(
        np.zeros([self.num_examples], np.int32), dtype="int32", trainable=False,
        synchronization="on_read", aggregation="sum", name="participation")
    self.eta = keras.Variable(0.0, dtype="float32", trainable=False, name="eta")
    # Margins and predictions from the compact (inference-mode) gate pass, by id.
    # Each epoch every id is written by exactly one replica onto zeros, so the
    # on-read sum is the exact value (see `IdleEpochSkipper`).
    self.cached_margin = keras.Variable(
        np.zeros([self.num_examples], np.float32), dtype="float32", trainable=False,
        synchronization="on_read", aggregation="sum", name="cached_margin")
    self.cached_prediction = keras.Variable(
        np.zeros([self.num_examples], np.int32), dtype="int32", trainable=False,
        synchronization="on_read", aggregation="sum", name="cached_prediction")
    # The previous epoch's cache, mirrored so every replica can read any id, and
    # whether it still describes the current weights (`IdleEpochSkipper` sets
    # it at epoch start; the first update of the epoch clears it).
    self.previous_margin = keras.Variable(
        np.zeros([self.num_examples], np.float32), dtype="float32", trainable=False,
        aggregation="only_first_replica", name="previous_margin")
    self.previous_prediction = keras.Variable(
        np.zeros([self.num_examples], np.int32), dtype="int32", trainable=False,
        aggregation="only_first_replica", name="previous_prediction")
    self.gate_cache_valid = keras.Variable(0, dtype="int32", trainable=False,
                                           aggregation="only_first_replica",
                                           name="gate_cache_valid")
    self._trackers = {
        name: keras.metrics.Mean(name=name)
        for name in ("loss", "accuracy", "participation_fraction", "gate_from_cache")
        + self.loss_part_names()
    }
    self._train_functions = {}
    self.built = True

  # -- objective -------------------------------------------------------------

  def loss_part_names(self):
    """Names of the per-sample loss parts that `per_sample_loss` reports."""
    return ("ce_loss",)

  def per_sample_loss(self, features, labels, logits):
    """Per-sample objective for the teacher: cross-entropy at temperature 1.

    Returns:
      (total [batch], parts dict name -> [batch]).
    """
    ce = losses.cross_entropy(labels, logits)
    return ce, {"ce_loss": ce}

  # -- keras plumbing --------------------------------------------------------

  def call(self, features, training=False):
    return self.network(features["image"], training=training)

  @property
  def metrics(self):
    return list(self._trackers.values())

  def make_train_function(self, force=False):
    """Builds one compiled step per backward strategy and selects the active one.

    Keras' `fit` looks `self.train_function` up on every step, so `auto` swaps
    strategies at epoch boundaries (`set_backward`) without retracing and
    without a `tf.cond` around the optimizer (which a strategy forbids).
    """
    if self.train_function is not None and not force:
      return self.train_function
    choices = ("masked", "compact") if self.backward == "auto" else (self.active_backward,)
    self._train_functions = {
        b: self._make_function(lambda data, b=b: self._train_step(data, b)) for b in choices
    }
    self.train_function = self._train_functions[self.active_backward]
    return self.train_function

  def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    """Nothing to build: network, optimizer and trackers exist before `fit`.

    Keras' version pulls a batch off the training iterator under a strategy and
    `strategy.reduce`s it, which fails for dict features under
    MultiWorkerMirroredStrategy and would cost the epoch its first batch.
    """
    del iterator, data_batch

  def set_backward(self, backward):
    """Selects `masked` or `compact` for the next steps (only with backward=auto)."""
    if backward not in self._train_functions and self._train_functions:
      raise ValueError(f"backward {backward!r} was not compiled for this model")
    self.active_backward = backward
    if self._train_functions:
      self.train_function = self._train_functions[backward]

  def train_step(self, data):
    return self._train_step(data, self.active_backward)

  # -- the step --------------------------------------------------------------

  def _gate(self, logits, labels):
    """(gate, margin, prediction); everyone takes part when the run does not regulate."""
    if not self.regulate:  # No softmax/top-2 work for a gate that is always open.
      predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
      return (tf.ones_like(labels, tf.float32), tf.zeros_like(labels, tf.float32), predicted)
    return regulation.gate(logits, labels, self.eta, self.gate_temperature)

  def _sample_weights(self, features, gate):
    if self.weight_by_significance:
      return gate * tf.cast(features["significance"], tf.float32)
    return gate

  def _train_step(self, data, backward):
    features, labels = data[0], data[1]
    ids = features["id"]
    variables = self.network.trainable_variables
    padded, padded_labels, valid = _pad_if_empty(features, labels)

    use_cache = tf.constant(False)
    if backward == "compact":
      use_cache = tf.equal(self.gate_cache_valid, 1)

      def gate_from_cache():
        return (tf.gather(self.previous_margin, padded["id"]),
                tf.gather(self.previous_prediction, padded["id"]))

      def gate_from_model():
        _, margin, prediction = self._gate(self.network(padded["image"], training=False),
                                           padded_labels)
        return margin, prediction

      # Until the epoch's first update the weights are those the cache was made
      # with: the gate needs no forward pass.
      delta, predicted = tf.cond(use_cache, gate_from_cache, gate_from_model)
      gate = valid * (regulation.gate_from_margin(delta, predicted, padded_labels, self.eta)
                      if self.regulate else tf.ones_like(delta))
      n_real = tf.shape(ids)[0]
      scatter_add_by_id(self.cached_margin, ids, delta[:n_real])
      scatter_add_by_id(self.cached_prediction, ids, predicted[:n_real])
      count = global_sum(tf.reduce_sum(gate))
      rows = tf.reshape(tf.where(gate > 0), [-1])
      chosen, chosen_labels, chosen_valid = _pad_if_empty(
          tf.nest.map_structure(lambda t: tf.gather(t, rows), padded),
          tf.gather(padded_labels, rows))
      with tf.GradientTape() as tape:
        logits = self.network(chosen["image"], training=True)
        total, parts = self.per_sample_loss(chosen, chosen_labels, logits)
        weights = self._sample_weights(chosen, chosen_valid)
        loss = losses.normalised_loss(total, weights, count)
      loss_gate = chosen_valid
    else:
      with tf.GradientTape() as tape:
        logits = self.network(padded["image"], training=True)
        gate = self._gate(tf.stop_gradient(logits), padded_labels)[0] * valid
        count = global_sum(tf.reduce_sum(gate))
        total, parts = self.per_sample_loss(padded, padded_labels, logits)
        weights = self._sample_weights(padded, gate)
        loss = losses.normalised_loss(total, weights, count)
      chosen, loss_gate = padded, gate
      predicted = tf.argmax(logits, -1, output_type=tf.int32)

    grads = tape.gradient(loss, variables)
    apply_if(self.optimizer, grads, variables, count > 0)
    if backward == "compact":
      self.gate_cache_valid.assign(tf.where(count > 0, 0, self.gate_cache_valid))

    n = tf.shape(ids)[0]
    real_gate = gate[:n]
    scatter_add_by_id(self.participation, ids, tf.cast(real_gate > 0, tf.int32))
    self._update_metrics(chosen, loss_gate, total, parts, predicted[:n], labels, real_gate)
    self._trackers["gate_from_cache"].update_state(tf.cast(use_cache, tf.float32))
    results = {name: t.result() for name, t in self._trackers.items()}
    if isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
      # Keras reduces per-step results with `reduce("MEAN", v, axis=0)` under
      # this strategy, which rejects scalars. Epoch logs are unaffected: Keras
      # replaces them with the (cross-replica) tracker results.
      results = {name: tf.reshape(v, [1]) for name, v in results.items()}
    return results

  def _update_metrics(self, chosen, loss_gate, total, parts, predicted, labels, gate):
    """Loss metrics: sum(g s L) / sum(g) over the epoch; accuracy and participation
    fraction over every real sample."""
    scale = (tf.cast(chosen["significance"], tf.float32)
             if self.weight_by_significance else tf.ones_like(total))
    self._trackers["loss"].update_state(scale * total, sample_weight=loss_gate)
    for name, values in parts.items():
      self._trackers[name].update_state(scale * values, sample_weight=loss_gate)
    correct = tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32)
    self._trackers["accuracy"].update_state(correct)
    self._trackers["participation_fraction"].update_state(gate)

  # -- state helpers ---------------------------------------------------------

  def participation_counts(self) -> np.ndarray:
    """The participation counts v as int32 [N] (summed over replicas)."""
    return np.asarray(keras.ops.convert_to_numpy(self.participation.value), dtype=np.int32)

  def set_participation(self, counts):
    """Sets v exactly: the whole value goes to replica 0, zeros elsewhere.

    See `_assign_on_read_sum`.
    """
    _assign_on_read_sum(self.distribute_strategy, self.participation,
                        np.asarray(counts, np.int32))

  def reset_gate_cache(self):
    """Zeroes the cached margins/predictions on every replica (epoch start)."""
    _assign_on_read_sum(self.distribute_strategy, self.cached_margin,
                        np.zeros([self.num_examples], np.float32))
    _assign_on_read_sum(self.distribute_strategy, self.cached_prediction,
                        np.zeros([self.num_examples], np.int32))

  def gate_cache(self):
    """(margins float32 [N], predictions int32 [N]) from the last compact epoch."""
    return (np.asarray(keras.ops.convert_to_numpy(self.cached_margin.value), np.float32),
            np.asarray(keras.ops.convert_to_numpy(self.cached_prediction.value), np.int32))


_ASSIGNERS = {}


def _assign_on_read_sum(strategy, variable, value):
  """Gives an on-read SUM variable exactly `value`: all of it on replica 0, zeros elsewhere.

  Assigning such a variable in cross-replica context divides the value by the
  replica count (integer division would lose counts), so each replica's copy
  is written from inside a replica context instead.
  """
  key = (id(strategy), id(variable))
  if key not in _ASSIGNERS:  # One traced function per variable, not one per call.

    @tf.function
    def assign(new_value):
      first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
      variable.assign(tf.where(first, new_value, tf.zeros_like(new_value)))

    _ASSIGNERS[key] = assign
  strategy.run(_ASSIGNERS[key], args=(tf.constant(value),))


class RegulationSchedule(keras.callbacks.Callback):
  """Sets eta(n) at each epoch start, picks the backward for `auto`, and adds
  eta, the backward used and the cumulative zeta to the epoch logs."""

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
    if model.backward == "auto" and self.previous_fraction is not None:
      model.set_backward("compact" if self.previous_fraction < COMPACT_BREAK_EVEN else "masked")

  def on_epoch_end(self, epoch, logs=None):
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
  the caller records the idle epochs and resumes at the first busy one. In the
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

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
participation fraction (`callbacks.RegulationSchedule`). The two steps share
their second half (`_finish_step`): the update, the counts and the metrics.

Another gate policy (`tf_srkd.gates`: InfoBatch, Selective Backprop, random)
replaces Algorithm 1's gate in a self-regulating model: `_policy_step` lets the
policy decide the gate and a per-row loss factor, then runs forward and backward
on the kept rows only (compact), with the same counts, normalisation and update.

The callbacks that drive training live in `callbacks`; the exact
per-replica operations the step relies on in `distributed`.
"""

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tf_srkd import config as config_lib
from tf_srkd import distributed
from tf_srkd import gates
from tf_srkd import losses
from tf_srkd import regulation


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
    policy: the gate policy (`tf_srkd.gates`); Algorithm 1 unless another one
      is given to a regulating model. Other policies always run compact.
  """

  def __init__(self, network, num_examples, *, regulate=True, weight_by_significance=False,
               gate_temperature=1.0, backward="masked", normaliser="participants", policy=None,
               **kwargs):
    super().__init__(**kwargs)
    if backward not in config_lib.BACKWARDS:
      raise ValueError(f"backward must be one of {config_lib.BACKWARDS}, got {backward!r}")
    if normaliser not in config_lib.LOSS_NORMALISERS:
      raise ValueError(f"normaliser must be one of {config_lib.LOSS_NORMALISERS}, "
                       f"got {normaliser!r}")
    self.normaliser = normaliser
    self.network = network
    self.num_examples = int(num_examples)
    self.regulate = bool(regulate)
    self.weight_by_significance = bool(weight_by_significance)
    self.gate_temperature = float(gate_temperature)
    self.backward = backward
    if policy is None or not self.regulate:
      policy = gates.make_policy(gates.DEFAULT, self.num_examples, 0, 0)
    self.policy = policy
    if policy.name != gates.DEFAULT:  # Its gate needs no training-mode forward.
      self.backward = "compact"
    policy.build()
    # `auto` starts masked: early epochs have most samples taking part.
    self.active_backward = "compact" if self.backward == "compact" else "masked"
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
    self._exact_assigners = {}  # variable name -> its `distributed.on_read_sum_assigner`
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
    """One step with the active backward (`set_backward`); Keras' `fit` calls it."""
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

  def _divisor(self, count, valid, weights):
    """(divisor, floor) of the loss under `normaliser`:

    * participants: the global number of participants (mean over participants);
    * batch: the global number of real rows (mean over the batch);
    * weights: the global sum of g*s (weighted mean; a batch whose participants
      all weigh 0 has loss 0, not 0/0).
    """
    if self.normaliser == "participants":
      return count, 1.0
    if self.normaliser == "batch":
      return distributed.global_sum(tf.reduce_sum(valid)), 1.0
    return distributed.global_sum(tf.reduce_sum(weights)), 1e-6

  def _train_step(self, data, backward):
    """One step with the `masked` or the `compact` backward; see the module doc."""
    features, labels = data[0], data[1]
    padded, padded_labels, valid = _pad_if_empty(features, labels)
    if self.policy.name != gates.DEFAULT:
      step = self._policy_step(features["id"], padded, padded_labels, valid)
      return self._finish_step(step, features["id"], labels, "policy")
    if backward == "compact":
      step = self._compact_step(features["id"], padded, padded_labels, valid)
    else:
      step = self._masked_step(padded, padded_labels, valid)
    return self._finish_step(step, features["id"], labels, backward)

  def _masked_step(self, padded, labels, valid) -> "_Step":
    """One training-mode forward decides the gate and gives the loss of the whole batch."""
    variables = self.network.trainable_variables
    with tf.GradientTape() as tape:
      logits = self.network(padded["image"], training=True)
      gate = self._gate(tf.stop_gradient(logits), labels)[0] * valid
      count = distributed.global_sum(tf.reduce_sum(gate))
      total, parts = self.per_sample_loss(padded, labels, logits)
      weights = self._sample_weights(padded, gate)
      loss = losses.normalised_loss(total, weights,
                                    *self._divisor(count, valid, tf.stop_gradient(weights)))
    predicted = tf.argmax(logits, -1, output_type=tf.int32)
    return _Step(grads=tape.gradient(loss, variables), count=count,
                 update=self._has_weight(count, weights), gate=gate, rows=padded,
                 loss_gate=gate, total=total, parts=parts, predicted=predicted,
                 use_cache=tf.constant(False))

  def _compact_step(self, ids, padded, labels, valid) -> "_Step":
    """An inference-mode gate, then forward and backward on the participating rows only."""
    variables = self.network.trainable_variables
    use_cache = tf.equal(self.gate_cache_valid, 1)

    def gate_from_cache():
      return (tf.gather(self.previous_margin, padded["id"]),
              tf.gather(self.previous_prediction, padded["id"]))

    def gate_from_model():
      _, margin, prediction = self._gate(self.network(padded["image"], training=False), labels)
      return margin, prediction

    # Until the epoch's first update the weights are those the cache was made
    # with: the gate needs no forward pass.
    delta, predicted = tf.cond(use_cache, gate_from_cache, gate_from_model)
    gate = valid * (regulation.gate_from_margin(delta, predicted, labels, self.eta)
                    if self.regulate else tf.ones_like(delta))
    n_real = tf.shape(ids)[0]
    distributed.scatter_add_by_id(self.cached_margin, ids, delta[:n_real])
    distributed.scatter_add_by_id(self.cached_prediction, ids, predicted[:n_real])
    count = distributed.global_sum(tf.reduce_sum(gate))
    rows = tf.reshape(tf.where(gate > 0), [-1])
    chosen, chosen_labels, chosen_valid = _pad_if_empty(
        tf.nest.map_structure(lambda t: tf.gather(t, rows), padded), tf.gather(labels, rows))
    with tf.GradientTape() as tape:
      logits = self.network(chosen["image"], training=True)
      total, parts = self.per_sample_loss(chosen, chosen_labels, logits)
      weights = self._sample_weights(chosen, chosen_valid)
      loss = losses.normalised_loss(total, weights,
                                    *self._divisor(count, valid, tf.stop_gradient(weights)))
    return _Step(grads=tape.gradient(loss, variables), count=count,
                 update=self._has_weight(count, weights), gate=gate, rows=chosen,
                 loss_gate=chosen_valid, total=total, parts=parts, predicted=predicted,
                 use_cache=use_cache)

  def _policy_step(self, ids, padded, labels, valid) -> "_Step":
    """The policy's gate and loss factors, then forward and backward on the kept rows.

    A policy that decides without a forward pass (`Decision.predicted` None)
    leaves only the kept rows' predictions known: accuracy covers those.
    """
    variables = self.network.trainable_variables
    decision = self.policy.decide(self, ids, padded, labels)
    gate = decision.gate * valid
    count = distributed.global_sum(tf.reduce_sum(gate))
    rows = tf.reshape(tf.where(gate > 0), [-1])
    kept = tf.shape(rows)[0]
    (chosen, scale), chosen_labels, chosen_valid = _pad_if_empty(
        tf.nest.map_structure(lambda t: tf.gather(t, rows), (padded, decision.scale)),
        tf.gather(labels, rows))
    with tf.GradientTape() as tape:
      logits = self.network(chosen["image"], training=True)
      total, parts = self.per_sample_loss(chosen, chosen_labels, logits)
      weights = self._sample_weights(chosen, chosen_valid) * scale
      loss = losses.normalised_loss(total, weights,
                                    *self._divisor(count, valid, tf.stop_gradient(weights)))
    self.policy.observe(chosen["id"][:kept], tf.stop_gradient(total)[:kept])
    predicted, seen = decision.predicted, None
    if predicted is None:
      trained = tf.argmax(logits, -1, output_type=tf.int32)[:kept]
      predicted = tf.scatter_nd(tf.expand_dims(rows, 1), trained,
                                tf.shape(gate, out_type=tf.int64))
      seen = gate
    return _Step(grads=tape.gradient(loss, variables), count=count,
                 update=self._has_weight(count, weights), gate=gate, rows=chosen,
                 loss_gate=chosen_valid, total=total, parts=parts, predicted=predicted,
                 use_cache=tf.constant(False), seen=seen)

  def _has_weight(self, count, weights):
    """Whether the global batch carries any loss weight: some participant, and
    with significance weighting some participant of significance > 0."""
    if not self.weight_by_significance:
      return count > 0  # The weights are the gate: no second all-reduce.
    return distributed.global_sum(tf.reduce_sum(tf.stop_gradient(weights))) > 0

  def _finish_step(self, step: "_Step", ids, labels, backward):
    """The update (none when the batch carries no loss weight anywhere), the
    counts and the metrics.

    A batch whose participants all have significance 0 (hybrid) has a zero
    gradient; like an empty batch it leaves weights and optimizer state
    untouched, since an Adam step would still move the weights through its
    moments. Its participants are counted all the same (the gate let them in).
    """
    variables = self.network.trainable_variables
    distributed.apply_if(self.optimizer, step.grads, variables, step.update)
    if backward == "compact":
      self.gate_cache_valid.assign(tf.where(step.update, 0, self.gate_cache_valid))
    n = tf.shape(ids)[0]
    real_gate = step.gate[:n]
    distributed.scatter_add_by_id(self.participation, ids, tf.cast(real_gate > 0, tf.int32))
    self._update_metrics(step.rows, step.loss_gate, step.total, step.parts, step.predicted[:n],
                         labels, real_gate, None if step.seen is None else step.seen[:n])
    self._trackers["gate_from_cache"].update_state(tf.cast(step.use_cache, tf.float32))
    results = {name: t.result() for name, t in self._trackers.items()}
    if isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
      # Keras reduces per-step results with `reduce("MEAN", v, axis=0)` under
      # this strategy, which rejects scalars. Epoch logs are unaffected: Keras
      # replaces them with the (cross-replica) tracker results.
      results = {name: tf.reshape(v, [1]) for name, v in results.items()}
    return results

  def _update_metrics(self, chosen, loss_gate, total, parts, predicted, labels, gate,
                      seen=None):
    """Loss metrics: sum(g s L) / sum(g) over the epoch; accuracy and participation
    fraction over every real sample (accuracy over the `seen` ones when given)."""
    scale = (tf.cast(chosen["significance"], tf.float32)
             if self.weight_by_significance else tf.ones_like(total))
    self._trackers["loss"].update_state(scale * total, sample_weight=loss_gate)
    for name, values in parts.items():
      self._trackers[name].update_state(scale * values, sample_weight=loss_gate)
    correct = tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32)
    if seen is None:
      self._trackers["accuracy"].update_state(correct)
    else:
      self._trackers["accuracy"].update_state(correct, sample_weight=seen)
    self._trackers["participation_fraction"].update_state(gate)

  # -- state helpers ---------------------------------------------------------

  def participation_counts(self) -> np.ndarray:
    """The participation counts v as int32 [N] (summed over replicas)."""
    return np.asarray(keras.ops.convert_to_numpy(self.participation.value), dtype=np.int32)

  def set_participation(self, counts):
    """Sets v exactly: the whole value goes to replica 0, zeros elsewhere."""
    self._assign_exactly("participation", np.asarray(counts, np.int32))

  def reset_gate_cache(self):
    """Zeroes the cached margins/predictions on every replica (epoch start)."""
    self._assign_exactly("cached_margin", np.zeros([self.num_examples], np.float32))
    self._assign_exactly("cached_prediction", np.zeros([self.num_examples], np.int32))

  def _assign_exactly(self, name, value):
    """Gives the on-read SUM variable `self.<name>` exactly `value`.

    Its traced assigner (`distributed.on_read_sum_assigner`) is built on first
    use and kept on this model, so it lives and dies with the model.
    """
    if name not in self._exact_assigners:
      self._exact_assigners[name] = distributed.on_read_sum_assigner(getattr(self, name))
    distributed.assign_on_read_sum(self.distribute_strategy, self._exact_assigners[name], value)

  def gate_cache(self):
    """(margins float32 [N], predictions int32 [N]) from the last compact epoch."""
    return (np.asarray(keras.ops.convert_to_numpy(self.cached_margin.value), np.float32),
            np.asarray(keras.ops.convert_to_numpy(self.cached_prediction.value), np.int32))


class _Step(NamedTuple):
  """What the masked and the compact step hand to `_finish_step`.

  Attributes:
    grads: gradients of the normalised loss w.r.t. the trainable variables.
    count: participants in the global batch (summed over replicas).
    update: whether the batch carries loss weight anywhere (the update is applied).
    gate: [padded batch] 0/1 gate of every row of the (padded) batch.
    rows: the features the loss ran on (the whole batch, or the participants).
    loss_gate: the weight of each of those rows in the loss metrics.
    total, parts: their per-sample loss and its named parts.
    predicted: [padded batch] predicted class of every row.
    use_cache: whether the gate came from the idle-epoch cache.
    seen: [padded batch] weight of each row in the accuracy, or None (every row).
  """

  grads: list
  count: tf.Tensor
  update: tf.Tensor
  gate: tf.Tensor
  rows: dict
  loss_gate: tf.Tensor
  total: tf.Tensor
  parts: dict
  predicted: tf.Tensor
  use_cache: tf.Tensor
  seen: tf.Tensor = None

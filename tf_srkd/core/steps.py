"""How one self-regulated step computes its update: the gate, the loss and the gradient.

`GatedSteps` is mixed into `training.SelfRegulatedModel` (which owns the state
and Keras' plumbing); each of its step builders returns a `Step`, which the
model's `_finish_step` turns into the update, the participation counts and the
metrics:
  * `_masked_step`: one training-mode forward over the batch decides the gate
    and gives the loss; non-participants get weight 0 (their backward still runs);
  * `_compact_step`: an inference-mode gate (rows whose margin is still exact
    come from `margin_cache` instead of the network), then forward and backward
    on the participating rows only;
  * `_policy_step`: another gate policy (`tf_srkd.core.gates`) decides the gate and a
    per-row loss factor, then forward and backward run on the kept rows only.
All three normalise the loss by the same rule (`_divisor`, `losses.normalised_loss`).
"""

from typing import NamedTuple

import tensorflow as tf

from tf_srkd.core import distributed
from tf_srkd.core import losses
from tf_srkd.core import margin_cache
from tf_srkd.core import regulation


def pad_if_empty(features, labels):
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


class Step(NamedTuple):
  """What a step builder hands to the model's `_finish_step`.

  Attributes:
    grads: gradients of the normalised loss w.r.t. the trainable variables.
    count: participants in the global batch (summed over replicas).
    update: whether the batch carries loss weight anywhere (the update is applied).
    gate: [padded batch] 0/1 gate of every row of the (padded) batch.
    rows: the features the loss ran on (the whole batch, or the participants).
    loss_gate: the weight of each of those rows in the loss metrics.
    total, parts: their per-sample loss and its named parts.
    predicted: [padded batch] predicted class of every row.
    from_cache: [padded batch] 1 where the row's gate came from the margin cache.
    seen: [padded batch] weight of each row in the accuracy, or None (every row).
    audit: per-row diagnostics of the bounded gate against the exact one, by
      metric name ([padded batch] each), or None.
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
  from_cache: tf.Tensor
  seen: tf.Tensor = None
  audit: dict = None


class GatedSteps:
  """The step builders of `training.SelfRegulatedModel` (a mixin, no state of its own).

  They read the model's `network` (its `forward` and `trained_variables` for the
  loss), `optimizer`, `regulate`, `eta`,
  `gate_temperature`, `weight_by_significance`, `normaliser`, `margin_cache`,
  `reuse_margins`, `margin_staleness`, `audit_margins` and `policy`, and call its
  `per_sample_loss`. Subclasses may
  override `_sample_weights` and `_has_weight` (`api` does, for user weights).
  """

  def _per_sample_loss(self, features, labels, logits, taps):
    """`per_sample_loss`, given the taps only when the forward produced some, so an
    override written for (features, labels, logits) keeps working."""
    if taps is None:
      return self.per_sample_loss(features, labels, logits)
    return self.per_sample_loss(features, labels, logits, taps)

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

  def _masked_step(self, padded, labels, valid) -> Step:
    """One training-mode forward decides the gate and gives the loss of the whole batch."""
    variables = self.trained_variables()
    with tf.GradientTape() as tape:
      logits, taps = self.forward(padded["image"], training=True)
      gate = self._gate(tf.stop_gradient(logits), labels)[0] * valid
      count = distributed.global_sum(tf.reduce_sum(gate))
      total, parts = self._per_sample_loss(padded, labels, logits, taps)
      weights = self._sample_weights(padded, gate)
      loss = losses.normalised_loss(total, weights,
                                    *self._divisor(count, valid, tf.stop_gradient(weights)))
    predicted = tf.argmax(logits, -1, output_type=tf.int32)
    return Step(grads=tape.gradient(loss, variables), count=count,
                update=self._has_weight(count, weights), gate=gate, rows=padded,
                loss_gate=gate, total=total, parts=parts, predicted=predicted,
                from_cache=tf.zeros_like(valid))

  def _compact_step(self, ids, padded, labels, valid) -> Step:
    """An inference-mode gate, then forward and backward on the participating rows only."""
    delta, predicted, from_cache, audit = self._margins_for(ids, padded, labels)
    gate = valid * (regulation.gate_from_margin(delta, predicted, labels, self.eta)
                    if self.regulate else tf.ones_like(delta))
    count = distributed.global_sum(tf.reduce_sum(gate))
    rows = tf.reshape(tf.where(gate > 0), [-1])
    chosen, chosen_labels, chosen_valid = pad_if_empty(
        tf.nest.map_structure(lambda t: tf.gather(t, rows), padded), tf.gather(labels, rows))
    weights = self._sample_weights(chosen, chosen_valid)
    grads, total, parts, _ = self._chosen_backward(
        tf.size(rows) > 0, chosen, chosen_labels, weights,
        self._divisor(count, valid, tf.stop_gradient(weights)))
    return Step(grads=grads, count=count,
                update=self._has_weight(count, weights), gate=gate, rows=chosen,
                loss_gate=chosen_valid, total=total, parts=parts, predicted=predicted,
                from_cache=from_cache,
                audit=None if audit is None else {k: v * valid for k, v in audit.items()})

  def _chosen_backward(self, any_chosen, chosen, chosen_labels, weights, divisor):
    """(grads, per-sample loss, its parts, predicted class) of the chosen rows; no
    forward at all when this replica chose none.

    A trickle epoch's batches are mostly empty: a training-mode forward and
    backward of the one padded row (weight 0) would give a zero gradient for
    about 1 ms a step on LeNet-5. The skipped branch returns what that pass
    would give: zero gradients, zero loss for the pad row.
    Replica-local and free of collectives (the divisor is computed outside),
    so each replica may take its own branch.
    """
    variables = self.trained_variables()

    def run():
      with tf.GradientTape() as tape:
        logits, taps = self.forward(chosen["image"], training=True)
        total, parts = self._per_sample_loss(chosen, chosen_labels, logits, taps)
        loss = losses.normalised_loss(total, weights, *divisor)
      return (tape.gradient(loss, variables), total, parts,
              tf.argmax(logits, -1, output_type=tf.int32))

    def skip():
      rows = tf.shape(chosen_labels)[0]
      zeros = tf.zeros([rows], tf.float32)
      return ([tf.zeros_like(v) for v in variables], zeros,
              {name: zeros for name in self.loss_part_names()}, tf.zeros([rows], tf.int32))

    return tf.cond(any_chosen, run, skip)

  def _margins_for(self, ids, padded, labels):
    """(delta, predicted, from_cache, audit) of every row of the padded batch for the
    compact gate (`audit`: see `_audit`, or None).

    Rows whose margin was computed at the optimizer's current iteration (the
    weights have not moved since) come from `margin_cache`, and under a
    `margin_staleness` bound so do the rows it lets keep an older margin; the
    others run through the network in inference mode, all of them when the cache
    is off. The real rows' values are recorded for the next epoch either way.
    """
    version = margin_cache.current_version(self.optimizer.iterations)

    def forward(images, row_labels):
      _, delta, predicted = self._gate(self.network(images, training=False), row_labels)
      return delta, predicted

    versions = stamps = None
    if self.reuse_margins and self.regulate:
      bounded = None if self.margin_staleness is None else (self.eta, self.margin_staleness)
      delta, predicted, from_cache, versions, stamps = self.margin_cache.margins_for(
          padded["id"], padded["image"], labels, version, forward, bounded)
    else:
      delta, predicted = forward(padded["image"], labels)
      from_cache = tf.zeros_like(delta)
    n_real = tf.shape(ids)[0]
    self.margin_cache.record(ids, delta[:n_real], predicted[:n_real],
                             version if versions is None else versions[:n_real],
                             None if stamps is None else stamps[:n_real])
    audit = None
    if self.audit_margins and self.margin_staleness is not None and self.regulate:
      audit = self._audit(padded, labels, delta, predicted, forward)
    return delta, predicted, from_cache, audit

  def _audit(self, padded, labels, delta, predicted, forward):
    """Per row: 1 where the exact gate (every row forwarded with the current weights)
    would admit a row the bounded gate did not (a miss), or the other way round."""
    exact_delta, exact_predicted = forward(padded["image"], labels)
    exact = regulation.gate_from_margin(exact_delta, exact_predicted, labels, self.eta)
    used = regulation.gate_from_margin(delta, predicted, labels, self.eta)
    return {"gate_misses": exact * (1.0 - used), "gate_extra": used * (1.0 - exact)}

  def _policy_step(self, ids, padded, labels, valid) -> Step:
    """The policy's gate and loss factors, then forward and backward on the kept rows.

    A policy that decides without a forward pass (`Decision.predicted` None)
    leaves only the kept rows' predictions known: accuracy covers those.
    """
    decision = self.policy.decide(self, ids, padded, labels)
    gate = decision.gate * valid
    count = distributed.global_sum(tf.reduce_sum(gate))
    rows = tf.reshape(tf.where(gate > 0), [-1])
    kept = tf.shape(rows)[0]
    (chosen, scale), chosen_labels, chosen_valid = pad_if_empty(
        tf.nest.map_structure(lambda t: tf.gather(t, rows), (padded, decision.scale)),
        tf.gather(labels, rows))
    weights = self._sample_weights(chosen, chosen_valid) * scale
    grads, total, parts, trained = self._chosen_backward(
        kept > 0, chosen, chosen_labels, weights,
        self._divisor(count, valid, tf.stop_gradient(weights)))
    self.policy.observe(chosen["id"][:kept], tf.stop_gradient(total)[:kept])
    predicted, seen = decision.predicted, None
    if predicted is None:
      predicted = tf.scatter_nd(tf.expand_dims(rows, 1), trained[:kept],
                                tf.shape(gate, out_type=tf.int64))
      seen = gate
    return Step(grads=grads, count=count,
                update=self._has_weight(count, weights), gate=gate, rows=chosen,
                loss_gate=chosen_valid, total=total, parts=parts, predicted=predicted,
                from_cache=tf.zeros_like(valid), seen=seen)

  def _has_weight(self, count, weights):
    """Whether the global batch carries any loss weight: some participant, and
    with significance weighting some participant of significance > 0."""
    if not self.weight_by_significance:
      return count > 0  # The weights are the gate: no second all-reduce.
    return distributed.global_sum(tf.reduce_sum(tf.stop_gradient(weights))) > 0

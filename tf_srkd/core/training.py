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
    docs/performance.md); for deterministic models both give the same gates.
``auto`` switches between the two per epoch from the previous epoch's
participation fraction (`callbacks.RegulationSchedule`).

Another gate policy (`tf_srkd.core.gates`: InfoBatch, Selective Backprop, random)
replaces Algorithm 1's gate in a self-regulating model: the policy decides the
gate and a per-row loss factor, then forward and backward run on the kept rows
only (compact), with the same counts, normalisation and update.

The three step builders (the gate, the loss and the gradient) live in `steps`;
this module keeps the model's state, Keras' plumbing and the steps' shared
second half (`_finish_step`): the update, the counts and the metrics. The
callbacks that drive training live in `callbacks`; the exact per-replica
operations the step relies on in `distributed`; the compact gate's per-sample
margin cache (rows whose margin is still exact skip the inference pass) in
`margin_cache`.
"""

import keras
import numpy as np
import tensorflow as tf

from tf_srkd.core import modes
from tf_srkd.core import distributed
from tf_srkd.core import gates
from tf_srkd.core import losses
from tf_srkd.core import margin_cache
from tf_srkd.core import steps


#: The epoch logs of `configure_margins(audit=True)`: shares of the epoch's rows.
AUDIT_METRICS = ("gate_misses", "gate_extra")


class SelfRegulatedModel(steps.GatedSteps, keras.Model):
  """Trains `network` with Algorithm 1's per-sample gate.

  Subclasses change the objective by overriding `per_sample_loss`. Features are
  a dict with at least `image` and `id`; labels are integer classes.

  Attributes:
    network: the wrapped classifier (outputs logits); this is what gets saved.
    participation: int32 [N] participation counts v, exact under any strategy
      (on-read synchronised, summed over replicas when read).
    eta: the current threshold; set at each epoch start by `RegulationSchedule`.
    margin_cache: the compact gate's per-sample margins, predictions and their
      versions (`margin_cache.MarginCache`).
    reuse_margins: whether the compact gate reads rows whose margin is still
      exact from `margin_cache` instead of running them through the network
      (default True; set before the first `fit`, with `configure_margins`).
    margin_staleness: None (exact margins only), or the `staleness.Staleness`
      bound under which rows keep an older margin (`--margin_refresh=bounded`).
    audit_margins: with a bound, also run the exact gate on every row and report
      where the two differ (`gate_misses`, `gate_extra` in the logs).
    policy: the gate policy (`tf_srkd.core.gates`); Algorithm 1 unless another one
      is given to a regulating model. Other policies always run compact.
  """

  def __init__(self, network, num_examples, *, regulate=True, weight_by_significance=False,
               gate_temperature=1.0, backward="masked", normaliser="participants", policy=None,
               **kwargs):
    super().__init__(**kwargs)
    if backward not in modes.BACKWARDS:
      raise ValueError(f"backward must be one of {modes.BACKWARDS}, got {backward!r}")
    if normaliser not in modes.LOSS_NORMALISERS:
      raise ValueError(f"normaliser must be one of {modes.LOSS_NORMALISERS}, "
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
    if not policy.decided_in_step:  # Its gate needs no training-mode forward.
      self.backward = "compact"
    policy.build()
    # `auto` starts masked: early epochs have most samples taking part.
    self.active_backward = "compact" if self.backward == "compact" else "masked"
    self.participation = keras.Variable(
        np.zeros([self.num_examples], np.int32), dtype="int32", trainable=False,
        synchronization="on_read", aggregation="sum", name="participation")
    self.eta = keras.Variable(0.0, dtype="float32", trainable=False, name="eta")
    # The compact (inference-mode) gate's margins and predictions, by id, with
    # the optimizer iteration they were computed at.
    self.margin_cache = margin_cache.MarginCache(self.num_examples)
    # Read when the step is traced; `configure_margins` sets them.
    self.reuse_margins = True
    self.margin_staleness = None
    self.audit_margins = False
    self._trackers = {
        name: keras.metrics.Mean(name=name)
        for name in ("loss", "accuracy", "participation_fraction", "gate_from_cache")
        + self.loss_part_names()
    }
    self._train_functions = {}
    self._exact_assigners = {}  # variable name -> its `distributed.on_read_sum_assigner`
    self.built = True

  def configure_margins(self, reuse, staleness=None, audit=False):
    """How the compact gate gets margins; call before the first `fit` traces the step.

    Args:
      reuse: read rows whose margin is still exact from `margin_cache`.
      staleness: None, or a `staleness.Staleness` under which rows also keep an
        older margin (needs `reuse`).
      audit: with `staleness`, report per epoch the share of rows the exact gate
        would admit and the bounded one did not (`gate_misses`) and the reverse
        (`gate_extra`), at the cost of an inference pass over every row.
    """
    if staleness is not None and not reuse:
      raise ValueError("a staleness bound needs reused margins (reuse=True)")
    self.reuse_margins = bool(reuse)
    self.margin_staleness = staleness
    self.audit_margins = bool(audit) and staleness is not None
    for name in AUDIT_METRICS:
      if self.audit_margins and name not in self._trackers:
        # Under the strategy, as the other trackers: their sums then span every replica.
        with self.distribute_strategy.scope():
          self._trackers[name] = keras.metrics.Mean(name=name)
      elif not self.audit_margins:
        self._trackers.pop(name, None)

  # -- objective -------------------------------------------------------------

  def loss_part_names(self):
    """Names of the per-sample loss parts that `per_sample_loss` reports."""
    return ("ce_loss",)

  def forward(self, images, training):
    """(logits, taps) of the trained network: `taps` are the intermediate outputs the
    loss reads by layer name (None: the loss reads the logits only)."""
    return self.network(images, training=training), None

  def trained_extras(self):
    """Layers trained beside the network but not part of it (a distiller's feature
    projections), in a fixed order; a resume checkpoint keeps them too."""
    return []

  def trained_variables(self):
    """What the optimizer updates: the network's trainable weights, then the extras'."""
    return self.network.trainable_variables + [
        v for layer in self.trained_extras() for v in layer.trainable_variables]

  def per_sample_loss(self, features, labels, logits, taps=None):
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

  # -- the step (its builders: `steps.GatedSteps`) ---------------------------

  def _train_step(self, data, backward):
    """One step with the `masked` or the `compact` backward; see `steps`."""
    features, labels = data[0], data[1]
    padded, padded_labels, valid = steps.pad_if_empty(features, labels)
    if not self.policy.decided_in_step:
      step = self._policy_step(features["id"], padded, padded_labels, valid)
      return self._finish_step(step, features["id"], labels, "policy")
    if backward == "compact":
      step = self._compact_step(features["id"], padded, padded_labels, valid)
    else:
      step = self._masked_step(padded, padded_labels, valid)
    return self._finish_step(step, features["id"], labels, backward)

  def _finish_step(self, step: steps.Step, ids, labels, backward):
    """The update (none when the batch carries no loss weight anywhere), the
    counts and the metrics.

    A batch whose participants all have significance 0 (hybrid) has a zero
    gradient; like an empty batch it leaves weights and optimizer state
    untouched, since an Adam step would still move the weights through its
    moments. Its participants are counted all the same (the gate let them in).
    """
    variables = self.trained_variables()
    distributed.apply_if(self.optimizer, step.grads, variables, step.update)
    n = tf.shape(ids)[0]
    real_gate = step.gate[:n]
    distributed.scatter_add_by_id(self.participation, ids, tf.cast(real_gate > 0, tf.int32))
    self._update_metrics(step.rows, step.loss_gate, step.total, step.parts, step.predicted[:n],
                         labels, real_gate, None if step.seen is None else step.seen[:n])
    # The fraction of the epoch's rows whose gate needed no forward pass.
    self._trackers["gate_from_cache"].update_state(step.from_cache[:n])
    for name in AUDIT_METRICS:
      if name in self._trackers:  # Steps without the audit count every row as agreeing.
        values = step.audit[name][:n] if step.audit else tf.zeros([n], tf.float32)
        self._trackers[name].update_state(values)
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

  def _assign_exactly(self, name, value):
    """Gives the on-read SUM variable `self.<name>` exactly `value`.

    Its traced assigner (`distributed.on_read_sum_assigner`) is built on first
    use and kept on this model, so it lives and dies with the model.
    """
    if name not in self._exact_assigners:
      self._exact_assigners[name] = distributed.on_read_sum_assigner(getattr(self, name))
    distributed.assign_on_read_sum(self.distribute_strategy, self._exact_assigners[name], value)


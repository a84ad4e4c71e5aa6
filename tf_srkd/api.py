"""Self-regulation and the four distillation modes in your own Keras code.

No flags, files or MLflow: wrap a logits classifier, feed it a `tf.data`
dataset, `compile` and `fit` it like any Keras model::

    import tf_srkd

    train = tf_srkd.with_sample_ids(dataset)          # (x, y) or (x, y, w), unbatched
    train = train.shuffle(10_000).batch(128)
    teacher = tf_srkd.SelfRegulated(network, num_examples=n, alpha=0.02)
    teacher.compile(optimizer="adam")
    teacher.fit(train, epochs=20)
    significance = tf_srkd.significance(teacher.participation_counts(), labels, 10)
    student = tf_srkd.Distiller(network, small_network, n, mode="hybrid",
                                significance=significance)
    student.compile(optimizer="adam")
    student.fit(train, epochs=20)

Both classes wrap the library's own step (`training.SelfRegulatedModel`,
`distillation.Distiller`) and add what the flag pipeline does elsewhere: the
per-epoch threshold schedule (added to `fit`'s callbacks), the optimizer built
at `compile` (as the pipeline does, so a strategy's replicas never create
variables inside the step), the teacher's significance gathered by sample id,
and user sample weights multiplied into the gate. Create and compile them
under `strategy.scope()` to train on several replicas.
"""

import inspect
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tf_srkd.core import callbacks as callbacks_lib
from tf_srkd.core import distillation
from tf_srkd.core import distributed
from tf_srkd.core import modes as modes_lib
from tf_srkd.core import margin_cache
from tf_srkd.core import regulation
from tf_srkd.core import staleness
from tf_srkd.core import training
from tf_srkd.data import sample_ids
from tf_srkd.models import sources as model_sources

#: Algorithm 2 and eq. 5, re-exported for users of this module.
significance = regulation.significance
sample_efficiency = regulation.sample_efficiency
with_sample_ids = sample_ids.with_sample_ids


class _EpochSizeCheck(keras.callbacks.Callback):
  """After the first epoch of a `fit`, compares the rows it saw with `num_examples`.

  Ids at or above `num_examples` stop the step itself; this catches the other way a
  dataset disagrees with the model, fewer rows than `num_examples`, which would
  leave counts at 0 and deflate zeta without any error.
  """

  def __init__(self, num_examples):
    super().__init__()
    self.num_examples = int(num_examples)
    self.checked = False

  def on_epoch_begin(self, epoch, logs=None):
    self.model.rows_at_validation = None

  def on_epoch_end(self, epoch, logs=None):
    if self.checked:
      return
    self.checked = True
    seen = int(round(float(self.model.rows_seen_this_epoch())))
    steps = (self.params or {}).get("steps") or 0
    # `batch(..., drop_remainder=True)` leaves out less than one batch: not a mismatch.
    dropped = steps and 0 < self.num_examples - seen < seen / steps
    if seen != self.num_examples and not dropped:
      raise ValueError(
          f"fit: an epoch of this dataset has {seen} samples but num_examples="
          f"{self.num_examples}; create the model with num_examples={seen} (the size of the "
          "unbatched dataset given to with_sample_ids), or pass steps_per_epoch")


class _KerasWorkflow:
  """What a plain Keras user needs on top of the library's step (a mixin)."""

  def _init_workflow(self, alpha, significance_values, participation=None, epochs_trained=0,
                     margins=None):
    self.alpha = float(alpha)
    self._margin_rollover = self._configure_margins(**(margins or {}))
    # Epochs trained over every `fit` call: eta continues, and zeta's denominator.
    self.epochs_trained = keras.Variable(int(epochs_trained), dtype="int32", trainable=False,
                                         name="epochs_trained")
    if participation is not None:
      counts = np.asarray(participation)
      if counts.shape != (self.num_examples,):
        raise ValueError(f"participation: expected shape ({self.num_examples},), got "
                         f"{counts.shape}")
      self.set_participation(counts)
    self._significance_table = None
    if significance_values is not None:
      values = np.asarray(significance_values, np.float32)
      if values.shape != (self.num_examples,):
        raise ValueError(f"significance: expected shape ({self.num_examples},), got "
                         f"{values.shape}")
      self._significance_table = keras.Variable(values, trainable=False, name="significance")
    self._has_user_weights = False

  def _configure_margins(self, reuse_margins=None, margin_refresh="exact",
                         margin_max_age=staleness.DEFAULT_MAX_AGE,
                         margin_band=staleness.DEFAULT_BAND, margin_audit=False):
    """Sets how the compact gate gets margins; returns whether `fit` must hand each
    epoch's margins to the next (`margin_cache.MarginCacheRollover`).

    The rule is the flag pipeline's: only Algorithm 1's compact gate on a network
    without BatchNorm reuses margins (BatchNorm's moving statistics change the
    network in every training forward, so no margin stays exact or boundedly stale).
    """
    if margin_refresh not in staleness.REFRESH:
      raise ValueError(f"margin_refresh must be one of {staleness.REFRESH}, "
                       f"got {margin_refresh!r}")
    bounded = margin_refresh == "bounded"
    # The API cannot see whether the dataset shows a row the same pixels every epoch
    # (random augmentation in tf.data would make a cached margin another image's), so
    # margins are reused only when asked for: `reuse_margins=True`, or a bound.
    reuse_margins = bounded if reuse_margins is None else bool(reuse_margins)
    if bounded and not reuse_margins:
      raise ValueError("margin_refresh='bounded' keeps cached margins: it needs "
                       "reuse_margins=True")
    if bounded and self.regulate and self.backward == "masked":
      raise ValueError("margin_refresh='bounded' applies to the compact gate: pass "
                       "backward='compact' or 'auto'")
    if margin_audit and not bounded:
      raise ValueError("margin_audit compares the bounded gate with the exact one: pass "
                       "margin_refresh='bounded'")
    bound = staleness.Staleness(margin_max_age, margin_band) if bounded else None
    self.configure_margins(reuse=False)
    if (not reuse_margins or not self.regulate or self.backward == "masked"
        or not self.policy.idle_epochs or model_sources.has_batch_norm(self.network)):
      return False
    self.configure_margins(True, bound, audit=margin_audit)
    return True

  def compile(self, optimizer="adam", **kwargs):
    """`keras.Model.compile`, then builds the optimizer over the network's weights."""
    super().compile(optimizer=optimizer, **kwargs)
    self.optimizer.build(self.trained_variables())

  def fit(self, x=None, y=None, *args, **kwargs):
    """`keras.Model.fit`, with self-regulation's schedule and sample ids.

    Takes what `keras.Model.fit` takes: a dataset from `with_sample_ids` (ids travel
    with the rows), or NumPy arrays / tensors `x, y` (a sample's id is its row; Keras'
    shuffling keeps it with the row), `sample_weight`, `validation_data` and
    `validation_split` (validation runs the network without the gate: `val_loss`,
    `val_accuracy`). Training continues across calls: eta(n) counts the epochs this
    model has trained (or starts at `initial_epoch` when given).
    """
    bound = inspect.signature(keras.Model.fit).bind(self, x, y, *args, **kwargs).arguments
    bound.pop("self")
    if bound.get("initial_epoch") is None or "initial_epoch" not in bound:
      # Keras' fit(epochs=E) trains E epochs; continuing, they are epochs k..k+E-1.
      done = int(self.epochs_trained.numpy())
      bound["initial_epoch"] = done
      bound["epochs"] = done + int(bound.get("epochs", 1))
    bound = sample_ids.with_ids_for_fit(bound, self.num_examples)
    callbacks = list(bound.get("callbacks") or [])
    if bound.get("steps_per_epoch") is None:
      callbacks.append(_EpochSizeCheck(self.num_examples))
    if not any(isinstance(c, callbacks_lib.RegulationSchedule) for c in callbacks):
      callbacks.insert(0, callbacks_lib.RegulationSchedule(self.alpha, self.num_examples,
                                                           bound["initial_epoch"]))
    if self._margin_rollover:  # After the schedule, which picks each epoch's backward.
      at = next(i for i, c in enumerate(callbacks)
                if isinstance(c, callbacks_lib.RegulationSchedule))
      callbacks.insert(at + 1, margin_cache.MarginCacheRollover(reuse=True))
    for callback in callbacks:
      # Keras infers a monitor's direction from compiled metrics; these models log their
      # accuracy without compiled ones, so say what Keras would have inferred.
      if (getattr(callback, "mode", None) == "auto"
          and str(getattr(callback, "monitor", "")).removeprefix("val_") == "accuracy"):
        callback.mode = "max"
    if not any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks):
      callbacks.append(callbacks_lib.ConsoleProgbar())  # Last: after the logs are complete.
    bound["callbacks"] = callbacks
    self._val_trackers_reset()
    return super().fit(**bound)

  def rows_seen_this_epoch(self):
    """Rows the train steps saw since the epoch began (every replica's); validation
    resets the trackers, so its start keeps the count (`evaluate`)."""
    kept = getattr(self, "rows_at_validation", None)
    return kept if kept is not None else self._trackers["participation_fraction"].count.numpy()

  # -- plain data: validation, evaluate, predict ----------------------------------

  def call(self, inputs, training=False):
    """The network on images (or on a `with_sample_ids` feature dict)."""
    if isinstance(inputs, dict):
      inputs = inputs["image"]
    return self.network(inputs, training=training)

  def evaluate(self, *args, **kwargs):
    """`keras.Model.evaluate` on plain `(x, y)` data: the network's loss and accuracy."""
    if getattr(self, "rows_at_validation", 0) is None:  # Inside a `fit` epoch: keep its count.
      self.rows_at_validation = self._trackers["participation_fraction"].count.numpy()
    self._val_trackers_reset()
    return super().evaluate(*args, **kwargs)

  def test_step(self, data):
    """Cross-entropy and accuracy of the network in inference mode; no gate, no counts."""
    x, y, weight = keras.utils.unpack_x_y_sample_weight(data)
    logits = self(x, training=False)
    labels = tf.reshape(tf.cast(y, tf.int32), [-1])
    ce = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
    loss_tracker, accuracy_tracker = self._val_trackers()
    loss_tracker.update_state(ce, sample_weight=weight)
    accuracy_tracker.update_state(correct, sample_weight=weight)
    return {"loss": loss_tracker.result(), "accuracy": accuracy_tracker.result()}

  def _val_trackers(self):
    if getattr(self, "_validation_trackers", None) is None:
      self._validation_trackers = (keras.metrics.Mean(name="loss"),
                                   keras.metrics.Mean(name="accuracy"))
    return self._validation_trackers

  def _val_trackers_reset(self):
    for tracker in self._val_trackers():
      tracker.reset_state()

  def save(self, filepath, *args, **kwargs):
    """Not supported: the network is what you keep (see the error)."""
    del args, kwargs
    raise NotImplementedError(
        f"{type(self).__name__}.save({filepath!r}): save the network and its counts instead: "
        "model.network.save('net.keras'); np.save('counts.npy', model.participation_counts()); "
        "resume with " + type(self).__name__ + "(keras.saving.load_model('net.keras'), ..., "
        "participation=np.load('counts.npy'), epochs_trained=EPOCHS)")

  def _train_step(self, data, backward):
    if not isinstance(data[0], dict) or "id" not in data[0]:
      raise ValueError(
          f"{type(self).__name__}.fit: the batches carry no sample ids; pass NumPy arrays "
          "(fit(x, y)) or a dataset built as tf_srkd.with_sample_ids(unbatched).shuffle(n)"
          ".batch(b)")
    features = dict(data[0])
    tf.debugging.assert_less(
        features["id"], self.num_examples,
        message=f"a sample id is >= num_examples={self.num_examples}: pass "
        "num_examples=len(your unbatched dataset)")
    if self._significance_table is not None:
      features["significance"] = tf.gather(self._significance_table, features["id"])
    return super()._train_step((features,) + tuple(data[1:]), backward)

  def _sample_weights(self, features, gate):
    weights = super()._sample_weights(features, gate)
    if "sample_weight" in features:  # Decided while tracing: the dataset has weights.
      self._has_user_weights = True
      weights = weights * features["sample_weight"]
    return weights

  def _has_weight(self, count, weights):
    if self._has_user_weights:  # All-zero user weights: no update, as for an empty batch.
      return distributed.global_sum(tf.reduce_sum(tf.stop_gradient(weights))) > 0
    return super()._has_weight(count, weights)


class SelfRegulated(_KerasWorkflow, training.SelfRegulatedModel):
  """Any Keras logits classifier trained with Algorithm 1's self-regulation.

  Args:
    network: a `keras.Model` from images to logits (it is what you keep).
    num_examples: the size of the training set (sample ids lie in [0, N)).
    alpha: the self-regulation rate (`float("inf")`: conventional training,
      every sample takes part, counts still kept).
    backward: "masked" (the default; BatchNorm sees whole batches), "compact"
      (forward and backward on the participants only) or "auto".
    gate_temperature: softmax temperature of the gate's margin.
    normaliser: "participants", "batch" or "weights" (docs/choices.md).
    participation, epochs_trained: the counts and epochs of an earlier training of
      `network` (from `participation_counts()` and `epochs_trained`), to continue it.
    reuse_margins: compact gate: rows whose margin was computed with the current
      weights skip the inference pass (the same gate, less work). Only for data that
      shows each row the same pixels every epoch (no random augmentation in your
      `tf.data` pipeline; augmentation layers inside the network are fine, the gate
      runs it in inference mode). Default: only with `margin_refresh="bounded"`.
    margin_refresh: "exact" (the default) or "bounded": a row that was correct
      with a margin >= eta(n) + `margin_band` also keeps that margin, without a
      forward pass and without taking part, for up to `margin_max_age` epochs
      (docs/performance.md, "Bounded-staleness margins"). Compact or auto backward,
      networks without BatchNorm (others run the exact gate); the same pixels every
      epoch, as for `reuse_margins`.
    margin_max_age, margin_band: K and b of the bounded rule.
    margin_audit: with "bounded", also run the exact gate on every row and log the
      share of rows it admits and the bounded one does not (`gate_misses`) and the
      reverse (`gate_extra`) in `fit`'s history.
  """

  def __init__(self, network, num_examples, *, alpha=0.02, backward="masked",
               gate_temperature=1.0, normaliser="participants", participation=None,
               epochs_trained=0, reuse_margins=None, margin_refresh="exact",
               margin_max_age=staleness.DEFAULT_MAX_AGE, margin_band=staleness.DEFAULT_BAND,
               margin_audit=False, **kwargs):
    super().__init__(network, num_examples, regulate=True, backward=backward,
                     gate_temperature=gate_temperature, normaliser=normaliser, **kwargs)
    self._init_workflow(alpha, None, participation, epochs_trained, _margins(locals()))


class Distiller(_KerasWorkflow, distillation.Distiller):
  """A student distilled from a teacher in one of the four modes (Algorithm 3).

  Args:
    teacher: the teacher network (logits); frozen and run in inference mode
      inside every step.
    student: the student network (logits).
    num_examples: the size of the transfer set.
    mode: "conventional", "significance", "regulated" or "hybrid".
    significance: float [N] in [0, 1] by sample id (`significance(...)` of the
      teacher's counts); required by "significance" and "hybrid".
    alpha: the student's own self-regulation rate (regulated, hybrid).
    temperature, kd_lambda, scale_temperature_squared: the loss (README, "What a run does").
    distillation_losses: None (the paper's tau**2-scaled logit KD), or what
      `keras.distillation.Distiller` takes: one loss or a list of them
      (`LogitsDistillation`, `FeatureDistillation(teacher_layer_name=...,
      student_layer_name=...)`, your `DistillationLoss` subclasses; "logits" is the
      paper's term). Each is computed per sample, so the gate, significance and
      the normaliser apply to it; their weighted sum replaces the KD term, and
      `kd_lambda` still weighs the hard-label cross-entropy.
    distillation_loss_weights: one weight per loss (default 1 each).
    backward, gate_temperature, normaliser, participation, epochs_trained,
      reuse_margins, margin_refresh, margin_max_age, margin_band, margin_audit: as
      `SelfRegulated` (the margins are the student's own gate's: regulated, hybrid).
  """

  def __init__(self, teacher, student, num_examples, *, mode="regulated",
               significance: Optional[np.ndarray] = None, alpha=0.02, temperature=20.0,
               kd_lambda=0.3, scale_temperature_squared=True, backward="masked",
               gate_temperature=1.0, normaliser="participants", participation=None,
               epochs_trained=0, reuse_margins=None, margin_refresh="exact",
               margin_max_age=staleness.DEFAULT_MAX_AGE, margin_band=staleness.DEFAULT_BAND,
               margin_audit=False, distillation_losses=None, distillation_loss_weights=None,
               **kwargs):
    mode = modes_lib.get_mode(mode) if isinstance(mode, str) else mode
    if mode.weight_by_significance and significance is None:
      raise ValueError(f"mode {mode.name!r} weights each sample by the teacher's significance: "
                       "pass significance=tf_srkd.significance(counts, labels, classes)")
    super().__init__(student, num_examples, mode, temperature=temperature, kd_lambda=kd_lambda,
                     scale_temperature_squared=scale_temperature_squared,
                     gate_temperature=gate_temperature,
                     backward=backward if mode.regulate else "masked", normaliser=normaliser,
                     teacher=teacher, distillation_losses=distillation_losses,
                     distillation_loss_weights=distillation_loss_weights, **kwargs)
    self._init_workflow(alpha if mode.regulate else float("inf"),
                        significance if mode.weight_by_significance else None, participation,
                        epochs_trained, _margins(locals()))


def _margins(arguments):
  """The margin settings among a constructor's arguments (`_configure_margins`)."""
  return {name: arguments[name] for name in ("reuse_margins", "margin_refresh", "margin_max_age",
                                             "margin_band", "margin_audit")}

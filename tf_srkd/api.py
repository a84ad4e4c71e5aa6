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

from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tf_srkd import callbacks as callbacks_lib
from tf_srkd import distillation
from tf_srkd import distributed
from tf_srkd import modes as modes_lib
from tf_srkd import regulation
from tf_srkd import training

#: Algorithm 2 and eq. 5, re-exported for users of this module.
significance = regulation.significance
sample_efficiency = regulation.sample_efficiency


def with_sample_ids(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Attaches a stable sample id to every element of an *unbatched* dataset.

  Call it before shuffling and batching: the id is the element's position in
  `dataset`, and participation counts (and significance) are indexed by it, so
  the order of `dataset` itself must be the same every epoch.

  Args:
    dataset: elements `(x, y)` or `(x, y, sample_weight)`: one image (float,
      the scale your model expects), its integer label and optionally a weight.

  Returns:
    A dataset of `({"image": x, "id": i[, "sample_weight": w]}, y)`.
  """

  def attach(i, element):
    if not isinstance(element, tuple) or len(element) not in (2, 3):
      raise ValueError("with_sample_ids: expected (x, y) or (x, y, sample_weight) elements")
    features = {"image": element[0], "id": tf.cast(i, tf.int32)}
    if len(element) == 3:
      features["sample_weight"] = tf.cast(element[2], tf.float32)
    return features, element[1]

  return dataset.enumerate().map(attach, num_parallel_calls=tf.data.AUTOTUNE)


class _KerasWorkflow:
  """What a plain Keras user needs on top of the library's step (a mixin)."""

  def _init_workflow(self, alpha, significance_values):
    self.alpha = float(alpha)
    self._significance_table = None
    if significance_values is not None:
      values = np.asarray(significance_values, np.float32)
      if values.shape != (self.num_examples,):
        raise ValueError(f"significance: expected shape ({self.num_examples},), got "
                         f"{values.shape}")
      self._significance_table = keras.Variable(values, trainable=False, name="significance")
    self._has_user_weights = False

  def compile(self, optimizer="adam", **kwargs):
    """`keras.Model.compile`, then builds the optimizer over the network's weights."""
    super().compile(optimizer=optimizer, **kwargs)
    self.optimizer.build(self.network.trainable_variables)

  def fit(self, x=None, *args, callbacks=None, initial_epoch=0, **kwargs):
    """`keras.Model.fit` with the threshold schedule eta(n) = 1 - exp(-alpha n) added."""
    callbacks = list(callbacks or [])
    if not any(isinstance(c, callbacks_lib.RegulationSchedule) for c in callbacks):
      callbacks.insert(0, callbacks_lib.RegulationSchedule(self.alpha, self.num_examples,
                                                           initial_epoch))
    kwargs.setdefault("shuffle", False)  # tf.data datasets shuffle themselves.
    return super().fit(x, *args, callbacks=callbacks, initial_epoch=initial_epoch, **kwargs)

  def _train_step(self, data, backward):
    features = dict(data[0])
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
    normaliser: "participants", "batch" or "weights" (README Choices).
  """

  def __init__(self, network, num_examples, *, alpha=0.02, backward="masked",
               gate_temperature=1.0, normaliser="participants", **kwargs):
    super().__init__(network, num_examples, regulate=True, backward=backward,
                     gate_temperature=gate_temperature, normaliser=normaliser, **kwargs)
    self._init_workflow(alpha, None)


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
    temperature, kd_lambda, scale_temperature_squared: the loss (README).
    backward, gate_temperature, normaliser: as `SelfRegulated`.
  """

  def __init__(self, teacher, student, num_examples, *, mode="regulated",
               significance: Optional[np.ndarray] = None, alpha=0.02, temperature=20.0,
               kd_lambda=0.3, scale_temperature_squared=True, backward="masked",
               gate_temperature=1.0, normaliser="participants", **kwargs):
    mode = modes_lib.get_mode(mode) if isinstance(mode, str) else mode
    if mode.weight_by_significance and significance is None:
      raise ValueError(f"mode {mode.name!r} weights each sample by the teacher's significance: "
                       "pass significance=tf_srkd.significance(counts, labels, classes)")
    super().__init__(student, num_examples, mode, temperature=temperature, kd_lambda=kd_lambda,
                     scale_temperature_squared=scale_temperature_squared,
                     gate_temperature=gate_temperature,
                     backward=backward if mode.regulate else "masked", normaliser=normaliser,
                     teacher=teacher, **kwargs)
    self._init_workflow(alpha if mode.regulate else float("inf"),
                        significance if mode.weight_by_significance else None)

"""The quantization-aware fine-tuning of a fake-quantized student: its objective and loop.

`Objective` is the student's own distillation objective read from its run's flags
(KD at tau + lambda CE, the mode's significance weights and self-regulating gate,
the run's loss normaliser), or plain cross-entropy on the labels; `fine_tune` trains
a tfmot-wrapped tf_keras model under it (`export.qat` runs it in its subprocess).
"""

import dataclasses

import numpy as np

from tf_srkd.core import losses
from tf_srkd.core import regulation
from tf_srkd.data import arrays as data


@dataclasses.dataclass(frozen=True)
class Objective:
  """The student's own distillation objective, read from its run's settings.

  Attributes:
    temperature, kd_lambda, scale_temperature_squared: the KD loss.
    weight_by_significance: the mode's significance weights.
    regulate: the mode's self-regulating gate (regulated, hybrid).
    alpha: the students' rate; fine-tuning epoch k gates at eta(first_epoch + k).
    first_epoch: the epoch the student's schedule continues from (its distill epochs).
    gate_temperature: softmax temperature of the gate's margin.
    normaliser: participants, batch or weights (`--distill_loss_normaliser`).
  """
  temperature: float = 20.0
  kd_lambda: float = 0.3
  scale_temperature_squared: bool = True
  weight_by_significance: bool = False
  regulate: bool = False
  alpha: float = 0.02
  first_epoch: int = 0
  gate_temperature: float = 1.0
  normaliser: str = "batch"
  distill: bool = True

  def describe(self) -> str:
    if not self.distill:
      return "labels: CE, every sample, mean over the batch (plain QAT)"
    return ("distillation: KL(teacher/tau || student/tau)"
            f"{' * tau^2' if self.scale_temperature_squared else ''} + lambda * CE"
            f"{', weighted by significance' if self.weight_by_significance else ''}"
            f"{', self-regulated (eta(first_epoch + k))' if self.regulate else ''}"
            f", normalised by {self.normaliser}")


def objective_of(cfg: dict, mode, labels_only: bool = False) -> Objective:
  """The `Objective` of a student trained in `mode` by a run with settings `cfg`
  (`labels_only`: cross-entropy on every sample instead, plain QAT)."""
  if labels_only:
    return Objective(kd_lambda=1.0, distill=False)
  def flag(name, default, kind=float):
    value = cfg.get(name)
    if value is None:
      return default
    if kind is bool:
      return value if isinstance(value, bool) else str(value).lower() == "true"
    return kind(value)

  epochs = flag("distill_epochs", None, int) or flag("epochs", 0, int)
  return Objective(
      temperature=flag("temperature", 20.0), kd_lambda=flag("kd_lambda", 0.3),
      scale_temperature_squared=flag("kd_scale_temperature_squared", True, bool),
      weight_by_significance=bool(mode.weight_by_significance), regulate=bool(mode.regulate),
      alpha=flag("distill_alpha", 0.02), first_epoch=epochs,
      gate_temperature=flag("gate_temperature", 1.0),
      normaliser=str(cfg.get("distill_loss_normaliser") or "participants"))


def fine_tune(qmodel, tf_keras, train, teacher_logits, significance, objective: Objective, *,
              epochs, learning_rate, batch_size, seed):
  """Distillation fine-tuning of the quantize-wrapped model under `objective`.

  One training-mode forward per batch gives both the loss and, for the
  self-regulating modes, the gate (as the masked train step does): a sample takes
  part iff the fake-quantized student misclassifies it or its margin is below
  eta(first_epoch + k).

  Returns:
    (per-epoch mean losses, per-epoch participation shares).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  extras = {"teacher_logits": teacher_logits}
  if significance is not None:
    extras["significance"] = significance.astype(np.float32)
  dataset = data.train_dataset(train, batch_size, seed, 0, epochs, extras)
  optimizer = tf_keras.optimizers.Adam(learning_rate)
  variables = qmodel.trainable_variables
  # Its slots now, not in the step's first call: a tf.function that creates variables
  # is traced twice, and a fake-quantized MobileNet's trace costs seconds.
  optimizer.build(variables)
  eta = tf.Variable(0.0, trainable=False, dtype=tf.float32)

  @tf.function
  def step(features, labels):
    with tf.GradientTape() as tape:
      logits = qmodel(features["image"], training=True)
      if objective.distill:
        total, _, _ = losses.distillation_loss(labels, features["teacher_logits"], logits,
                                               objective.temperature, objective.kd_lambda,
                                               objective.scale_temperature_squared)
      else:
        total = losses.cross_entropy(labels, logits)
      gate = tf.ones_like(total)
      if objective.regulate:
        gate = regulation.gate(tf.stop_gradient(logits), labels, eta,
                               objective.gate_temperature)[0]
      weights = gate * (tf.cast(features["significance"], tf.float32)
                        if objective.weight_by_significance else 1.0)
      divisor, floor = {"participants": (tf.reduce_sum(gate), 1.0),
                        "batch": (tf.cast(tf.size(labels), tf.float32), 1.0),
                        "weights": (tf.reduce_sum(weights), 1e-6)}[objective.normaliser]
      loss = losses.normalised_loss(total, weights, divisor, floor)
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss, tf.reduce_sum(gate)

  steps = data.steps_per_epoch(train.size, batch_size)
  history, shares, running, taking_part = [], [], [], 0.0
  for i, (features, labels) in enumerate(dataset):
    if i % steps == 0:
      eta.assign(regulation.threshold(objective.alpha, objective.first_epoch + i // steps)
                 if objective.regulate else 0.0)
    loss, count = step(features, labels)
    running.append(float(loss))
    taking_part += float(count)
    if (i + 1) % steps == 0:
      history.append(float(np.mean(running)))
      shares.append(taking_part / train.size)
      running, taking_part = [], 0.0
  return history, shares

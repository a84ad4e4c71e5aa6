"""Algorithm 3: distillation in the four modes over one train step.

The student is a `SelfRegulatedModel` whose objective is
L_KD(softmax(z_T / tau), softmax(z_S / tau)) + lambda * CE(y, softmax(z_S)).
The mode only sets two booleans: `regulate` (the student gates itself with its
own alpha) and `weight_by_significance` (eq. 4).

Teacher logits come from the features (`teacher_logits`, cached once per
distillation stage and gathered by sample id), so the teacher never runs inside
the step; with data augmentation the cache would be stale, and a live `teacher`
model is passed instead.
"""

import tensorflow as tf

from tf_srkd.core import losses
from tf_srkd.core import modes as modes_lib
from tf_srkd.core import training


class Distiller(training.SelfRegulatedModel):
  """A student trained from a teacher's soft targets.

  Args:
    student: the student network (logits).
    num_examples: size of the transfer set (sample ids are in [0, N)).
    mode: a `modes.Mode`.
    temperature: tau for the soft targets.
    kd_lambda: weight of the hard-label cross-entropy.
    scale_temperature_squared: multiply the KD term by tau**2 (Hinton).
    gate_temperature: softmax temperature of the student's own gate.
    backward: masked | compact | auto.
    normaliser: participants | batch | weights (see `config.LOSS_NORMALISERS`).
    teacher: optional live teacher network; when given, its logits are computed
      in the step (needed with augmentation) instead of read from features.
    **kwargs: also `policy`, the gate policy of a regulating mode (`tf_srkd.core.gates`).
  """

  def __init__(self, student, num_examples, mode: modes_lib.Mode, *, temperature, kd_lambda,
               scale_temperature_squared=True, gate_temperature=1.0, backward="masked",
               normaliser="participants", teacher=None, **kwargs):
    super().__init__(student, num_examples, regulate=mode.regulate,
                     weight_by_significance=mode.weight_by_significance,
                     gate_temperature=gate_temperature, backward=backward,
                     normaliser=normaliser, **kwargs)
    self.mode = mode
    self.temperature = float(temperature)
    self.kd_lambda = float(kd_lambda)
    self.scale_temperature_squared = bool(scale_temperature_squared)
    self.teacher = teacher
    if teacher is not None:
      teacher.trainable = False

  def loss_part_names(self):
    return ("kd_loss", "ce_loss")

  def teacher_logits(self, features):
    if self.teacher is not None:
      return tf.stop_gradient(self.teacher(features["image"], training=False))
    return features["teacher_logits"]

  def per_sample_loss(self, features, labels, logits):
    total, kd, ce = losses.distillation_loss(
        labels, self.teacher_logits(features), logits, self.temperature, self.kd_lambda,
        self.scale_temperature_squared)
    return total, {"kd_loss": kd, "ce_loss": ce}

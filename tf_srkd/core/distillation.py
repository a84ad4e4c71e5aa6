"""Algorithm 3: distillation in the four modes over one train step.

The student is a `SelfRegulatedModel` whose objective is
L_KD(softmax(z_T / tau), softmax(z_S / tau)) + lambda * CE(y, softmax(z_S)).
The mode only sets two booleans: `regulate` (the student gates itself with its
own alpha) and `weight_by_significance` (eq. 4).

Teacher logits come from the features (`teacher_logits`, cached once per
distillation stage and gathered by sample id), so the teacher never runs inside
the step; with data augmentation the cache would be stale, and a live `teacher`
model is passed instead.

L_KD may also be a weighted sum of `keras.distillation` losses
(`distillation_losses`, `distill_terms`): each is computed per sample, so the
gate, significance and the normaliser apply to it as to the paper's term. A loss
that reads layers (`FeatureDistillation(teacher_layer_name=...)`) needs the live
teacher: both models' layers are read in one forward each.
"""

import tensorflow as tf

from tf_srkd.core import distill_terms
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
    distillation_losses: None (the paper's L_KD), or one or a list of losses:
      "logits" (the paper's term) and `keras.distillation.DistillationLoss`
      objects; their weighted sum replaces L_KD (`distill_terms`).
    distillation_loss_weights: one weight per loss (default 1 each).
    **kwargs: also `policy`, the gate policy of a regulating mode (`tf_srkd.core.gates`).
  """

  def __init__(self, student, num_examples, mode: modes_lib.Mode, *, temperature, kd_lambda,
               scale_temperature_squared=True, gate_temperature=1.0, backward="masked",
               normaliser="participants", teacher=None, distillation_losses=None,
               distillation_loss_weights=None, **kwargs):
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
    self.terms = (None if distillation_losses is None
                  else distill_terms.terms_of(distillation_losses, distillation_loss_weights))
    self._teacher_taps = self._student_taps = None
    self._projections = {}
    if self.terms:
      self._build_taps()

  def _build_taps(self):
    """The layer-reading models and projections of the terms that read layers."""
    reading = [t for t in self.terms if t.teacher_layer]
    if reading and self.teacher is None:
      raise ValueError(f"distillation_losses: {reading[0].describe()} reads the teacher's "
                       "layers, which needs the live teacher in the step: pass teacher=")
    for term in self.terms:  # Layer-reading terms are checked below, nested models included.
      if (term.loss != distill_terms.PAPER_KD and not term.teacher_layer
          and self.teacher is not None):
        term.loss.validate_model_compatibility(self.teacher, self.network)
    if not reading:
      return
    self._projections = distill_terms.projections(self.terms, self.teacher, self.network)
    self._teacher_taps = distill_terms.tap_model(
        self.teacher, sorted({t.teacher_layer for t in reading}), "teacher_taps")
    self._student_taps = distill_terms.tap_model(
        self.network, sorted({t.student_layer for t in reading if t.student_layer}),
        "student_taps")

  def forward(self, images, training):
    if self._student_taps is None:
      return super().forward(images, training)
    outputs = self._student_taps(images, training=training)
    return outputs[distill_terms.OUTPUT], outputs

  def trained_extras(self):
    return [self._projections[key] for key in sorted(self._projections)]

  def loss_part_names(self):
    return ("kd_loss", "ce_loss")

  def teacher_logits(self, features):
    if self.teacher is not None:
      return tf.stop_gradient(self.teacher(features["image"], training=False))
    return features["teacher_logits"]

  def per_sample_loss(self, features, labels, logits, taps=None):
    if self.terms is None:
      total, kd, ce = losses.distillation_loss(
          labels, self.teacher_logits(features), logits, self.temperature, self.kd_lambda,
          self.scale_temperature_squared)
      return total, {"kd_loss": kd, "ce_loss": ce}
    kd = self._distillation_terms(features, logits, taps)
    ce = losses.cross_entropy(labels, logits)
    return kd + self.kd_lambda * ce, {"kd_loss": kd, "ce_loss": ce}

  def _distillation_terms(self, features, logits, taps):
    """sum_k w_k * term_k, per sample."""
    if self._teacher_taps is not None:
      teacher = tf.nest.map_structure(
          tf.stop_gradient, self._teacher_taps(features["image"], training=False))
      teacher_logits = teacher[distill_terms.OUTPUT]
    else:
      teacher, teacher_logits = {}, self.teacher_logits(features)
    total = tf.zeros_like(logits[:, 0], tf.float32)
    for term in self.terms:
      if term.loss == distill_terms.PAPER_KD:
        value = losses.kd_divergence(teacher_logits, logits, self.temperature,
                                     self.scale_temperature_squared)
      else:
        target = teacher[term.teacher_layer] if term.teacher_layer else teacher_logits
        student = taps[term.student_layer] if term.student_layer else logits
        projection = self._projections.get(term.key)
        if projection is not None:
          student = projection(student)
        term.loss.validate_outputs(target, student)
        value = distill_terms.per_sample(term.loss, target, student)
      total = total + term.weight * value
    return total

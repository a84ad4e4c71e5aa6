"""Per-sample losses of Algorithm 3 and the one normalisation rule.

loss = sum_i g_i * s_i * L_i / max(1, sum_i g_i), with g the gate (1 for every
sample when the run does not self-regulate) and s the significance (1 when the
mode does not weight by it). A student's `--distill_loss_normaliser=batch`
divides by the batch size instead of the participant count (the two agree
without a gate); `weights` divides by sum_i g_i * s_i (a weighted mean). Under
a distribution strategy every divisor is the *global* one, so the per-replica
losses add up to the global loss.
"""

import tensorflow as tf


def cross_entropy(labels, logits):
  """Per-sample sparse categorical cross-entropy at temperature 1."""
  return tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32))


def kd_divergence(teacher_logits, student_logits, temperature, scale_temperature_squared=True):
  """Per-sample KL(softmax(t / tau) || softmax(s / tau)).

  KL differs from the cross-entropy between the softened distributions by the
  teacher's entropy, a constant for the student, so both give the same
  gradients; KL reads as 0 for a perfect student.

  Args:
    teacher_logits: [batch, classes].
    student_logits: [batch, classes].
    temperature: tau > 0.
    scale_temperature_squared: multiply by tau**2, as Hinton et al. do to keep
      the soft-target gradients on the scale of the hard-target ones.

  Returns:
    float32 [batch].
  """
  t = tf.cast(teacher_logits, tf.float32) / temperature
  s = tf.cast(student_logits, tf.float32) / temperature
  teacher_log_probs = tf.nn.log_softmax(t, axis=-1)
  kl = tf.reduce_sum(
      tf.exp(teacher_log_probs) * (teacher_log_probs - tf.nn.log_softmax(s, axis=-1)), axis=-1)
  if scale_temperature_squared:
    kl = kl * (temperature**2)
  return kl


def distillation_loss(labels, teacher_logits, student_logits, temperature, kd_lambda,
                      scale_temperature_squared=True):
  """Algorithm 3's per-sample objective L_KD + lambda * CE.

  Returns:
    (total, kd, ce): three float32 [batch] tensors.
  """
  kd = kd_divergence(teacher_logits, student_logits, temperature, scale_temperature_squared)
  ce = cross_entropy(labels, student_logits)
  return kd + kd_lambda * ce, kd, ce


def normalised_loss(per_sample, weights, normaliser, floor=1.0):
  """sum(weights * per_sample) / max(floor, normaliser).

  Args:
    per_sample: [batch] per-sample losses.
    weights: [batch] g_i * s_i.
    normaliser: scalar sum of the gate, the batch size, or the sum of the
      weights (global under a strategy).
    floor: lower bound of the divisor (1 for counts: an empty batch has loss 0).
  """
  divisor = tf.maximum(tf.cast(normaliser, tf.float32), tf.cast(floor, tf.float32))
  return tf.reduce_sum(weights * per_sample) / divisor

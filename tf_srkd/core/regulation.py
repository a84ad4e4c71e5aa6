"""Self-regulation math (Algorithms 1 and 2, eq. 5) as plain functions.

The per-step functions (`margin`, `gate`) take and return TensorFlow tensors so
they run inside `train_step`; the per-run functions (`threshold`,
`significance`, `sample_efficiency`) are NumPy/Python and run between epochs.
"""

import logging
import math

import numpy as np
import tensorflow as tf


def threshold(alpha: float, epoch: int) -> float:
  """Epoch-dependent participation threshold eta(n) = 1 - exp(-alpha * n).

  Args:
    alpha: self-regulation rate, >= 0; `inf` means conventional training.
    epoch: 0-based epoch index n.

  Returns:
    eta in [0, 1) for finite alpha; `inf` for alpha = inf, so that every margin
    (which is at most 1) lies below it and every sample takes part.
  """
  if alpha < 0:
    raise ValueError(f"alpha must be >= 0, got {alpha}")
  if math.isinf(alpha):
    return math.inf
  return 1.0 - math.exp(-alpha * epoch)


def margin(probs: tf.Tensor) -> tf.Tensor:
  """delta = p_top1 - p_top2 per row of a [batch, classes] probability matrix."""
  top2 = tf.math.top_k(probs, k=2).values
  return top2[:, 0] - top2[:, 1]


def gate(logits: tf.Tensor, labels: tf.Tensor, eta, temperature=1.0):
  """Algorithm 1's participation rule for a batch.

  A sample takes part iff it is misclassified or its margin delta (from
  softmax(logits / temperature)) is below eta.

  Args:
    logits: [batch, classes] float logits.
    labels: [batch] integer labels.
    eta: scalar threshold (may be inf).
    temperature: softmax temperature used for delta; 1 for the teacher and by
      default for students.

  Returns:
    (participates, delta, predicted): float32 [batch] 0/1 mask, float32 [batch]
    margins and int32 [batch] predicted classes.
  """
  probs = tf.nn.softmax(tf.cast(logits, tf.float32) / temperature, axis=-1)
  delta = margin(probs)
  predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
  return gate_from_margin(delta, predicted, labels, eta), delta, predicted


def gate_from_margin(delta, predicted, labels, eta):
  """The participation rule from already known margins and predictions."""
  wrong = tf.not_equal(predicted, tf.cast(labels, tf.int32))
  unsure = delta < tf.cast(eta, delta.dtype)
  return tf.cast(tf.logical_or(wrong, unsure), tf.float32)


def significance(counts, labels, num_classes=None) -> np.ndarray:
  """Algorithm 2: participation counts min-max normalised within each class.

  A class whose counts are all equal carries no evidence about which of its
  samples matter, so all of its samples get 1.0 (no down-weighting) and a
  warning is logged.

  Args:
    counts: [N] participation counts v.
    labels: [N] integer labels.
    num_classes: optional, only used to name classes in the warning.

  Returns:
    float32 [N] significance in [0, 1].
  """
  counts = np.asarray(counts, dtype=np.float64)
  labels = np.asarray(labels)
  if counts.shape != labels.shape:
    raise ValueError(f"counts {counts.shape} and labels {labels.shape} differ in shape")
  result = np.ones_like(counts, dtype=np.float32)
  flat_classes = []
  for cls in np.unique(labels):
    members = labels == cls
    low, high = counts[members].min(), counts[members].max()
    if high > low:
      result[members] = ((counts[members] - low) / (high - low)).astype(np.float32)
    else:
      flat_classes.append(int(cls))
  if flat_classes:
    logging.warning(
        "significance: every sample of class(es) %s took part equally often; "
        "they all get significance 1.0%s", flat_classes,
        f" (of {num_classes} classes)" if num_classes else "")
  return result


def sample_efficiency(counts, epochs: int) -> float:
  """zeta = sum(v) / (epochs * |D|), eq. 5."""
  counts = np.asarray(counts)
  if epochs <= 0 or counts.size == 0:
    raise ValueError("sample_efficiency needs epochs > 0 and a non-empty count array")
  return float(counts.sum(dtype=np.int64)) / (epochs * counts.size)

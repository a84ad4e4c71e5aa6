"""One hybrid (and regulated) distillation epoch against an independent recomputation.

The reference below shares nothing with `training.py` but the network's forward
and autodiff: it walks the epoch's batches in the documented order, applies
Algorithm 3's gate from scratch (softmax at T=1, top-2 margin, misclassified or
margin < eta), the loss sum(g*s*L)/max(1, sum g) (or the other normalisers), and
Adam written out in NumPy (Keras' update rule), skipping batches without loss
weight (no participant, or only participants of significance 0) entirely. The
package's epoch under `fit` must land on the same weights and counts for every
backward strategy, which rules out defects in the significance x gate x
normalisation path (compact row selection, rows with significance 0, `auto`).
A batch whose participants all weigh 0 is skipped like an empty one.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_srkd.data import arrays as data
from tf_srkd.core import distillation
from tf_srkd.models import zoo as models
from tf_srkd.core import modes
from tf_srkd.core import training

N, BATCH, SEED, LR, TAU, LAMBDA = 192, 32, 5, 0.01, 20.0, 0.3
BETA1, BETA2, EPSILON = 0.9, 0.999, 1e-7
SGD_LR = 0.5


def _sgd_lr(normaliser):
  """Plain SGD's step: smaller under `weights`, whose loss Σgsl/Σgs is not damped by the
  zero-significance rows, so that lr 0.5 diverges within the epoch (first-layer weights
  near -20) and round-off of either side's convolution algorithm (e.g. under
  `enable_op_determinism`, which another test file switches on for the process)
  is amplified past any tolerance."""
  return SGD_LR / 10 if normaliser == "weights" else SGD_LR


def _problem():
  rng = np.random.default_rng(11)
  split = data.SplitArrays(images=rng.integers(0, 256, (N, 28, 28, 1), dtype=np.uint8),
                           labels=rng.integers(0, 10, N).astype(np.int32))
  teacher_logits = rng.normal(0, 4, (N, 10)).astype(np.float32)
  # As on MNIST, most samples have significance exactly 0.
  significance = np.where(rng.random(N) < 0.6, 0.0, rng.random(N)).astype(np.float32)
  return split, teacher_logits, significance


def _reference_epoch(network, split, teacher_logits, significance, eta, regulate, weighted,
                     optimizer, normaliser="participants"):
  """Returns (participation counts, weights) after one epoch, computed independently.

  `optimizer` is "adam" (Keras' Adam, written out) or "sgd" (plain SGD, which
  unlike Adam is not invariant to the loss scale, so it pins the normaliser).
  """
  weights = [v for v in network.trainable_variables]
  m = [np.zeros(v.shape, np.float32) for v in weights]
  v2 = [np.zeros(v.shape, np.float32) for v in weights]
  counts = np.zeros(N, np.int64)
  step = 0
  order = data.epoch_permutation(N, SEED, 0).numpy()
  for start in range(0, N, BATCH):
    ids = order[start:start + BATCH]
    x = tf.constant(split.images[ids].astype(np.float32) / 255.0)
    y = split.labels[ids]
    probs = tf.nn.softmax(network(x, training=False)).numpy().astype(np.float64)
    top = np.sort(probs, axis=1)[:, ::-1]
    margin = top[:, 0] - top[:, 1]
    wrong = probs.argmax(1) != y
    g = ((wrong | (margin < eta)) if regulate else np.ones(len(ids), bool)).astype(np.float32)
    counts[ids] += g.astype(np.int64)
    s = significance[ids] if weighted else np.ones(len(ids), np.float32)
    if (g * s).sum() == 0:
      continue  # No loss weight: no update, no optimizer step.
    with tf.GradientTape() as tape:
      z = network(x, training=True)
      t = tf.nn.softmax(teacher_logits[ids] / TAU)
      kd = tf.reduce_sum(t * (tf.math.log(t) - tf.nn.log_softmax(z / TAU)), -1) * TAU**2
      ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z)
      divisor = {"participants": max(1.0, float(g.sum())), "batch": float(len(ids)),
                 "weights": max(1e-6, float((g * s).sum()))}[normaliser]
      loss = tf.reduce_sum(g * s * (kd + LAMBDA * ce)) / divisor
    grads = tape.gradient(loss, weights)
    if optimizer == "sgd":
      for var, grad in zip(weights, grads):
        var.assign(var.numpy() - _sgd_lr(normaliser) * grad.numpy())
      continue
    step += 1
    lr_t = LR * np.sqrt(1 - BETA2**step) / (1 - BETA1**step)
    for i, (var, grad) in enumerate(zip(weights, grads)):
      grad = grad.numpy()
      m[i] += (grad - m[i]) * (1 - BETA1)
      v2[i] += (grad * grad - v2[i]) * (1 - BETA2)
      var.assign(var.numpy() - lr_t * m[i] / (np.sqrt(v2[i]) + EPSILON))
  return counts, [w.numpy() for w in network.weights]


def _package_epoch(backward, mode, split, teacher_logits, significance, eta, optimizer,
                   normaliser="participants"):
  keras.utils.set_random_seed(3)
  network = models.build_model("lenet5_half", (28, 28, 1), 10)
  model = distillation.Distiller(network, N, mode, temperature=TAU, kd_lambda=LAMBDA,
                                 backward=backward, normaliser=normaliser)
  model.compile(optimizer=(keras.optimizers.Adam(LR) if optimizer == "adam"
                           else keras.optimizers.SGD(_sgd_lr(normaliser))), jit_compile=False)
  model.optimizer.build(network.trainable_variables)
  extras = {"teacher_logits": teacher_logits}
  if mode.weight_by_significance:
    extras["significance"] = significance
  if backward == "auto":
    model.set_backward("compact")  # What `auto` picks after a low-participation epoch.
  model.eta.assign(eta)
  dataset = data.train_dataset(split, BATCH, SEED, 0, 1, extras)
  model.fit(dataset, epochs=1, steps_per_epoch=data.steps_per_epoch(N, BATCH), verbose=0,
            shuffle=False)
  return model.participation_counts(), [w.numpy() for w in network.weights]


def _slow(*values):
  """Parameters whose combinations only the full suite runs (the fast tier: 6 of 54)."""
  return [pytest.param(v, marks=pytest.mark.slow) for v in values]


@pytest.mark.parametrize("normaliser", ["participants", *_slow("batch", "weights")])
@pytest.mark.parametrize("optimizer", ["adam", *_slow("sgd")])
@pytest.mark.parametrize("mode_name", ["hybrid", "regulated", "significance"])
@pytest.mark.parametrize("backward", ["masked", "compact", *_slow("auto")])
def test_epoch_matches_independent_recomputation(mode_name, backward, optimizer, normaliser):
  mode = modes.get_mode(mode_name)
  if not mode.regulate and backward != "masked":
    pytest.skip("non-regulating modes always train masked")
  if normaliser != "participants" and (optimizer == "adam" or not mode.regulate):
    pytest.skip("the other normalisers are pinned with SGD on the gated modes")
  split, teacher_logits, significance = _problem()
  keras.utils.set_random_seed(3)
  reference_net = models.build_model("lenet5_half", (28, 28, 1), 10)
  # Labels: the untrained network's own predictions for half the samples, so
  # that the gate has both wrong and right, sure and unsure samples to sort;
  # eta: the median initial margin.
  probs = tf.nn.softmax(reference_net(data.preprocess(split.images), training=False)).numpy()
  predicted = probs.argmax(-1)
  top = np.sort(probs, axis=1)
  eta = float(np.median(top[:, -1] - top[:, -2]))
  labels = np.where(np.arange(N) % 2 == 0, predicted, split.labels).astype(np.int32)
  split = data.SplitArrays(split.images, labels)
  counts, weights = _reference_epoch(reference_net, split, teacher_logits, significance, eta,
                                     mode.regulate, mode.weight_by_significance, optimizer,
                                     normaliser)
  assert 0 < counts.sum() < N or not mode.regulate
  got_counts, got_weights = _package_epoch(backward, mode, split, teacher_logits, significance,
                                           eta, optimizer, normaliser)
  np.testing.assert_array_equal(got_counts, counts)
  if optimizer == "sgd":  # Must agree to float32 round-off.
    for got, want in zip(got_weights, weights):
      np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
  else:
    # Adam's m / (sqrt(v) + eps) turns round-off in a ~0 gradient into a step of
    # either sign (up to lr), so a few elements may differ; a wrong gate, weight
    # or normaliser changes nearly every element.
    got = np.concatenate([w.ravel() for w in got_weights])
    want = np.concatenate([w.ravel() for w in weights])
    close = np.isclose(got, want, rtol=1e-3, atol=1e-4)
    assert close.mean() >= 0.99, f"{(~close).sum()} of {close.size} weights differ"

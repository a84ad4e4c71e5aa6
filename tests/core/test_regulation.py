"""Exact tests of the self-regulation math against hand-computed values."""

import logging
import math

import numpy as np
import pytest
import tensorflow as tf

from tf_srkd.core import regulation


def test_threshold_matches_formula_with_minus_sign():
  assert regulation.threshold(0.02, 0) == 0.0
  assert regulation.threshold(0.02, 1) == pytest.approx(1 - math.exp(-0.02))
  assert regulation.threshold(0.5, 2) == pytest.approx(1 - math.exp(-1.0))
  assert regulation.threshold(0.0, 100) == 0.0  # alpha 0: only misclassified samples take part.
  assert 0 < regulation.threshold(0.04, 10) < 1


def test_threshold_inf_lets_everyone_take_part():
  assert regulation.threshold(math.inf, 0) == math.inf
  assert regulation.threshold(math.inf, 7) == math.inf
  with pytest.raises(ValueError):
    regulation.threshold(-0.1, 3)


def test_margin_is_top1_minus_top2():
  probs = tf.constant([[0.7, 0.2, 0.1], [0.1, 0.45, 0.45], [0.0, 0.0, 1.0]])
  np.testing.assert_allclose(regulation.margin(probs).numpy(), [0.5, 0.0, 1.0], atol=1e-7)


def test_gate_hand_computed():
  # softmax([ln 7, ln 2, ln 1]) = [0.7, 0.2, 0.1] -> delta 0.5
  logits = tf.constant(np.log([[7.0, 2.0, 1.0],     # correct, delta 0.5
                               [7.0, 2.0, 1.0],     # wrong label
                               [1.0, 8.0, 1.0],     # correct, delta 0.7
                               [4.0, 4.5, 1.5]]),   # correct, delta 0.05
                       dtype=tf.float32)
  labels = tf.constant([0, 1, 1, 1])
  eta = 0.6
  participates, delta, predicted = regulation.gate(logits, labels, eta)
  np.testing.assert_allclose(delta.numpy(), [0.5, 0.5, 0.7, 0.05], atol=1e-6)
  np.testing.assert_array_equal(predicted.numpy(), [0, 0, 1, 1])
  # 0.5 < 0.6 takes part; misclassified takes part; 0.7 >= 0.6 does not; 0.05 < 0.6 does.
  np.testing.assert_array_equal(participates.numpy(), [1, 1, 0, 1])
  # eta = 0 (epoch 0): only misclassified samples take part.
  np.testing.assert_array_equal(regulation.gate(logits, labels, 0.0)[0].numpy(), [0, 1, 0, 0])
  # eta = inf: everyone.
  np.testing.assert_array_equal(regulation.gate(logits, labels, math.inf)[0].numpy(), [1, 1, 1, 1])


def test_gate_temperature_softens_the_margin():
  logits = tf.constant([[2.0, 0.0]])
  labels = tf.constant([0])
  # T=1: delta = tanh(1) = 0.7616; T=20: delta = tanh(0.05) = 0.04996
  _, d1, _ = regulation.gate(logits, labels, 0.5, temperature=1.0)
  _, d20, _ = regulation.gate(logits, labels, 0.5, temperature=20.0)
  assert d1.numpy()[0] == pytest.approx(math.tanh(1.0), abs=1e-6)
  assert d20.numpy()[0] == pytest.approx(math.tanh(0.05), abs=1e-6)
  assert regulation.gate(logits, labels, 0.5, temperature=1.0)[0].numpy()[0] == 0
  assert regulation.gate(logits, labels, 0.5, temperature=20.0)[0].numpy()[0] == 1


def test_significance_is_classwise_minmax():
  counts = np.array([0, 5, 10, 3, 3, 7, 2])
  labels = np.array([0, 0, 0, 1, 1, 1, 2])
  sig = regulation.significance(counts, labels)
  np.testing.assert_allclose(sig, [0.0, 0.5, 1.0, 0.0, 0.0, 1.0, 1.0])
  assert sig.dtype == np.float32


def test_significance_flat_class_gets_one_and_warns(caplog):
  counts = np.array([4, 4, 4, 1, 9])
  labels = np.array([3, 3, 3, 5, 5])
  with caplog.at_level(logging.WARNING):
    sig = regulation.significance(counts, labels, num_classes=10)
  np.testing.assert_allclose(sig, [1, 1, 1, 0, 1])
  assert "[3]" in caplog.text


def test_sample_efficiency_eq5():
  assert regulation.sample_efficiency([2, 0, 1, 1], epochs=2) == 4 / 8
  # The paper's Table VI MNIST regulated figure: 85528 / (200 * 60000).
  counts = np.zeros(60000, np.int32)
  counts[:85528 % 60000] = 1
  counts += 85528 // 60000
  assert regulation.sample_efficiency(counts, 200) == pytest.approx(85528 / 12_000_000)

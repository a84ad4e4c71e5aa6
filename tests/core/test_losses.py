"""Exact tests of the per-sample losses and the normalisation rule."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_srkd.core import losses


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_cross_entropy_hand_computed():
  logits = np.log(np.array([[0.7, 0.2, 0.1]], np.float32))
  assert losses.cross_entropy([0], logits).numpy()[0] == pytest.approx(-math.log(0.7), rel=1e-6)


def test_kd_is_kl_of_softened_distributions_scaled_by_tau_squared():
  t = np.array([[3.0, 1.0, 0.0]], np.float32)
  s = np.array([[1.0, 2.0, 0.5]], np.float32)
  tau = 4.0
  p, q = _softmax(t / tau), _softmax(s / tau)
  kl = float((p * (np.log(p) - np.log(q))).sum())
  assert losses.kd_divergence(t, s, tau, False).numpy()[0] == pytest.approx(kl, rel=1e-5)
  assert losses.kd_divergence(t, s, tau, True).numpy()[0] == pytest.approx(kl * 16, rel=1e-5)
  assert losses.kd_divergence(t, t, tau).numpy()[0] == pytest.approx(0.0, abs=1e-6)


def test_distillation_loss_is_kd_plus_lambda_ce():
  t = np.array([[3.0, 1.0, 0.0], [0.0, 0.0, 5.0]], np.float32)
  s = np.array([[1.0, 2.0, 0.5], [0.2, 0.1, 0.0]], np.float32)
  y = np.array([0, 2])
  total, kd, ce = losses.distillation_loss(y, t, s, 20.0, 0.3)
  np.testing.assert_allclose(total.numpy(), kd.numpy() + 0.3 * ce.numpy(), rtol=1e-6)
  np.testing.assert_allclose(ce.numpy(), -np.log(_softmax(s)[[0, 1], y]), rtol=1e-5)


def test_normalised_loss_rule():
  per_sample = tf.constant([1.0, 2.0, 3.0, 4.0])
  gate = tf.constant([1.0, 0.0, 1.0, 0.0])
  sig = tf.constant([0.5, 1.0, 1.0, 0.2])
  # regulated: mean over participants
  assert losses.normalised_loss(per_sample, gate, tf.reduce_sum(gate)).numpy() == pytest.approx(2.0)
  # hybrid: (0.5*1 + 1*3) / 2
  assert losses.normalised_loss(per_sample, gate * sig, 2.0).numpy() == pytest.approx(1.75)
  # conventional: plain batch mean
  assert losses.normalised_loss(per_sample, tf.ones(4), 4.0).numpy() == pytest.approx(2.5)
  # significance (eq. 4 over the batch): sum(s L) / B
  assert losses.normalised_loss(per_sample, sig, 4.0).numpy() == pytest.approx((0.5 + 2 + 3 + 0.8) / 4)
  # nobody takes part: 0, no division by zero
  assert losses.normalised_loss(per_sample, tf.zeros(4), 0.0).numpy() == 0.0

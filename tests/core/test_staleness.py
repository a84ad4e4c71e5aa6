"""The bounded-staleness rule: which rows keep a cached margin, exactly."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_srkd.core import staleness

LABELS = np.asarray([0, 1, 2, 3, 4, 5], np.int32)


def _keeps(stamps, predictions, margins, epoch=10, eta=0.5, k=3, band=0.1):
  return np.asarray(staleness.keeps_cached(
      np.asarray(stamps, np.int32), np.asarray(predictions, np.int32), LABELS,
      np.asarray(margins, np.float32), epoch, eta, staleness.Staleness(k, band)))


def test_each_condition_alone_forwards_the_row():
  #          kept  never  too old  wrong  in band  at eta+b
  stamps = [9, 0, 7, 9, 9, 8]
  predictions = [0, 1, 2, 9, 4, 5]
  margins = [0.9, 0.9, 0.9, 0.9, 0.55, 0.6]
  # Epoch 10: stamp 8 is age 3 (kept at K = 3), stamp 7 age 4; eta + b = 0.6 is kept.
  np.testing.assert_array_equal(_keeps(stamps, predictions, margins),
                                [True, False, False, False, False, True])


def test_k0_and_an_infinite_band_keep_nothing():
  args = ([11, 11, 11, 11, 11, 11], LABELS, [1.0] * 6)
  assert not _keeps(*args, k=0).any()
  assert not _keeps(*args, band=math.inf).any()
  assert _keeps(*args).all()  # stamp 11 in epoch 10: computed this epoch, age 0


def test_conventional_training_keeps_nothing():
  assert not _keeps([10] * 6, LABELS, [1.0] * 6, eta=math.inf).any()


def test_ages():
  np.testing.assert_array_equal(staleness.age(np.asarray([1, 5, 6]), 5), [5, 1, 0])
  assert staleness.stamp_of(0) == 1


def test_numpy_and_tensorflow_agree_on_random_rows():
  rng = np.random.default_rng(0)
  n = 1000
  stamps = rng.integers(0, 12, n).astype(np.int32)
  predictions = rng.integers(0, 3, n).astype(np.int32)
  labels = rng.integers(0, 3, n).astype(np.int32)
  margins = rng.random(n).astype(np.float32)
  bound = staleness.Staleness(4, 0.05)
  host = np.asarray(staleness.keeps_cached(stamps, predictions, labels, margins, 11, 0.6, bound))
  graph = tf.function(staleness.keeps_cached, autograph=False)(
      tf.constant(stamps), tf.constant(predictions), tf.constant(labels), tf.constant(margins),
      tf.constant(11), tf.Variable(0.6), bound).numpy()
  np.testing.assert_array_equal(host, graph)
  expected = ((stamps > 0) & (12 - stamps <= 4) & (predictions == labels)
              & (margins >= np.float32(0.6) + np.float32(0.05)))
  np.testing.assert_array_equal(host, expected)
  assert 0 < host.sum() < n


@pytest.mark.parametrize("k,band", [(-1, 0.1), (1.5, 0.1), (2, -0.1), (2, float("nan"))])
def test_a_bad_bound_is_refused(k, band):
  with pytest.raises(ValueError):
    staleness.Staleness(k, band)

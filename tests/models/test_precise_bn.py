"""Precise BatchNorm: the moving statistics become the final weights' batch statistics."""

import keras
import numpy as np

from tf_srkd.models import precise_bn


def _images(n=300, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(n, 6, 6, 2), dtype=np.uint8)


def test_batch_ids_are_full_seeded_batches_within_one_pass():
  ids = precise_bn.batch_ids(300, 64, 100, seed=3)
  assert len(ids) == 4 and all(len(b) == 64 for b in ids)  # 300 // 64 full batches.
  assert len(np.unique(np.concatenate(ids))) == 256
  assert all(np.array_equal(a, b) for a, b in zip(ids, precise_bn.batch_ids(300, 64, 100, 3)))
  assert [len(b) for b in precise_bn.batch_ids(10, 64, 5, 0)] == [10]


def test_moving_statistics_are_the_mean_of_the_batch_statistics():
  inputs = keras.Input((6, 6, 2))
  bn = keras.layers.BatchNormalization(momentum=0.999)
  model = keras.Model(inputs, bn(inputs))
  images = _images()
  used = precise_bn.recompute(model, images, 64, 3, seed=1)
  assert used == 3
  expected_mean, expected_var = [], []
  for rows in precise_bn.batch_ids(len(images), 64, 3, seed=1):
    x = images[rows].astype(np.float64) / 255.0
    expected_mean.append(x.mean(axis=(0, 1, 2)))
    expected_var.append(x.var(axis=(0, 1, 2)))
  np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean(expected_mean, axis=0), rtol=1e-5)
  np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean(expected_var, axis=0),
                             rtol=1e-4)
  assert bn.momentum == 0.999  # Restored.


def test_frozen_batch_norm_and_networks_without_it_are_left_alone():
  inputs = keras.Input((6, 6, 2))
  bn = keras.layers.BatchNormalization()
  bn.trainable = False
  model = keras.Model(inputs, bn(inputs))
  assert precise_bn.recompute(model, _images(), 64, 3, seed=0) == 0
  np.testing.assert_array_equal(bn.moving_mean.numpy(), 0.0)
  plain = keras.Model(inputs, keras.layers.Flatten()(inputs))
  assert precise_bn.recompute(plain, _images(), 64, 3, seed=0) == 0


def test_nested_application_batch_norms_are_all_recomputed():
  from tf_srkd.models import sources as model_sources  # pylint: disable=import-outside-toplevel

  model = model_sources.build("MobileNetV3Small", (32, 32, 3), 10)
  layers = precise_bn.batch_norm_layers(model)
  assert len(layers) > 10
  images = np.random.default_rng(0).integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
  precise_bn.recompute(model, images, 32, 2, seed=0)
  # Every layer moved off its initial (0, 1) statistics.
  assert all(np.any(layer.moving_mean.numpy() != 0) for layer in layers)

"""BatchNorm under the gate: a compact step with one participant."""

import keras
import numpy as np
import tensorflow as tf

from tests.support import model_factories
from tf_srkd.models import sources as model_sources
from tf_srkd.core import training

SHAPE = (16, 16, 3)


def _bn_stats(network):
  bn = [layer for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)]
  return [(np.asarray(b.moving_mean).copy(), np.asarray(b.moving_variance).copy()) for b in bn]


def test_compact_step_with_one_participant_gives_no_nan_and_keeps_moving_statistics():
  """The compact step runs the training-mode forward (BN batch statistics) on one row."""
  keras.utils.set_random_seed(0)
  network = model_factories.tiny_cnn(SHAPE, 10)
  images = np.random.default_rng(0).random((32, *SHAPE), np.float32)
  # Every row correctly "labelled" with the model's own prediction except row 0:
  # at eta = 0 the gate takes exactly the misclassified rows, i.e. row 0.
  labels = np.argmax(np.asarray(network(images, training=False)), -1).astype(np.int32)
  labels[0] = (labels[0] + 1) % 10
  model = training.SelfRegulatedModel(network, 32, backward="compact")
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  model.optimizer.build(network.trainable_variables)
  model.eta.assign(0.0)
  before = _bn_stats(network)
  features = {"image": images, "id": np.arange(32, dtype=np.int32)}
  dataset = tf.data.Dataset.from_tensors((features, labels))
  logs = model.fit(dataset, epochs=3, verbose=0, shuffle=False).history
  counts = model.participation_counts()
  assert counts[0] == 3 and counts[1:].sum() == 0, counts  # One participant, every epoch.
  assert all(np.isfinite(logs["loss"]))
  for w in network.get_weights():
    assert np.isfinite(w).all()
  assert np.isfinite(np.asarray(network(images, training=False))).all()
  for (mean0, var0), (mean1, var1) in zip(before, _bn_stats(network)):
    # Momentum 0.99: three one-row steps move the moving averages by at most ~3 %.
    assert np.isfinite(mean1).all() and (var1 > 0).all()
    np.testing.assert_allclose(var1, var0, rtol=0.05)
    assert np.abs(mean1 - mean0).max() < 0.05 * max(1.0, np.abs(mean0).max()) + 0.05


def test_auto_backward_is_masked_for_batchnorm_networks():
  bn = model_factories.tiny_cnn(SHAPE, 10)
  plain = model_sources.build("lenet5", (28, 28, 1), 10)
  assert model_sources.backward_for("auto", bn) == "masked"
  assert model_sources.backward_for("compact", bn) == "compact"  # Explicit is honoured.
  assert model_sources.backward_for("auto", plain) == "auto"

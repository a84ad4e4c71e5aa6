"""Margin reuse in the Keras API: `reuse_margins=True`, `margin_refresh="bounded"` and the
audit behave as the flag pipeline's `--reuse_margins` / `--margin_refresh` do; by default
(the API cannot see whether a dataset augments) no margin is reused."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_srkd

N, EPOCHS = 128, 10


def _data():
  rng = np.random.default_rng(0)
  images = rng.random((N, 8, 8, 1), np.float32)
  labels = (images[:, :4].mean(axis=(1, 2, 3)) > 0.5).astype(np.int32)  # Learnable.
  return tf.data.Dataset.from_tensor_slices((images, labels))


def _net(batch_norm=False):
  layers = [keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3)]
  if batch_norm:
    layers.append(keras.layers.BatchNormalization())
  return keras.Sequential(layers + [keras.layers.Flatten(), keras.layers.Dense(2)])


def _fit(kind="teacher", batch_norm=False, **margins):
  keras.utils.set_random_seed(0)
  if kind == "teacher":
    model = tf_srkd.SelfRegulated(_net(batch_norm), N, alpha=0.5, backward="compact", **margins)
  else:
    teacher = _net()
    model = tf_srkd.Distiller(teacher, _net(batch_norm), N, mode="regulated", alpha=0.5,
                              backward="compact", **margins)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  train = tf_srkd.with_sample_ids(_data()).shuffle(N, seed=0).batch(32)
  history = model.fit(train, epochs=EPOCHS, verbose=0).history
  return model, history


def _same_run(a, b):
  (model_a, logs_a), (model_b, logs_b) = a, b
  for x, y in zip(model_a.network.get_weights(), model_b.network.get_weights()):
    np.testing.assert_array_equal(x, y)
  np.testing.assert_array_equal(model_a.participation_counts(), model_b.participation_counts())
  assert logs_a["loss"] == logs_b["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_bounded_with_age_0_is_the_exact_gate_bit_for_bit(kind):
  exact = _fit(kind, reuse_margins=True)
  _same_run(exact, _fit(kind, margin_refresh="bounded", margin_max_age=0))
  _same_run(exact, _fit(kind, margin_refresh="bounded", margin_band=float("inf")))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_bounded_takes_more_gate_rows_from_the_cache(kind):
  _, exact = _fit(kind, reuse_margins=True)
  model, bounded = _fit(kind, margin_refresh="bounded")
  assert np.mean(bounded["gate_from_cache"]) > np.mean(exact["gate_from_cache"])
  assert bounded["gate_from_cache"][0] == 0.0  # Nothing is known before the first pass.
  counts = model.participation_counts()
  assert counts.min() >= 0 and counts.max() <= EPOCHS


@pytest.mark.slow
def test_the_audit_reports_misses_and_changes_no_bit():
  bounded = _fit(margin_refresh="bounded")
  audited = _fit(margin_refresh="bounded", margin_audit=True)
  _same_run(bounded, audited)
  logs = audited[1]
  assert all(0.0 <= m <= 1.0 for m in logs["gate_misses"])
  assert logs["gate_extra"] == [0.0] * EPOCHS  # Bounded never admits what exact leaves out.
  assert "gate_misses" not in bounded[1]


@pytest.mark.slow
def test_reusing_exact_margins_takes_the_same_decisions():
  with_cache, _ = _fit(reuse_margins=True)
  without, logs = _fit()  # The default reuses nothing.
  np.testing.assert_array_equal(with_cache.participation_counts(),
                                without.participation_counts())
  assert logs["gate_from_cache"] == [0.0] * EPOCHS


@pytest.mark.slow
def test_a_batch_norm_network_reuses_no_margin():
  _, logs = _fit(batch_norm=True, margin_refresh="bounded")
  assert logs["gate_from_cache"] == [0.0] * EPOCHS


def test_margin_settings_that_cannot_work_name_the_fix():
  with pytest.raises(ValueError, match="margin_refresh must be one of"):
    tf_srkd.SelfRegulated(_net(), N, backward="compact", margin_refresh="stale")
  with pytest.raises(ValueError, match="backward='compact' or 'auto'"):
    tf_srkd.SelfRegulated(_net(), N, margin_refresh="bounded")  # Masked by default.
  with pytest.raises(ValueError, match="reuse_margins=True"):
    tf_srkd.SelfRegulated(_net(), N, backward="compact", margin_refresh="bounded",
                          reuse_margins=False)
  with pytest.raises(ValueError, match="margin_refresh='bounded'"):
    tf_srkd.SelfRegulated(_net(), N, backward="compact", margin_audit=True)
  with pytest.raises(ValueError, match="max_age"):
    tf_srkd.SelfRegulated(_net(), N, backward="compact", margin_refresh="bounded",
                          margin_max_age=-1)
  with pytest.raises(ValueError, match="band"):
    tf_srkd.Distiller(_net(), _net(), N, backward="compact", margin_refresh="bounded",
                      margin_band=float("nan"))
  # A student that does not regulate itself has no gate to bound: nothing to refuse.
  tf_srkd.Distiller(_net(), _net(), N, mode="conventional", margin_refresh="bounded")

"""The per-sample margin cache: only stale rows are forwarded, versions decide freshness."""

import numpy as np
import pytest
import tensorflow as tf

from tf_srkd.core import margin_cache

N = 8


class _Forward:
  """A fake gate pass: margin = image value / 10, prediction = label + 1; counts rows."""

  def __init__(self):
    self.rows = []

  def __call__(self, images, labels):
    self.rows.append(int(tf.shape(images)[0]))
    return tf.cast(images, tf.float32) / 10.0, tf.cast(labels, tf.int32) + 1


def _cache_with_carry(versions, margins=0.5, predictions=7, stamps=1, epoch=1):
  cache = margin_cache.MarginCache(N)
  cache.carry = (np.broadcast_to(np.float32(margins), [N]).copy(),
                 np.broadcast_to(np.int32(predictions), [N]).copy(),
                 np.asarray(versions, np.int32), np.broadcast_to(np.int32(stamps), [N]).copy())
  cache.begin_epoch(tf.distribute.get_strategy(), reuse=True, epoch=epoch)
  return cache


def _lookup(cache, ids, version, bounded=None, labels=None):
  forward = _Forward()
  ids = tf.constant(ids, tf.int32)
  images = tf.cast(ids, tf.float32)
  labels = ids if labels is None else tf.constant(labels, tf.int32)
  delta, predicted, fresh, versions, stamps = cache.margins_for(
      ids, images, labels, tf.constant(version), forward, bounded)
  _lookup.recorded = versions.numpy(), stamps.numpy()
  return delta.numpy(), predicted.numpy(), fresh.numpy(), forward.rows


def test_only_stale_rows_are_forwarded_and_scattered_back():
  cache = _cache_with_carry([3, 3, 2, 3, 0, 3, 3, 3])
  delta, predicted, fresh, rows = _lookup(cache, [1, 2, 4, 5], 3)
  assert rows == [2]  # ids 2 (old version) and 4 (never computed)
  np.testing.assert_array_equal(fresh, [1, 0, 0, 1])
  np.testing.assert_allclose(delta, [0.5, 0.2, 0.4, 0.5])
  np.testing.assert_array_equal(predicted, [7, 3, 5, 7])


def test_all_fresh_runs_no_forward_and_all_stale_the_whole_batch():
  cache = _cache_with_carry([5] * N)
  assert _lookup(cache, [0, 3, 6], 5)[3] == []
  _, predicted, fresh, rows = _lookup(cache, [0, 3, 6], 6)  # one update later: all stale
  assert rows == [3] and not fresh.any()
  np.testing.assert_array_equal(predicted, [1, 4, 7])


def test_without_a_carry_every_row_is_stale():
  cache = margin_cache.MarginCache(N)
  cache.begin_epoch(tf.distribute.get_strategy(), reuse=True, epoch=0)
  assert _lookup(cache, [0, 1], 1)[3] == [2]  # version 0 means never, even at iteration 0


def test_record_read_and_epoch_reset():
  cache = margin_cache.MarginCache(N)
  strategy = tf.distribute.get_strategy()
  cache.begin_epoch(strategy, reuse=False, epoch=6)
  cache.record(tf.constant([2, 5]), tf.constant([0.25, 0.75]), tf.constant([1, 9]),
               tf.constant(4))
  margins, predictions, versions, stamps = cache.read()
  np.testing.assert_array_equal(versions, [0, 0, 4, 0, 0, 4, 0, 0])
  np.testing.assert_array_equal(stamps, [0, 0, 7, 0, 0, 7, 0, 0])  # epoch 6's stamp
  np.testing.assert_array_equal(predictions[[2, 5]], [1, 9])
  np.testing.assert_allclose(margins[[2, 5]], [0.25, 0.75])
  cache.begin_epoch(strategy, reuse=False, epoch=7)
  assert not any(a.any() for a in cache.read())


def _teacher():
  import keras  # pylint: disable=import-outside-toplevel

  from tf_srkd.models import zoo as models  # pylint: disable=import-outside-toplevel
  from tf_srkd.core import training  # pylint: disable=import-outside-toplevel

  model = training.SelfRegulatedModel(models.build_model("lenet5", (28, 28, 1), 10), N)
  model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
  model.optimizer.build(model.network.trainable_variables)
  return model


def test_the_checkpoint_carries_the_cache_and_old_checkpoints_still_restore(tmp_path):
  from tf_srkd.run import resume  # pylint: disable=import-outside-toplevel

  model = _teacher()
  old = tf.train.Checkpoint(network=model.network, optimizer=model.optimizer,
                            epoch=tf.Variable(2, dtype=tf.int64),
                            participation=tf.Variable(np.zeros([N], np.int32)))
  tf.train.CheckpointManager(old, str(tmp_path / "old"), max_to_keep=1).save(checkpoint_number=2)
  assert resume.StageCheckpoint(str(tmp_path / "old"), model).restore(5) == 2
  assert model.margin_cache.carry is None

  carry = (np.linspace(0, 1, N).astype(np.float32), np.arange(N, dtype=np.int32),
           np.ones(N, np.int32), np.arange(N, dtype=np.int32) % 4)
  model.margin_cache.carry = carry
  resume.StageCheckpoint(str(tmp_path / "new"), model).save(3)
  fresh = _teacher()
  assert resume.StageCheckpoint(str(tmp_path / "new"), fresh).restore(5) == 3
  for a, b in zip(carry, fresh.margin_cache.carry, strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_checkpoint_without_stamps_restores_with_stamp_zero(tmp_path):
  from tf_srkd.run import resume  # pylint: disable=import-outside-toplevel

  model = _teacher()
  margins = tf.Module()
  margins.present = tf.Variable(1)
  margins.margin = tf.Variable(np.full([N], 0.25, np.float32))
  margins.prediction = tf.Variable(np.arange(N, dtype=np.int32))
  margins.version = tf.Variable(np.ones([N], np.int32))
  old = tf.train.Checkpoint(network=model.network, optimizer=model.optimizer,
                            epoch=tf.Variable(2, dtype=tf.int64),
                            participation=tf.Variable(np.zeros([N], np.int32)), margins=margins)
  tf.train.CheckpointManager(old, str(tmp_path), max_to_keep=1).save(checkpoint_number=2)
  assert resume.StageCheckpoint(str(tmp_path), model).restore(5) == 2
  restored = model.margin_cache.carry
  np.testing.assert_array_equal(restored[1], np.arange(N))
  np.testing.assert_array_equal(restored[3], np.zeros(N))


def test_damaged_stamps_are_refused(tmp_path):
  from tf_srkd.run import resume  # pylint: disable=import-outside-toplevel
  from tf_srkd.errors import ConfigError  # pylint: disable=import-outside-toplevel

  model = _teacher()
  model.margin_cache.carry = (np.zeros(N, np.float32), np.zeros(N, np.int32),
                              np.zeros(N, np.int32), np.full(N, 9, np.int32))
  resume.StageCheckpoint(str(tmp_path), model).save(3)  # stamps from epoch 8, saved at 3
  with pytest.raises(ConfigError, match="margin stamps outside"):
    resume.StageCheckpoint(str(tmp_path), _teacher()).restore(5)


# -- bounded staleness -------------------------------------------------------------


def test_bounded_keeps_only_confident_right_young_rows_and_records_their_old_state():
  from tf_srkd.core import staleness  # pylint: disable=import-outside-toplevel

  # Epoch 5, eta 0.5, band 0.1, K 2: a kept row needs stamp >= 4, prediction == label,
  # margin >= 0.6. Every carried version is old (the weights moved).
  margins = np.asarray([0.9, 0.9, 0.55, 0.9, 0.9, 0.6, 0.9, 0.9], np.float32)
  predictions = np.asarray([0, 1, 2, 9, 4, 5, 6, 7], np.int32)  # id 3 was misclassified
  stamps = np.asarray([5, 4, 5, 5, 3, 5, 0, 5], np.int32)  # id 4 too old, id 6 never
  cache = margin_cache.MarginCache(N)
  cache.carry = (margins, predictions, np.full(N, 2, np.int32), stamps)
  cache.begin_epoch(tf.distribute.get_strategy(), reuse=True, epoch=5)
  bound = (tf.constant(0.5), staleness.Staleness(max_age=2, band=0.1))
  delta, predicted, kept, rows = _lookup(cache, list(range(N)), 9, bound)
  versions, new_stamps = _lookup.recorded
  np.testing.assert_array_equal(kept, [1, 1, 0, 0, 0, 1, 0, 1])
  assert rows == [4]  # ids 2 (margin in the band), 3 (wrong), 4 (age 3 > 2), 6 (never)
  np.testing.assert_array_equal(versions, [2, 2, 9, 9, 9, 2, 9, 2])
  np.testing.assert_array_equal(new_stamps, [5, 4, 6, 6, 6, 5, 6, 5])
  np.testing.assert_allclose(delta[[0, 1, 5, 7]], margins[[0, 1, 5, 7]])
  np.testing.assert_array_equal(predicted[[2, 3]], [3, 4])  # forwarded: label + 1


@pytest.mark.parametrize("bound", [(0, 0.1), (3, float("inf"))])
def test_bounded_with_k0_or_infinite_band_is_the_exact_gate(bound):
  from tf_srkd.core import staleness  # pylint: disable=import-outside-toplevel

  versions = [3, 3, 2, 3, 0, 3, 3, 3]
  exact = _lookup(_cache_with_carry(versions, margins=0.99, predictions=np.arange(N), stamps=5,
                                    epoch=5), list(range(N)), 3)
  exact_recorded = _lookup.recorded
  bounded = _lookup(_cache_with_carry(versions, margins=0.99, predictions=np.arange(N), stamps=5,
                                      epoch=5), list(range(N)), 3,
                    (tf.constant(0.1), staleness.Staleness(*bound)))
  for a, b in zip(exact + exact_recorded, bounded + _lookup.recorded):
    np.testing.assert_array_equal(a, b)


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


def _cache_with_carry(versions):
  cache = margin_cache.MarginCache(N)
  cache.carry = (np.full([N], 0.5, np.float32), np.full([N], 7, np.int32),
                 np.asarray(versions, np.int32))
  cache.begin_epoch(tf.distribute.get_strategy(), reuse=True)
  return cache


def _lookup(cache, ids, version):
  forward = _Forward()
  ids = tf.constant(ids, tf.int32)
  images = tf.cast(ids, tf.float32)
  delta, predicted, fresh = cache.margins_for(ids, images, ids, tf.constant(version), forward)
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
  cache.begin_epoch(tf.distribute.get_strategy(), reuse=True)
  assert _lookup(cache, [0, 1], 1)[3] == [2]  # version 0 means never, even at iteration 0


def test_record_read_and_epoch_reset():
  cache = margin_cache.MarginCache(N)
  strategy = tf.distribute.get_strategy()
  cache.begin_epoch(strategy, reuse=False)
  cache.record(tf.constant([2, 5]), tf.constant([0.25, 0.75]), tf.constant([1, 9]),
               tf.constant(4))
  margins, predictions, versions = cache.read()
  np.testing.assert_array_equal(versions, [0, 0, 4, 0, 0, 4, 0, 0])
  np.testing.assert_array_equal(predictions[[2, 5]], [1, 9])
  np.testing.assert_allclose(margins[[2, 5]], [0.25, 0.75])
  cache.begin_epoch(strategy, reuse=False)
  assert not any(a.any() for a in cache.read())


@pytest.mark.parametrize("versions,iterations,expected", [
    ([4, 4, 4], 3, True), ([4, 3, 4], 3, False), ([0, 0, 0], 0, False), ([1, 1, 1], 0, True)])
def test_all_current(versions, iterations, expected):
  assert margin_cache.all_current(np.asarray(versions), iterations) is expected


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
           np.ones(N, np.int32))
  model.margin_cache.carry = carry
  resume.StageCheckpoint(str(tmp_path / "new"), model).save(3)
  fresh = _teacher()
  assert resume.StageCheckpoint(str(tmp_path / "new"), fresh).restore(5) == 3
  for a, b in zip(carry, fresh.margin_cache.carry, strict=True):
    np.testing.assert_array_equal(a, b)

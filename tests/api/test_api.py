"""The public API for your own Keras code (`tf_srkd.SelfRegulated`, `Distiller`, ...) and
the examples/ scripts that show it."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_srkd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The examples import the installed package; here, the checkout's.
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
           PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
N = 96


def _data(weights=None):
  rng = np.random.default_rng(0)
  images = rng.random((N, 8, 8, 1), np.float32)
  labels = (images[:, :4].mean(axis=(1, 2, 3)) > 0.5).astype(np.int32)  # Learnable.
  parts = (images, labels) if weights is None else (images, labels, weights)
  return tf.data.Dataset.from_tensor_slices(parts), labels


def _net(width=4):
  return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(width, 3),
                           keras.layers.Flatten(), keras.layers.Dense(2)])


def test_with_sample_ids_attaches_positions_and_weights():
  dataset, _ = _data(weights=np.arange(N, dtype=np.float32))
  features, label = next(iter(tf_srkd.with_sample_ids(dataset).skip(5)))
  assert int(features["id"]) == 5 and float(features["sample_weight"]) == 5.0
  assert features["image"].shape == (8, 8, 1) and label.dtype == tf.int32
  plain, _ = _data()
  assert "sample_weight" not in next(iter(tf_srkd.with_sample_ids(plain)))[0]


def test_self_regulated_counts_and_significance():
  dataset, labels = _data()
  keras.utils.set_random_seed(0)
  model = tf_srkd.SelfRegulated(_net(), N, alpha=0.5)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  history = model.fit(tf_srkd.with_sample_ids(dataset).shuffle(N, seed=0).batch(32), epochs=3,
                      verbose=0)
  counts = model.participation_counts()
  assert counts.shape == (N,) and counts.min() >= 0 and counts.max() <= 3
  assert counts[labels == 0].sum() > 0  # Epoch 0: eta=0, every misclassified sample takes part.
  assert history.history["eta"][0] == 0.0 and history.history["eta"][2] > 0  # The schedule ran.
  significance = tf_srkd.significance(counts, labels, 2)
  assert significance.min() >= 0 and significance.max() <= 1
  assert 0 <= tf_srkd.sample_efficiency(counts, 3) <= 1


def test_zero_user_weights_leave_the_model_untouched_but_count():
  dataset, _ = _data(weights=np.zeros(N, np.float32))
  network = _net()
  before = [w.copy() for w in network.get_weights()]
  model = tf_srkd.SelfRegulated(network, N, alpha=float("inf"))
  model.compile(optimizer="adam")
  model.fit(tf_srkd.with_sample_ids(dataset).batch(32), epochs=1, verbose=0)
  for a, b in zip(before, network.get_weights()):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(model.participation_counts(), np.ones(N))


def test_user_weights_multiply_the_gate():
  """Doubling every weight doubles the loss, so it changes the first step's update."""
  updates = []
  for w in (1.0, 2.0):
    dataset, _ = _data(weights=np.full(N, w, np.float32))
    keras.utils.set_random_seed(0)
    network = _net()
    before = network.get_weights()[0].copy()
    model = tf_srkd.SelfRegulated(network, N, alpha=float("inf"))
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.fit(tf_srkd.with_sample_ids(dataset).batch(N), epochs=1, verbose=0)
    updates.append(network.get_weights()[0] - before)
  np.testing.assert_allclose(updates[1], 2 * updates[0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", ["conventional", "significance", "regulated", "hybrid"])
def test_distiller_fits_in_every_mode(mode):
  dataset, _ = _data()
  significance = np.linspace(0, 1, N).astype(np.float32)
  student = tf_srkd.Distiller(_net(8), _net(2), N, mode=mode, significance=significance,
                              alpha=0.5)
  student.compile(optimizer="adam")
  logs = student.fit(tf_srkd.with_sample_ids(dataset).batch(32), epochs=2, verbose=0).history
  assert np.isfinite(logs["loss"]).all() and "kd_loss" in logs
  counts = student.participation_counts()
  if mode in ("regulated", "hybrid"):
    assert counts.max() <= 2
  else:
    np.testing.assert_array_equal(counts, np.full(N, 2))  # No self-regulation: all take part.


def test_significance_modes_need_significance():
  with pytest.raises(ValueError, match="significance="):
    tf_srkd.Distiller(_net(), _net(), N, mode="hybrid")
  with pytest.raises(ValueError, match="expected shape"):
    tf_srkd.Distiller(_net(), _net(), N, mode="significance", significance=np.ones(3))


def _example(name, *args):
  result = subprocess.run([sys.executable, os.path.join("examples", name), *args], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.slow
def test_example_train_self_regulated():
  assert "zeta = " in _example("train_self_regulated.py", "--examples=500", "--epochs=2")


@pytest.mark.slow
def test_example_distill_from_your_teacher():
  out = _example("distill_from_your_teacher.py", "--examples=500", "--epochs=2", "--mode=hybrid")
  assert "hybrid student: test accuracy" in out


@pytest.mark.slow
def test_two_mirrored_cpu_replicas_count_like_one(tmp_path):
  """The API under `strategy.scope()`: 2 replicas give the counts of 1 (same devices set up)."""
  common = ["--examples=600", "--epochs=3", "--alpha=0.5", "--cpu_replicas=2"]
  _example("train_self_regulated.py", *common, f"--save_counts={tmp_path / 'one.npy'}")
  _example("train_self_regulated.py", *common, "--mirrored", f"--save_counts={tmp_path / 'two.npy'}")
  one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
  assert 0 < one.sum() < one.size * 3
  np.testing.assert_array_equal(one, two)

"""Skipping provably idle epochs, and reusing every still-exact margin, is bit-identical
to running them (compact gate)."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_srkd import config as config_lib
from tf_srkd import data
from tf_srkd import datasets
from tf_srkd import distillation
from tf_srkd import models
from tf_srkd import modes
from tf_srkd import stages
from tf_srkd import training

N, EPOCHS, ALPHA = 128, 30, 0.005


@pytest.fixture(scope="module")
def mnist_subset():
  return data.load_split(datasets.get_dataset_spec("mnist"), "train", N)


def _train(split, tmp_path, skip, kind, backward="compact", model_name=None, reuse=None):
  tf.config.experimental.enable_op_determinism()
  config = config_lib.Config(epochs=EPOCHS, batch_size=32, seed=1, verbose=0,
                             skip_idle_epochs=skip, backward=backward, train_examples=N,
                             output_dir=str(tmp_path),
                             reuse_margins=skip if reuse is None else reuse)
  keras.utils.set_random_seed(4)
  if kind == "teacher":
    network = models.build_model(model_name or "lenet5", split.images.shape[1:], 10)
    model = training.SelfRegulatedModel(network, N, backward=backward)
    extras = {}
  else:
    teacher_logits = np.eye(10, dtype=np.float32)[split.labels] * 8.0  # a confident teacher
    network = models.build_model(model_name or "lenet5_half", split.images.shape[1:], 10)
    model = distillation.Distiller(network, N, modes.get_mode("regulated"), temperature=20.0,
                                   kd_lambda=0.3, backward=backward)
    extras = {"teacher_logits": teacher_logits}
  stages.compile_model(model, 1e-2, config)
  history, _ = stages.fit_stage(model, split, config, stage_dir=str(tmp_path / kind),
                                  epochs=EPOCHS, alpha=ALPHA, extras=extras)
  optimizer_state = [np.asarray(v.numpy()).copy() for v in model.optimizer.variables]
  return model, history, optimizer_state


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_skipping_idle_epochs_is_bit_identical(mnist_subset, tmp_path, kind):
  plain, plain_history, plain_opt = _train(mnist_subset, tmp_path / "plain", False, kind)
  fast, fast_history, fast_opt = _train(mnist_subset, tmp_path / "fast", True, kind)
  skipped = [h["epoch"] for h in fast_history if h.get("skipped_epoch") == 1.0]
  assert skipped, "the run never reached an idle epoch; the test needs one"
  np.testing.assert_array_equal(plain.participation_counts(), fast.participation_counts())
  for a, b in zip(plain.network.get_weights(), fast.network.get_weights()):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(plain_opt, fast_opt):
    np.testing.assert_array_equal(a, b)
  assert [h["epoch"] for h in fast_history] == list(range(EPOCHS))
  for p, f in zip(plain_history, fast_history):
    assert p["participation_fraction"] == pytest.approx(f["participation_fraction"], abs=1e-7)
    assert p["zeta"] == pytest.approx(f["zeta"])
  for epoch in skipped:
    assert plain_history[epoch]["participation_fraction"] == 0.0
  if kind == "student":
    # A busy epoch after idle ones took its gate from the cache until its first update.
    assert any(h["gate_from_cache"] > 0 and not h.get("skipped_epoch") and
               h["participation_fraction"] > 0 for h in fast_history)
  assert all(h["gate_from_cache"] == 0 for h in plain_history)


def _assert_same_training(plain, plain_history, plain_opt, fast, fast_history, fast_opt):
  np.testing.assert_array_equal(plain.participation_counts(), fast.participation_counts())
  for a, b in zip(plain.network.get_weights(), fast.network.get_weights()):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(plain_opt, fast_opt):
    np.testing.assert_array_equal(a, b)
  for p, f in zip(plain_history, fast_history, strict=True):
    for key in ("participation_fraction", "loss", "accuracy"):
      assert p[key] == f[key], (p["epoch"], key)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_reusing_exact_margins_is_bit_identical(mnist_subset, tmp_path, kind):
  """Trickle epochs serve the rows seen after the last update from the cache."""
  plain = _train(mnist_subset, tmp_path / "plain", False, kind, reuse=False)
  fast = _train(mnist_subset, tmp_path / "fast", False, kind, reuse=True)
  _assert_same_training(*plain, *fast)
  served = [h["gate_from_cache"] for h in fast[1]]
  assert any(0 < s < 1 for s in served), "no epoch reused part of its margins"
  assert not any(h["gate_from_cache"] for h in plain[1])


@pytest.mark.slow
def test_masked_gate_is_never_shortcut(mnist_subset, tmp_path):
  """The training-mode gate (masked; dropout models) is not what the cache holds."""
  _, history, _ = _train(mnist_subset, tmp_path, True, "teacher", backward="masked")
  assert not any(h.get("skipped_epoch") for h in history)


@pytest.mark.slow
def test_dropout_model_is_only_shortcut_on_the_inference_gate(tmp_path):
  split = data.SplitArrays(
      np.random.default_rng(0).integers(0, 256, (N, 32, 32, 3), np.uint8),
      np.zeros(N, np.int32))  # one class: alexnet learns it at once
  _, auto_history, _ = _train(split, tmp_path / "auto", True, "teacher", backward="auto",
                              model_name="alexnet")
  for h in auto_history:
    if h.get("skipped_epoch"):
      # Only reachable after a compact (inference-mode gate) epoch.
      assert auto_history[h["epoch"] - 1]["compact_backward"] == 1.0

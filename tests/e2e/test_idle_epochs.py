"""Skipping provably idle epochs, and reusing every still-exact margin, is bit-identical
to running them (compact gate)."""


import numpy as np
import pytest

from tests.support.idle_runs import EPOCHS, N, assert_same_training
from tests.support.idle_runs import train as _train
from tf_srkd.data import arrays as data
from tf_srkd.data import datasets


# Shares tests.support.idle_runs' trained runs with the other module that reads them.
pytestmark = pytest.mark.xdist_group("idle_runs")


@pytest.fixture(scope="module")
def mnist_subset():
  return data.load_split(datasets.get_dataset_spec("mnist"), "train", N)


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


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_reusing_exact_margins_is_bit_identical(mnist_subset, tmp_path, kind):
  """Trickle epochs serve the rows seen after the last update from the cache."""
  plain = _train(mnist_subset, tmp_path / "plain", False, kind, reuse=False)
  fast = _train(mnist_subset, tmp_path / "fast", False, kind, reuse=True)
  assert_same_training(*plain, *fast)
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


@pytest.mark.slow
def test_kill_and_resume_with_the_cache_is_bit_identical(mnist_subset, tmp_path):
  """The checkpoint carries the margin cache: the resumed run serves the same rows."""
  plain = _train(mnist_subset, tmp_path / "plain", True, "teacher", reuse=False)
  straight = _train(mnist_subset, tmp_path / "straight", True, "teacher", reuse=True)
  history = straight[1]
  # Resume right before a run epoch that reuses part of its margins.
  stop_at = next(h["epoch"] for h in history if 0 < h["gate_from_cache"] < 1
                 and not h.get("skipped_epoch"))
  resumed = _train(mnist_subset, tmp_path / "resumed", True, "teacher", reuse=True,
                   stop_at=stop_at)
  assert_same_training(*plain, *resumed)
  assert_same_training(*straight, *resumed)
  for s, r in zip(history, resumed[1], strict=True):
    assert (s["gate_from_cache"], s["skipped_epoch"]) == (r["gate_from_cache"],
                                                          r["skipped_epoch"]), s["epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("kind,backward", [("teacher", "auto"), ("student", "compact")])
def test_whole_epochs_per_call_are_bit_identical(mnist_subset, tmp_path, kind, backward):
  """Several steps per compiled call (Keras' steps_per_execution, in a tf.while_loop) train
  exactly the steps of one step per call: weights, optimizer, counts and logs; with idle
  epochs skipped, margins reused and (teacher) `auto` switching backward per epoch. (A call
  of 3 steps on 4-step epochs, straddling epochs, fails this.)"""
  one = _train(mnist_subset, tmp_path / "one", True, kind, backward=backward,
               steps_per_execution=1)
  assert one[0].steps_per_execution == 1
  for requested, per_call in ((0, 4), (3, 2)):  # 4 steps per epoch: 3 rounds down to 2.
    many = _train(mnist_subset, tmp_path / f"many{requested}", True, kind, backward=backward,
                  steps_per_execution=requested)
    assert many[0].steps_per_execution == per_call
    assert_same_training(*one, *many)
  if backward == "auto":
    assert {h.get("compact_backward") for h in one[1]} == {0.0, 1.0}

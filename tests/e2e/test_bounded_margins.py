"""Bounded-staleness margins (`--margin_refresh=bounded`) on small deterministic runs.

The rule itself is unit-tested in tests/core/test_staleness.py and
tests/core/test_margin_cache.py; here whole stages show that K = 0 and an infinite
band are the exact gate bit for bit, that no kept margin is older than K, that
skipping idle epochs and resuming after a kill change no bit, and that the audit
counts what the exact gate would have decided. (On one and two replicas:
tests/e2e/test_distribute.py.)
"""

import keras
import numpy as np
import pytest

from tests.support.idle_runs import N, assert_same_training
from tests.support.idle_runs import train as _train
from tf_srkd.core import staleness
from tf_srkd.data import arrays as data
from tf_srkd.data import datasets


# Shares tests.support.idle_runs' trained runs with the other module that reads them.
pytestmark = pytest.mark.xdist_group("idle_runs")


@pytest.fixture(scope="module")
def mnist_subset():
  return data.load_split(datasets.get_dataset_spec("mnist"), "train", N)


class _CarryLog(keras.callbacks.Callback):
  """Each run epoch's carried (margins, predictions, versions, stamps), and the
  optimizer's iteration count at each epoch's end."""

  def __init__(self):
    super().__init__()
    self.carries, self.iterations = {}, {}

  def on_epoch_end(self, epoch, logs=None):
    carry = self.model.margin_cache.carry
    if carry is not None:
      self.carries[epoch] = tuple(np.array(a) for a in carry)
    self.iterations[epoch] = int(self.model.optimizer.iterations.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("kind,bound", [("teacher", (0, 0.01)), ("student", (0, 0.01)),
                                        ("teacher", (3, float("inf")))])
def test_k0_or_an_infinite_band_is_the_exact_gate_bit_for_bit(mnist_subset, tmp_path, kind,
                                                               bound):
  exact = _train(mnist_subset, tmp_path / "exact", True, kind)
  bounded = _train(mnist_subset, tmp_path / "bounded", True, kind, refresh="bounded",
                   max_age=bound[0], band=bound[1])
  assert_same_training(*exact, *bounded)
  for e, b in zip(exact[1], bounded[1], strict=True):
    assert (e["gate_from_cache"], e.get("skipped_epoch")) == (b["gate_from_cache"],
                                                              b.get("skipped_epoch"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_bounded_keeps_margins_no_older_than_k(mnist_subset, tmp_path, kind):
  """(Which rows the bound keeps, misclassified ones never, is unit-tested on the cache.)"""
  k = 3
  log = _CarryLog()
  exact = _train(mnist_subset, tmp_path / "exact", False, kind, reuse=True)
  model, history, _ = _train(mnist_subset, tmp_path / "bounded", False, kind, reuse=True,
                             refresh="bounded", max_age=k, callbacks=[log])
  assert sorted(log.carries) == list(range(len(history)))  # every epoch ran compact
  ages_seen = set()
  for epoch, (_, _, versions, stamps) in log.carries.items():
    assert (stamps > 0).all()
    ages = staleness.age(stamps, epoch)  # 0: forwarded this epoch
    # Older than K only by exact reuse: the weights have not moved since the value was
    # computed, so its version is the one current since the previous epoch's end.
    older = ages > k
    assert epoch > 0 or not older.any()
    if older.any():
      np.testing.assert_array_equal(versions[older], log.iterations[epoch - 1] + 1)
    ages_seen |= set(ages[~older].tolist())
  assert k in ages_seen, "no margin was kept for K epochs; the test needs one"
  # Kept rows skip the forward pass: more of the gate comes from the cache than exactly.
  assert (sum(h["gate_from_cache"] for h in history)
          > sum(h["gate_from_cache"] for h in exact[1]))
  assert model.participation_counts().max() <= len(history)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_bounded_skipping_idle_epochs_and_resuming_are_bit_identical(mnist_subset, tmp_path,
                                                                     kind):
  """Kept rows age through skipped epochs as through run ones; the checkpoint keeps the
  stamps. (K >= the run and a wide band, so that this tiny run reaches an idle epoch;
  with K = 3 it reaches none: rows aging out of the bound keep every epoch busy.)"""
  bound = dict(refresh="bounded", max_age=30, band=0.5)
  ran = _train(mnist_subset, tmp_path / "ran", False, kind, reuse=True, **bound)
  skipped = _train(mnist_subset, tmp_path / "skipped", True, kind, **bound)
  assert_same_training(*ran, *skipped)
  # The same rows kept, with the same versions and stamps, whether idle epochs ran.
  for a, b in zip(ran[0].margin_cache.carry, skipped[0].margin_cache.carry, strict=True):
    np.testing.assert_array_equal(a, b)
  for r, s in zip(ran[1], skipped[1], strict=True):
    if not s.get("skipped_epoch"):
      assert r["gate_from_cache"] == s["gate_from_cache"], r["epoch"]
  idle = [h["epoch"] for h in skipped[1] if h.get("skipped_epoch")]
  assert idle, "no idle epoch; the test needs one"
  # Resume at the first run epoch after an idle one, which keeps rows from before it.
  stop_at = next(h["epoch"] for h in skipped[1] if h["epoch"] > idle[0]
                 and not h.get("skipped_epoch"))
  resumed = _train(mnist_subset, tmp_path / "resumed", True, kind, stop_at=stop_at, **bound)
  assert_same_training(*skipped, *resumed)


@pytest.mark.slow
def test_the_audit_counts_misses_and_changes_no_decision(mnist_subset, tmp_path):
  plain = _train(mnist_subset, tmp_path / "plain", True, "teacher", refresh="bounded")
  audited = _train(mnist_subset, tmp_path / "audited", True, "teacher", refresh="bounded",
                   audit=True)
  assert_same_training(*plain, *audited)
  history = audited[1]
  assert all("gate_misses" in h and "gate_extra" in h for h in history)
  assert "gate_misses" not in plain[1][0]
  # Rows forwarded or current are gated exactly: the bounded gate never admits more.
  assert all(h["gate_extra"] == 0 for h in history)
  assert all(0 <= h["gate_misses"] <= 1 for h in history)

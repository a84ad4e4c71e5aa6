"""One gather per epoch gives the very batches of the per-batch gather by id."""

import numpy as np
import pytest

from tf_srkd.data import arrays as data
from tf_srkd.data import epoch_batches


def _split(n):
  rng = np.random.default_rng(n)
  return data.SplitArrays(rng.integers(0, 256, (n, 6, 6, 1), np.uint8),
                          rng.integers(0, 10, n).astype(np.int32))


@pytest.mark.parametrize("n,batch_size,augment", [(50, 16, False), (64, 16, False),
                                                  (37, 8, True), (5, 16, False)])
def test_same_batches_as_the_per_batch_gather(n, batch_size, augment):
  split = _split(n)
  rng = np.random.default_rng(1)
  extras = {"teacher_logits": rng.normal(size=(n, 10)).astype(np.float32),
            "significance": rng.random(n).astype(np.float32)}
  augment_fn = data.random_shift_augment(2, flip=False, seed=3) if augment else None
  args = (split, batch_size, 7, 1, 4, extras, augment_fn)  # epochs 1-3, as after a resume
  expected = list(data.train_dataset(*args).as_numpy_iterator())
  got = list(epoch_batches.train_dataset(*args).as_numpy_iterator())
  assert len(got) == len(expected) == 3 * data.steps_per_epoch(n, batch_size)
  for (features, labels), (want, want_labels) in zip(got, expected):
    assert sorted(features) == sorted(want)
    for name in want:
      assert features[name].dtype == want[name].dtype, name
      np.testing.assert_array_equal(features[name], want[name], err_msg=name)
    np.testing.assert_array_equal(labels, want_labels)

"""Sample ids, per-epoch shuffles and resumable batch order."""

import numpy as np
import tensorflow_datasets as tfds

from tf_srkd.data import arrays as data
from tf_srkd.data import datasets


def _split(n=50):
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 1), np.uint8)
  return data.SplitArrays(images=images, labels=(np.arange(n) % 10).astype(np.int32))


def test_every_id_once_per_epoch_with_features_attached():
  split = _split()
  batches = list(data.train_dataset(split, 16, seed=4, start_epoch=0, end_epoch=3,
                                    extras={"significance": np.arange(50) / 50.0})
                 .as_numpy_iterator())
  per_epoch = data.steps_per_epoch(50, 16)
  assert per_epoch == 4 and len(batches) == 12
  for e in range(3):
    ids = np.concatenate([b[0]["id"] for b in batches[e * per_epoch:(e + 1) * per_epoch]])
    np.testing.assert_array_equal(np.sort(ids), np.arange(50))
  for features, labels in batches:
    np.testing.assert_array_equal(labels, features["id"] % 10)
    np.testing.assert_allclose(features["image"][:, 0, 0, 0], features["id"] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(features["significance"], features["id"] / 50.0)
  first = np.concatenate([b[0]["id"] for b in batches[:per_epoch]])
  second = np.concatenate([b[0]["id"] for b in batches[per_epoch:2 * per_epoch]])
  assert not np.array_equal(first, second), "reshuffled every epoch"


def test_resumed_dataset_replays_the_same_epochs():
  split = _split()
  full = list(data.train_dataset(split, 16, 9, 0, 4).as_numpy_iterator())
  resumed = list(data.train_dataset(split, 16, 9, 2, 4).as_numpy_iterator())
  per_epoch = data.steps_per_epoch(50, 16)
  for a, b in zip(full[2 * per_epoch:], resumed):
    np.testing.assert_array_equal(a[0]["id"], b[0]["id"])
  other_seed = list(data.train_dataset(split, 16, 10, 0, 1).as_numpy_iterator())
  assert not np.array_equal(full[0][0]["id"], other_seed[0][0]["id"])


def test_augmentation_is_a_pure_function_of_seed_epoch_and_id():
  split = data.SplitArrays(np.random.default_rng(0).integers(0, 255, (8, 6, 6, 1), np.uint8),
                           np.zeros(8, np.int32))
  augment = data.random_shift_augment(2, flip=False, seed=1)
  a = list(data.train_dataset(split, 8, 0, 0, 2, augment_fn=augment).as_numpy_iterator())
  b = list(data.train_dataset(split, 8, 0, 1, 2, augment_fn=augment).as_numpy_iterator())
  np.testing.assert_array_equal(a[1][0]["image"], b[0][0]["image"])


def test_load_split_keeps_file_order_and_limit():
  spec = datasets.get_dataset_spec("mnist")
  with tfds.testing.mock_data(num_examples=20):
    full = data.load_split(spec, "train")
    head = data.load_split(spec, "train", limit=7)
  assert full.images.dtype == np.uint8 and full.images.shape[1:] == (28, 28, 1)
  assert head.size == 7
  np.testing.assert_array_equal(head.images, full.images[:7])
  np.testing.assert_array_equal(head.labels, full.labels[:7])

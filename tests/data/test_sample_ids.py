"""`sample_ids`: every row `fit` trains on carries its position in the training set."""

import numpy as np
import pytest
import tensorflow as tf

from tf_srkd.data import sample_ids


def test_arrays_get_their_row_as_id_and_weights_as_a_feature():
  x, y = np.zeros((6, 2, 2, 1), np.float32), np.arange(6) % 2
  arguments = sample_ids.with_ids_for_fit({"x": x, "y": y, "sample_weight": np.arange(6.0)}, 6)
  features = arguments["x"]
  np.testing.assert_array_equal(features["id"], np.arange(6))
  np.testing.assert_array_equal(features["sample_weight"], np.arange(6.0))
  assert features["sample_weight"].dtype == np.float32 and "sample_weight" not in arguments


def test_validation_split_keeps_the_last_rows_as_keras_does():
  x, y = np.arange(10, dtype=np.float32).reshape(10, 1), np.arange(10)
  arguments = sample_ids.with_ids_for_fit({"x": x, "y": y, "validation_split": 0.2}, 8)
  np.testing.assert_array_equal(arguments["x"]["image"][:, 0], np.arange(8))
  val_x, val_y = arguments["validation_data"]
  np.testing.assert_array_equal(val_y, [8, 9])
  with pytest.raises(ValueError, match="num_examples=8"):
    sample_ids.with_ids_for_fit({"x": x, "y": y, "validation_split": 0.2}, 10)


def test_what_cannot_carry_ids_is_refused_with_the_fix():
  x, y = np.zeros((4, 1), np.float32), np.zeros(4, np.int32)
  with pytest.raises(ValueError, match="labels y"):
    sample_ids.with_ids_for_fit({"x": x}, 4)
  with pytest.raises(ValueError, match="class_weight"):
    sample_ids.with_ids_for_fit({"x": x, "y": y, "class_weight": {0: 1.0}}, 4)
  with pytest.raises(ValueError, match="with_sample_ids"):
    sample_ids.with_ids_for_fit({"x": tf.data.Dataset.from_tensor_slices((x, y))}, 4)
  with pytest.raises(ValueError, match="looks batched"):
    sample_ids.with_sample_ids(tf.data.Dataset.from_tensor_slices((x, y)).batch(2))


def test_a_dataset_gets_positions_in_its_own_order():
  x, y = np.arange(5, dtype=np.float32), np.arange(5) % 2
  ids = [int(f["id"]) for f, _ in sample_ids.with_sample_ids(
      tf.data.Dataset.from_tensor_slices((x, y)))]
  assert ids == [0, 1, 2, 3, 4]

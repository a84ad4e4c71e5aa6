"""The pixel range a model takes: the choice rule, the adapter and the measurement."""

import keras
import numpy as np
import pytest

from tf_srkd.core import chance
from tf_srkd.models import input_contract


def test_choose_takes_the_clearly_better_scaling_and_refuses_chance():
  assert input_contract.choose(0.10, 0.39, 1000, 10) == "pixels"
  assert input_contract.choose(0.48, 0.10, 1000, 10) == "unit"
  assert input_contract.choose(0.5, 0.5, 1000, 10) == "unit"  # Tie: today's behaviour.
  assert input_contract.choose(0.10, 0.11, 1000, 10) is None
  bound = chance.chance_bound(1000, 10) / 1000
  assert input_contract.choose(0.0, bound, 1000, 10) == "pixels"
  assert input_contract.choose(0.0, bound - 0.001, 1000, 10) is None


def test_detection_ids_are_seeded_sorted_and_bounded():
  a = input_contract.detection_ids(60000, 0)
  assert len(a) == 1000 and np.all(np.diff(a) > 0)
  assert np.array_equal(a, input_contract.detection_ids(60000, 0))
  assert not np.array_equal(a, input_contract.detection_ids(60000, 1))
  assert np.array_equal(input_contract.detection_ids(300, 0), np.arange(300))


def _identity_model(shape=(4, 4, 1)):
  inputs = keras.Input(shape)
  return keras.Model(inputs, keras.layers.Flatten()(inputs))


def test_wrap_feeds_pixels_and_is_saved_with_the_model(tmp_path):
  model = _identity_model()
  assert input_contract.wrap(model, "unit") is model
  wrapped = input_contract.wrap(model, "pixels")
  x = np.full((1, 4, 4, 1), 0.5, np.float32)
  np.testing.assert_allclose(wrapped(x).numpy(), 127.5)
  assert input_contract.scaling_of(wrapped) == "pixels"
  assert input_contract.scaling_of(model) == "unit"
  wrapped.save(tmp_path / "m.keras")
  loaded = keras.saving.load_model(tmp_path / "m.keras")  # safe mode: built-in layers only
  assert input_contract.scaling_of(loaded) == "pixels"
  with pytest.raises(ValueError):
    input_contract.wrap(model, "auto")


def test_measure_finds_a_model_that_divides_by_255_itself():
  # Class = whether the image is brighter than mid-grey, read after Rescaling(1/255).
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(400, 4, 4, 1), dtype=np.uint8)
  labels = (images.reshape(400, -1).mean(axis=1) > 127.5).astype(np.int32)
  inputs = keras.Input((4, 4, 1))
  mean = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
  logits = keras.layers.Concatenate()([0.5 - mean, mean - 0.5])
  model = keras.Model(inputs, logits * 100.0)
  m = input_contract.measure(model, images, labels, 2, 128)
  assert m.choice == "pixels" and m.pixels_accuracy > 0.95 and m.unit_accuracy < 0.6
  assert m.images == 400

"""A `.keras` file read back: safe mode, and checked against the dataset's shapes."""

import keras
import pytest

from tf_srkd.errors import ConfigError
from tf_srkd.models import loading


def _saved(tmp_path, input_shape=(8, 8, 1), classes=3, name="m.keras"):
  inputs = keras.Input(input_shape)
  outputs = keras.layers.Dense(classes)(keras.layers.Flatten()(inputs))
  path = str(tmp_path / name)
  keras.Model(inputs, outputs).save(path)
  return path


def test_a_fitting_model_loads(tmp_path):
  model = loading.load_model(_saved(tmp_path), (8, 8, 1), 3)
  assert tuple(model.output_shape) == (None, 3)


@pytest.mark.parametrize("shape,classes,words", [
    ((8, 8, 3), 3, "takes inputs of shape (8, 8, 1), the dataset's images are (8, 8, 3)"),
    ((8, 8, 1), 10, "outputs shape (3,), the dataset has 10 classes"),
])
def test_a_model_for_another_dataset_is_refused(tmp_path, shape, classes, words):
  path = _saved(tmp_path)
  with pytest.raises(ConfigError) as error:
    loading.load_model(path, shape, classes)
  assert str(error.value).startswith(path) and words in str(error.value)


def test_missing_and_non_keras_files_are_refused(tmp_path):
  with pytest.raises(ConfigError, match="missing"):
    loading.load_model(str(tmp_path / "absent.keras"), (8, 8, 1), 3)
  bad = tmp_path / "bad.keras"
  bad.write_bytes(b"not a zip")
  with pytest.raises(ConfigError, match="not a .keras \\(zip\\) archive"):
    loading.load_model(str(bad), (8, 8, 1), 3)


def test_code_in_a_model_is_refused_by_safe_mode(tmp_path):
  inputs = keras.Input((8, 8, 1))
  outputs = keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Lambda(lambda x: x * 2)(inputs)))
  path = str(tmp_path / "lambda.keras")
  keras.Model(inputs, outputs).save(path)
  with pytest.raises(ConfigError, match="safe mode"):
    loading.load_model(path, (8, 8, 1), 3)

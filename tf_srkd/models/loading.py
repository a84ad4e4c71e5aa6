"""A `.keras` file read back as a model: safe mode, and checked against the dataset."""

import os
import zipfile

import keras

# Registers the layer that folds a keras.applications model's preprocessing in, so
# that files saved with it load.
from tf_srkd.models import app_preprocessing  # pylint: disable=unused-import
from tf_srkd.errors import ConfigError
from tf_srkd.storage.checked_reads import short_error


def load_model(path: str, image_shape, num_classes: int):
  """Loads a `.keras` model in safe mode and checks that it fits the dataset.

  Call under the strategy's scope when the model is to be used there.

  Args:
    path: the `.keras` file.
    image_shape: the dataset's (height, width, channels).
    num_classes: the dataset's class count.

  Returns:
    The uncompiled model.

  Raises:
    ConfigError: naming `path`: missing, unreadable, refused by safe mode, or
      not one image input of `image_shape` and one output of `num_classes` logits.
  """
  if not os.path.isfile(path):
    raise ConfigError(f"{path}: missing")
  if not zipfile.is_zipfile(path):
    # Keras would report such a file as "File not found", which it is not.
    raise ConfigError(f"{path}: unreadable: not a .keras (zip) archive (empty, truncated or "
                      "another format)")
  try:
    model = keras.models.load_model(path, compile=False, safe_mode=True)
  except Exception as e:  # pylint: disable=broad-except  (Keras raises anything on bad bytes)
    if "safe_mode" in str(e):
      raise ConfigError(f"{path}: refused by Keras safe mode (it holds code, e.g. a Lambda "
                        "layer); only plain layers are loaded") from e
    raise ConfigError(f"{path}: unreadable as a Keras model ({short_error(e)})") from e
  inputs, outputs = getattr(model, "inputs", None), getattr(model, "outputs", None)
  if not inputs or len(inputs) != 1:
    raise ConfigError(f"{path}: expected one image input, found {len(inputs or [])}")
  if tuple(inputs[0].shape[1:]) != tuple(image_shape):
    raise ConfigError(f"{path}: takes inputs of shape {tuple(inputs[0].shape[1:])}, the "
                      f"dataset's images are {tuple(image_shape)} (check --dataset)")
  if not outputs or len(outputs) != 1:
    raise ConfigError(f"{path}: expected one output (logits), found {len(outputs or [])}")
  if tuple(outputs[0].shape[1:]) != (num_classes,):
    raise ConfigError(f"{path}: outputs shape {tuple(outputs[0].shape[1:])}, the dataset has "
                      f"{num_classes} classes (check --dataset)")
  return model

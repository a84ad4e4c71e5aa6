"""Checks of every file a run reads back from disk, before it writes anything.

A run reads a teacher (`--teacher_dir`, or its own for `--stage=distill`) and
the finished stages it reuses. Each file is checked for what the run will do
with it: a `.keras` model must load in Keras' safe mode and fit the dataset
(one image input of its shape, one logits output over its classes); an array
must be a plain (never pickled) 1-D array of the right dtype kind, one entry
per training example, finite and in range; a JSON file must be strict JSON of
the expected type. Every failure is one `ConfigError` line naming the file and
the problem, so a damaged or mismatched file stops the run with exit 2 instead
of a traceback, a crash after the first student, or silently wrong training
(a significance of -5 turns the loss into gradient ascent).

`digest` is the content hash that ties a run's identity to the teacher it used.
"""

import hashlib
import json
import os
import zipfile
from typing import Iterable, Optional

import numpy as np

from tf_srkd.errors import ConfigError

#: The dtype kinds (`numpy.dtype.kind`) each array may have.
FLOAT_KINDS = "f"
INT_KINDS = "iu"


def _short(error: BaseException) -> str:
  """An exception's message on one line (Keras and NumPy errors span several)."""
  text = " ".join(str(error).split()) or type(error).__name__
  return text if len(text) <= 160 else text[:157] + "..."


def load_array(path: str, *, kinds: str, length: Optional[int], low: Optional[float] = None,
               high: Optional[float] = None) -> np.ndarray:
  """Reads a `.npy` array and checks it.

  Args:
    path: the file.
    kinds: the allowed `dtype.kind`s (`FLOAT_KINDS`, `INT_KINDS`).
    length: the required number of entries (one per training example); None: any.
    low, high: the closed range every entry must lie in (None: unbounded).

  Returns:
    The array.

  Raises:
    ConfigError: naming `path`: unreadable, pickled, or of the wrong dtype,
      shape or range, or not finite.
  """
  if not os.path.isfile(path):
    raise ConfigError(f"{path}: missing")
  try:
    array = np.load(path, allow_pickle=False)
  except ValueError as e:
    if "pickle" in str(e):  # NumPy's words for an object array or a non-.npy file.
      raise ConfigError(f"{path}: holds pickled data or is not a .npy file; pickles are "
                        "never loaded") from e
    raise ConfigError(f"{path}: unreadable as a .npy array ({_short(e)})") from e
  except (OSError, EOFError) as e:
    raise ConfigError(f"{path}: unreadable as a .npy array ({_short(e)})") from e
  if not isinstance(array, np.ndarray):  # An .npz archive.
    raise ConfigError(f"{path}: not a single .npy array")
  if array.dtype.kind not in kinds:
    expected = "floating-point" if kinds == FLOAT_KINDS else "integer"
    raise ConfigError(f"{path}: has dtype {array.dtype}, expected {expected}")
  if array.ndim != 1 or length is not None and array.shape != (length,):
    expected = ("a 1-D array" if length is None else f"({length},) = the training examples "
                "of this run (check --train_examples and --dataset)")
    raise ConfigError(f"{path}: has shape {tuple(array.shape)}, expected {expected}")
  if array.dtype.kind == "f" and not np.isfinite(array).all():
    raise ConfigError(f"{path}: holds NaN or infinite values")
  if array.size and ((low is not None and array.min() < low)
                     or (high is not None and array.max() > high)):
    raise ConfigError(f"{path}: values span [{array.min()}, {array.max()}], expected within "
                      f"[{low}, {high}]")
  return array


def read_json(path: str, expected_type=dict):
  """Reads strict JSON (no NaN or infinity) of `expected_type`.

  Raises:
    ConfigError: naming `path`: missing, unreadable, not strict JSON, or of another type.
  """

  def reject(constant):
    raise ValueError(f"{constant} is not strict JSON")

  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f, parse_constant=reject)
  except FileNotFoundError as e:
    raise ConfigError(f"{path}: missing") from e
  except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError included.
    raise ConfigError(f"{path}: unreadable as JSON ({_short(e)})") from e
  if not isinstance(value, expected_type):
    raise ConfigError(f"{path}: expected a JSON {expected_type.__name__}, found "
                      f"{type(value).__name__}")
  return value


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
  import keras  # pylint: disable=import-outside-toplevel  (config checks stay TF-free)

  # Registers the layer that folds a keras.applications model's preprocessing in.
  from tf_srkd import app_preprocessing  # pylint: disable=import-outside-toplevel,unused-import

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
    raise ConfigError(f"{path}: unreadable as a Keras model ({_short(e)})") from e
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


def digest(paths: Iterable[str]) -> str:
  """SHA-256 over the names and contents of the files among `paths` that exist."""
  sha = hashlib.sha256()
  for path in paths:
    if os.path.isfile(path):
      # Name and size first, so that no two file sets hash the same byte stream.
      sha.update(f"{os.path.basename(path)}\0{os.path.getsize(path)}\0".encode())
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          sha.update(block)
  return sha.hexdigest()

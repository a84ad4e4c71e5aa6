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
from typing import Iterable, Optional

import numpy as np

from tf_srkd.errors import ConfigError

#: The dtype kinds (`numpy.dtype.kind`) each array may have.
FLOAT_KINDS = "f"
INT_KINDS = "iu"


def short_error(error: BaseException) -> str:
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
    raise ConfigError(f"{path}: unreadable as a .npy array ({short_error(e)})") from e
  except (OSError, EOFError) as e:
    raise ConfigError(f"{path}: unreadable as a .npy array ({short_error(e)})") from e
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
    raise ConfigError(f"{path}: unreadable as JSON ({short_error(e)})") from e
  if not isinstance(value, expected_type):
    raise ConfigError(f"{path}: expected a JSON {expected_type.__name__}, found "
                      f"{type(value).__name__}")
  return value


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

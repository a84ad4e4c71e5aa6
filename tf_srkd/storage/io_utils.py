"""Atomic writes: a file is either absent or complete, never half-written.

Every writer goes to a temporary file in the destination's directory and then
`os.replace`s it into place (atomic on POSIX within one filesystem).
"""

import contextlib
import json
import os
import secrets

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
  """Yields a temporary path next to `path`; renames it onto `path` on success.

  The temporary file gets the permissions a plain `open()` would give (0666
  less the process umask, applied by the kernel), so the renamed result does
  too; `tempfile.mkstemp` would make it 0600.

  Args:
    path: final destination.
    suffix: extension the temporary file must carry (Keras insists on `.keras`).
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = _new_file(directory, "." + os.path.basename(path) + ".", ".tmp" + suffix)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _new_file(directory, prefix, suffix):
  """Creates a new empty file with a random name, mode 0666 & ~umask; returns its path."""
  while True:
    candidate = os.path.join(directory, f"{prefix}{secrets.token_hex(6)}{suffix}")
    try:
      os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
      return candidate
    except FileExistsError:
      continue


def write_text(path: str, text: str):
  with atomic_path(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)


def write_json(path: str, value):
  write_text(path, json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def save_npy(path: str, array):
  with atomic_path(path, suffix=".npy") as tmp:
    np.save(tmp, np.asarray(array))


def save_keras(path: str, model):
  """Saves a Keras model in the `.keras` format, atomically."""
  with atomic_path(path, suffix=".keras") as tmp:
    os.remove(tmp)  # Keras refuses to overwrite without asking.
    model.save(tmp)

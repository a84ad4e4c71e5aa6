"""Atomic writes: a file is either absent or complete, never half-written.

Every writer goes to a temporary file in the destination's directory and then
`os.replace`s it into place (atomic on POSIX within one filesystem).
"""

import contextlib
import json
import os
import tempfile

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
  """Yields a temporary path next to `path`; renames it onto `path` on success.

  Args:
    path: final destination.
    suffix: extension the temporary file must carry (Keras insists on `.keras`).
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp" + suffix,
                             dir=directory)
  os.close(fd)
  umask = os.umask(0)
  os.umask(umask)
  try:
    yield tmp
    # mkstemp creates 0600; give the result the permissions a plain open() would.
    if os.path.isfile(tmp):
      os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


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

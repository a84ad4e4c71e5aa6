"""The int8 calibration set: which training samples, and their pixels.

`random` draws samples from the run's transfer set (seeded); `significant`
takes the samples the teacher found most significant. Either way the set spans
the pixel range [0, 255] exactly, so that the int8 model's uint8 input is the
raw pixel (`with_range_anchor`).
"""

from typing import Optional

import numpy as np

from export.errors import ExportError

CALIBRATIONS = ("random", "significant")
DEFAULT_CALIBRATION_SAMPLES = 200


def check_calibration(method: str, num_samples: Optional[int] = None):
  """Raises ExportError unless `method` is a calibration (and `num_samples` >= 1)."""
  if method not in CALIBRATIONS:
    raise ExportError(f"--calibration={method}: expected one of {', '.join(CALIBRATIONS)}")
  if num_samples is not None and int(num_samples) < 1:
    raise ExportError(f"--num_calibration_samples={num_samples}: expected an integer >= 1")


def calibration_indices(method: str, num_samples: int, num_train: int,
                        significance: Optional[np.ndarray] = None, seed: int = 0) -> np.ndarray:
  """Sample ids of the int8 calibration set.

  `random`: `num_samples` ids drawn without replacement (seeded).
  `significant`: the `num_samples` ids the teacher found most significant
  (ties broken by the lower id, so the choice is deterministic).

  Raises:
    ExportError: an unknown method, or a significance of the wrong length.
  """
  check_calibration(method)
  n = min(int(num_samples), int(num_train))
  if method == "random":
    return np.sort(np.random.default_rng(seed).choice(num_train, size=n, replace=False))
  if significance is None or significance.shape[0] != num_train:
    have = None if significance is None else significance.shape[0]
    raise ExportError(f"--calibration=significant: the significance has {have} entries but the "
                      f"run's training split has {num_train} examples")
  return np.argsort(-significance, kind="stable")[:n]


def with_range_anchor(images: np.ndarray):
  """Makes the calibration set span the pixel range [0, 255] exactly.

  The int8 input's quantization comes from the calibration set's min/max; only
  when it spans [0, 255] is the uint8 input exactly the raw pixel. Real data
  almost always does; when not, one extra sample (a copy of the first one with
  one pixel set to 0 and one to 255) is appended. Returns (images, added).
  """
  if images.min() == 0 and images.max() == 255:
    return images, False
  anchor = images[:1].copy()
  flat = anchor.reshape(-1)
  flat[0], flat[-1] = 0, 255
  return np.concatenate([images, anchor]), True


def calibration_set(spec, train, method: str, num_samples: int, seed: int,
                    significance: Optional[np.ndarray] = None):
  """(uint8 images, sidecar block) of the int8 calibration set.

  Args:
    spec: the dataset's `DatasetSpec`.
    train: the run's transfer set (`data.SplitArrays`; on disk, only the
      calibration rows are read).
    method: random | significant.
    num_samples: the set's size.
    seed: seed of the random draw.
    significance: the teacher's significance by sample id (`significant`).
  """
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel

  check_calibration(method, num_samples)
  ids = calibration_indices(method, num_samples, train.size, significance, seed)
  images, anchored = with_range_anchor(data.take_rows(train.images, ids))
  block = {
      "method": method,
      "num_samples": int(ids.shape[0]),
      "pool": f"{spec.name} train split, first {train.size} examples (the run's transfer set)",
      "seed": int(seed) if method == "random" else None,
      "range_anchor_added": bool(anchored),
      "class_counts": np.bincount(train.labels[ids], minlength=spec.num_classes).tolist(),
  }
  if significance is not None:
    block["mean_significance"] = float(np.mean(significance[ids]))
  return images, block

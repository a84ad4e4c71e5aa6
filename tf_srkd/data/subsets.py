"""Significance-ranked, class-balanced subsets of a training set (pure NumPy).

The paper leaves open how small a significance-ranked subset still suffices;
`tf_srkd.cli.subset` trains students on the subsets chosen here. The rules:

* **class balance**: a class with n_c samples contributes
  k_c = max(1, floor(f * n_c + 1e-9)) of them (all of them for f = 1), so every
  class keeps its share and none disappears;
* **one total order per class**: ascending significance; ties (on MNIST about
  3/4 of the samples have significance exactly 0) broken by a seeded hash of
  the sample id, h(i) = u[i] with u = `default_rng([crc32("subset-ties"),
  seed]).random(N)` (float64), then by the id itself;
* **bottom-f** = the first k_c samples of that order, **top-f** = the last k_c:
  top and bottom are disjoint whenever f <= 0.5, and among tied samples the
  hash decides, the same way for every f (a larger f only adds samples);
* **random-f** = the first k_c of a seeded permutation of the class
  (`default_rng([crc32("subset-random"), seed, c]).permutation`).

Every list is returned sorted by id (int32), ready for `np.save` and reuse.
"""

import math
import zlib

import numpy as np

#: The three rankings, in table order.
RANKINGS = ("top", "random", "bottom")


def class_quota(class_size: int, fraction: float) -> int:
  """k_c = max(1, floor(f * n_c + 1e-9)), at most n_c."""
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  return min(class_size, max(1, math.floor(fraction * class_size + 1e-9)))


def tie_hash(num_examples: int, seed: int) -> np.ndarray:
  """float64 [N]: h(i), the seeded hash that orders samples of equal significance."""
  return np.random.default_rng([zlib.crc32(b"subset-ties"), int(seed)]).random(num_examples)


def class_order(significance, labels, cls, seed=0) -> np.ndarray:
  """The ids of class `cls` in ascending (significance, h(id), id) order."""
  significance = np.asarray(significance, np.float64)
  ids = np.flatnonzero(np.asarray(labels) == cls)
  h = tie_hash(len(significance), seed)[ids]
  return ids[np.lexsort((ids, h, significance[ids]))]


def select(significance, labels, fraction: float, ranking: str, seed: int = 0) -> np.ndarray:
  """The class-balanced subset of `ranking` at `fraction`, as sorted int32 ids.

  Args:
    significance: float [N] teacher significance (Algorithm 2).
    labels: int [N] class labels.
    fraction: f in (0, 1].
    ranking: "top" (most significant), "random" or "bottom" (least significant).
    seed: the seed of the tie hash and of the random subsets.

  Raises:
    ValueError: an unknown ranking, a fraction outside (0, 1], or arrays of
      different lengths.
  """
  labels = np.asarray(labels)
  if len(labels) != len(significance):
    raise ValueError(f"significance ({len(significance)}) and labels ({len(labels)}) differ "
                     "in length")
  if ranking not in RANKINGS:
    raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
  chosen = []
  for cls in np.unique(labels):
    if ranking == "random":
      members = np.flatnonzero(labels == cls)
      order = np.random.default_rng(
          [zlib.crc32(b"subset-random"), int(seed), int(cls)]).permutation(members)
    else:
      order = class_order(significance, labels, cls, seed)
    k = class_quota(len(order), fraction)
    chosen.append(order[-k:] if ranking == "top" else order[:k])
  return np.sort(np.concatenate(chosen)).astype(np.int32)

"""Bounded-staleness margins: which rows keep a cached margin instead of a forward pass.

The exact gate (`margin_cache`) reuses a row's margin only while the weights have
not moved since it was computed; late in a self-regulated run a handful of updates
per epoch make every margin stale, so every epoch still runs an inference pass over
the whole transfer set. The bounded rule trades that exactness for a bound: a row
whose last known state was *correct and confidently above the threshold* keeps
that state for at most `max_age` epochs and does not take part. A row is forwarded
(and then gated exactly) iff

  * it was never computed, or
  * it was misclassified when last seen, or
  * its cached margin is below eta(n) + band, or
  * its margin is more than `max_age` epochs old.

A kept row's cached margin is >= eta(n) + band >= eta(n) and its prediction is its
label, so the gate applied to the cached values leaves it out: the step needs no
second rule. `max_age = 0` or `band = inf` keeps nothing and is the exact gate.

Ages are counted in epochs through a *stamp* per row: the epoch (plus 1; 0 means
never) of the forward pass that computed its value. A value reused because the
weights have not moved since keeps its stamp, so an idle epoch leaves the same
stamps whether it runs or is skipped. The functions take
NumPy arrays or TensorFlow tensors alike (`keras.ops`), so the train step and the
idle-epoch skipper share one rule.
"""

import dataclasses
import math

#: The choices of `--margin_refresh`.
REFRESH = ("exact", "bounded")
#: K and b of `--margin_refresh=bounded` (their measurement: docs/choices.md).
DEFAULT_MAX_AGE = 2
DEFAULT_BAND = 0.01


@dataclasses.dataclass(frozen=True)
class Staleness:
  """The bound of `--margin_refresh=bounded`.

  Attributes:
    max_age: K, the most epochs a kept margin may be old (>= 0; 0 keeps none).
    band: b, the safety band above eta(n) a kept margin must clear (>= 0; inf keeps none).
  """

  max_age: int
  band: float

  def __post_init__(self):
    if int(self.max_age) != self.max_age or self.max_age < 0:
      raise ValueError(f"max_age must be an integer >= 0, got {self.max_age}")
    if math.isnan(self.band) or self.band < 0:
      raise ValueError(f"band must be a number >= 0 or inf, got {self.band}")


def stamp_of(epoch):
  """The stamp a value computed by a forward pass in 0-based `epoch` gets (a value
  reused because the weights have not moved keeps the stamp it had)."""
  return epoch + 1


def age(stamps, epoch):
  """Epochs since each stamped value was computed, seen from `epoch` (stamp 0: never)."""
  return epoch + 1 - stamps


def keeps_cached(stamps, predictions, labels, margins, epoch, eta, staleness: Staleness):
  """Whether each row keeps its cached state at `epoch` instead of being forwarded.

  Args:
    stamps: int32 [b] the rows' stamps (`stamp_of`; 0: never computed).
    predictions: int32 [b] their cached predicted classes.
    labels: [b] their labels.
    margins: float32 [b] their cached margins.
    epoch: the 0-based epoch n being trained.
    eta: the threshold eta(n).
    staleness: the bound.

  Returns:
    bool [b]; True rows do not take part in epoch n.
  """
  # Imported here: `tf_srkd.run.config` reads this module's constants, and the entry
  # points check flags before TensorFlow loads (and logs).
  import keras  # pylint: disable=import-outside-toplevel

  ops = keras.ops
  if staleness.max_age == 0 or math.isinf(staleness.band):
    return ops.zeros_like(stamps, dtype="bool")
  known = ops.greater(stamps, 0)
  young = ops.less_equal(age(stamps, epoch), staleness.max_age)
  right = ops.equal(predictions, ops.cast(labels, predictions.dtype))
  clear = ops.greater_equal(margins, ops.cast(eta, margins.dtype) + staleness.band)
  return ops.logical_and(ops.logical_and(known, young), ops.logical_and(right, clear))

"""The gate-policy interface and what its implementations share.

A policy runs in two places:

* between epochs, on the host (`on_epoch_begin` / `on_epoch_end`): it reads
  what the last epoch recorded, updates its per-sample state (indexed by sample
  id) and writes the coming epoch's per-sample tables into variables that every
  replica can read (mirrored, `only_first_replica` aggregation);
* inside the compact step (`decide`, `observe`): it turns the batch into a 0/1
  gate and a per-row loss factor, and records per-sample losses into on-read SUM
  variables that are zeroed at each epoch start, so that each id, written by
  exactly one replica once per epoch, reads back exactly.

Random decisions are drawn on the host from `uniforms(policy, seed, epoch, N)`:
u[i] for sample id i is a pure function of (policy, seed, epoch, i), so the
decisions are deterministic given the seed, the same on every replica and
worker, and the same after a resume. Whatever the policy needs to carry from
one epoch to the next is in `state()`, which the stage checkpoint saves.
"""

import zlib
from typing import NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from tf_srkd.core import distributed


class Decision(NamedTuple):
  """A policy's verdict on the rows of a (padded) batch.

  Attributes:
    gate: float32 [rows] 0/1, 1 = takes part in the backward pass.
    scale: float32 [rows] factor on each row's loss weight (1: unchanged).
    predicted: int32 [rows] predictions of the gate's own forward pass, or None
      when the policy decides without one (accuracy then covers the kept rows).
  """

  gate: tf.Tensor
  scale: tf.Tensor
  predicted: Optional[tf.Tensor]


def uniforms(policy: str, seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """float32 [N] uniforms in [0, 1), u[i] the draw of sample id i in `epoch`.

  `numpy.random.default_rng([crc32(policy), seed, epoch]).random(N, dtype=float32)`:
  one PCG64 stream per (policy, seed, epoch), read in id order.
  """
  key = [zlib.crc32(policy.encode()), int(seed), int(epoch)]
  return np.random.default_rng(key).random(int(num_examples), dtype=np.float32)


class GatePolicy:
  """Decides per sample whether it takes part in a step's backward pass.

  Args:
    num_examples: N (sample ids are [0, N)).
    epochs: the stage's epoch count.
    seed: the run's seed.
    settings: `gates.GateSettings`.

  Class attributes:
    name: the registry name.
    idle_epochs: whether `callbacks.IdleEpochSkipper`'s reasoning (an epoch
      without update leaves the gate a function of eta alone) holds; only for
      Algorithm 1, never for a policy that draws at random or keeps scores.
    decided_in_step: the model's own step computes the decision (margins from
      its training-mode forward, the margin cache, the compact backward); such a
      policy has no `decide`. Only Algorithm 1's gate.
  """

  name = ""
  idle_epochs = False
  decided_in_step = False

  def __init__(self, num_examples, epochs, seed, settings):
    self.num_examples = int(num_examples)
    self.epochs = int(epochs)
    self.seed = int(seed)
    self.settings = settings
    #: The last epoch's per-sample decisions and inputs (host arrays), for logs and tests.
    self.record = {}
    self._assigners = {}

  # -- set-up and description ----------------------------------------------------

  def build(self):
    """Creates the policy's variables; call under the strategy's scope (the model does)."""
    self._strategy = tf.distribute.get_strategy()
    self.create_variables()

  def create_variables(self):
    """The policy's own variables (`table`, `accumulator`); none by default."""

  def describe(self) -> str:
    """The policy and its settings in a few words (console, tables)."""
    return self.name

  # -- between epochs (host) ----------------------------------------------------------

  def on_epoch_begin(self, epoch):
    """Prepares the tables `decide` reads during `epoch`."""
    del epoch

  def on_epoch_end(self, epoch):
    """Reads what `epoch` recorded into the per-sample state."""
    del epoch

  def state(self) -> dict:
    """{name: array} carried from one epoch to the next (checkpointed); fixed shapes."""
    return {}

  def load_state(self, state: dict):
    """Restores `state()` (a resumed stage)."""
    del state

  # -- in the step ----------------------------------------------------------------------

  def decide(self, model, ids, rows, labels) -> Decision:
    """The gate of a padded batch.

    Args:
      model: the `training.SelfRegulatedModel` (its `network`, `per_sample_loss`).
      ids: int32 [n] sample ids of the real rows.
      rows: the padded batch's features (n or n + 1 rows; the pad has id 0).
      labels: its labels.
    """
    raise NotImplementedError

  def observe(self, ids, per_sample_loss):
    """The training losses (before any weighting) of the rows that took part."""
    del ids, per_sample_loss

  # -- helpers for subclasses ------------------------------------------------------------

  @staticmethod
  def table(value, name):
    """A per-sample table every replica reads, set from the host each epoch."""
    return keras.Variable(value, trainable=False, aggregation="only_first_replica", name=name)

  @staticmethod
  def accumulator(num_examples, name):
    """A float32 [N] on-read SUM variable that the step adds per-sample values into."""
    return keras.Variable(np.zeros([num_examples], np.float32), dtype="float32",
                          trainable=False, synchronization="on_read", aggregation="sum",
                          name=name)

  def zero(self, variable):
    """Zeroes an `accumulator` exactly on every replica."""
    key = variable.path if hasattr(variable, "path") else variable.name
    if key not in self._assigners:
      self._assigners[key] = distributed.on_read_sum_assigner(variable)
    distributed.assign_on_read_sum(self._strategy, self._assigners[key],
                                   np.zeros(variable.shape, np.float32))

  @staticmethod
  def read(variable) -> np.ndarray:
    """An `accumulator`'s value summed over replicas (a collective across workers)."""
    return np.asarray(keras.ops.convert_to_numpy(variable.value), np.float32)

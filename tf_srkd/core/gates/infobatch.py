"""InfoBatch: Qin et al., "InfoBatch: Lossless training speed up by unbiased dynamic
data pruning", ICLR 2024 (arXiv 2303.04947).

Each sample's score is its most recent training loss (samples not yet trained
keep the initial score 1, so the first epoch prunes nothing: no score is below
the mean). At the start of epoch n, while n < delta * epochs:

  * the samples whose score is below the mean score are "well learned";
  * each of them is pruned with probability r (u[i] < r, u =
    `base.uniforms("infobatch", seed, n, N)`);
  * the kept well-learned samples have their loss scaled by 1 / (1 - r), which
    keeps the expected gradient unbiased;
  * everything else is kept with weight 1.

In the final (1 - delta) fraction of the epochs (n >= delta * epochs: annealing)
nothing is pruned and no loss is rescaled. A trained sample's score becomes its
per-sample loss of that epoch (unweighted, from the training forward); a pruned
sample keeps its old score. The decision needs no forward pass, so the step
runs forward and backward on the kept rows only.
"""

import numpy as np
import tensorflow as tf

from tf_srkd.core import distributed
from tf_srkd.core.gates import base


def prunes(epoch, epochs, delta) -> bool:
  """Whether `epoch` (0-based) prunes: epoch < delta * epochs (else it anneals)."""
  return epoch < delta * epochs


def loss_weights(scores, uniform, ratio) -> np.ndarray:
  """float32 [N] loss weights of one pruning epoch: 0 pruned, 1/(1-r) kept below the
  mean score, 1 otherwise."""
  scores = np.asarray(scores, np.float64)
  below = scores < scores.mean()
  pruned = below & (np.asarray(uniform) < np.float32(ratio))
  return np.where(pruned, 0.0, np.where(below, 1.0 / (1.0 - ratio), 1.0)).astype(np.float32)


class InfoBatch(base.GatePolicy):
  """Soft random pruning of the below-mean-loss samples with rescaling (module doc)."""

  name = "infobatch"

  def __init__(self, num_examples, epochs, seed, settings):
    super().__init__(num_examples, epochs, seed, settings)
    self.scores = np.ones([self.num_examples], np.float32)
    self._weights = None

  def create_variables(self):
    self.weights = self.table(np.ones([self.num_examples], np.float32), "infobatch_weights")
    self.losses = self.accumulator(self.num_examples, "infobatch_losses")

  def describe(self):
    return (f"infobatch r={self.settings.infobatch_ratio:g} "
            f"delta={self.settings.infobatch_delta:g}")

  def on_epoch_begin(self, epoch):
    ratio = self.settings.infobatch_ratio
    pruning = prunes(epoch, self.epochs, self.settings.infobatch_delta)
    uniform = base.uniforms(self.name, self.seed, epoch, self.num_examples)
    weights = (loss_weights(self.scores, uniform, ratio) if pruning
               else np.ones([self.num_examples], np.float32))
    self.weights.assign(weights)
    self.zero(self.losses)
    self._weights = weights
    self.record = {"epoch": epoch, "pruning": pruning, "scores": self.scores.copy(),
                   "uniform": uniform, "weights": weights}

  def on_epoch_end(self, epoch):
    losses = self.read(self.losses)
    self.scores = np.where(self._weights > 0, losses, self.scores).astype(np.float32)
    self.record["losses"] = losses

  def state(self):
    return {"scores": self.scores}

  def load_state(self, state):
    self.scores = np.asarray(state["scores"], np.float32).copy()

  def decide(self, model, ids, rows, labels):
    weights = tf.gather(self.weights, rows["id"])
    return base.Decision(gate=tf.cast(weights > 0, tf.float32), scale=weights, predicted=None)

  def observe(self, ids, per_sample_loss):
    distributed.scatter_add_by_id(self.losses, ids, per_sample_loss)

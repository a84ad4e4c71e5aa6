"""The random gate: each sample takes part with probability p (`--keep_fraction`).

The control every data-pruning paper should run: at the same budget (zeta = p
in expectation), does a policy beat chance? Sample i takes part in epoch n iff
u[i] < p, with u = `base.uniforms("random", seed, n, N)`: Bernoulli(p) per
sample and epoch, independent across epochs, deterministic given the seed.
No forward pass decides the gate, so the step runs forward and backward on the
kept rows only.
"""

import numpy as np
import tensorflow as tf

from tf_srkd.core.gates import base


def keep_mask(uniform, keep_fraction) -> np.ndarray:
  """float32 [N]: 1 where u < p."""
  return (np.asarray(uniform, np.float32) < np.float32(keep_fraction)).astype(np.float32)


class RandomKeep(base.GatePolicy):
  """Keep with probability `settings.keep_fraction`, independently per sample and epoch."""

  name = "random"

  def create_variables(self):
    self.keep = self.table(np.ones([self.num_examples], np.float32), "random_keep")

  def describe(self):
    return f"random p={self.settings.keep_fraction:g}"

  def on_epoch_begin(self, epoch):
    uniform = base.uniforms(self.name, self.seed, epoch, self.num_examples)
    keep = keep_mask(uniform, self.settings.keep_fraction)
    self.keep.assign(keep)
    self.record = {"epoch": epoch, "uniform": uniform, "keep": keep}

  def decide(self, model, ids, rows, labels):
    gate = tf.gather(self.keep, rows["id"])
    return base.Decision(gate=gate, scale=tf.ones_like(gate), predicted=None)

"""Algorithm 1 of Mishra & Sundaram (arXiv 2102.07125), the default gate.

A sample takes part iff it is misclassified or its margin p1 - p2 is below
eta(n) = 1 - exp(-alpha * n). The rule itself lives in `regulation.gate` and
`training.SelfRegulatedModel` runs it on its own code path (masked, compact or
auto backward, the idle-epoch cache), unchanged since before gate policies
existed: this class only names it in the policy slot.
"""

from tf_srkd.gates import base


class SelfRegulated(base.GatePolicy):
  """The paper's gate; `training` evaluates it itself (see the module doc)."""

  name = "self_regulated"
  idle_epochs = True

  def __init__(self, num_examples=0, epochs=0, seed=0, settings=None):
    super().__init__(num_examples, epochs, seed, settings)

  def decide(self, model, ids, rows, labels):
    raise AssertionError("the self-regulated gate runs in training.SelfRegulatedModel")

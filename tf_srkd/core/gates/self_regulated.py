"""Algorithm 1 of Mishra & Sundaram (arXiv 2102.07125), the default gate.

A sample takes part iff it is misclassified or its margin p1 - p2 is below
eta(n) = 1 - exp(-alpha * n). The rule itself lives in `regulation.gate` and
`training.SelfRegulatedModel` runs it on its own code path (masked, compact or
auto backward, the margin cache, idle epochs), because the decision comes out of
the step's own forward pass: this class names it in the policy slot.
"""

from tf_srkd.core.gates import base


class MarginGate(base.GatePolicy):
  """The paper's gate; `training` evaluates it in its step (see the module doc)."""

  name = "self_regulated"
  idle_epochs = True
  decided_in_step = True

  def __init__(self, num_examples=0, epochs=0, seed=0, settings=None):
    super().__init__(num_examples, epochs, seed, settings)

  def decide(self, model, ids, rows, labels):
    raise AssertionError("decided_in_step: training.SelfRegulatedModel decides in its step")

"""The four distillation modes of Algorithm 3, as data rather than code paths.

A mode is two booleans over one training step: does the student gate itself
(self-regulate), and is each sample's loss weighted by the teacher's significance.
"""

import dataclasses

from tf_srkd import registry

#: How a self-regulated step runs its backward pass (see `training`).
BACKWARDS = ("masked", "compact", "auto")
#: What the gated loss sum is divided by (see `training.SelfRegulatedModel`).
LOSS_NORMALISERS = ("participants", "batch", "weights")


@dataclasses.dataclass(frozen=True)
class Mode:
  """One distillation mode.

  Attributes:
    name: registry name (used in flags, output paths and MLflow tags).
    regulate: the student self-regulates with its own gate (Algorithm 1 rules).
    weight_by_significance: each sample's loss is scaled by the teacher's
      significance of that sample (eq. 4).
  """

  name: str
  regulate: bool
  weight_by_significance: bool


MODES = registry.by_name(
    Mode("conventional", regulate=False, weight_by_significance=False),
    Mode("significance", regulate=False, weight_by_significance=True),
    Mode("regulated", regulate=True, weight_by_significance=False),
    Mode("hybrid", regulate=True, weight_by_significance=True),
)


def get_mode(name: str) -> Mode:
  """Returns the registered mode `name`.

  Raises:
    KeyError: if `name` is not registered; the message lists the known names.
  """
  return registry.lookup(MODES, name, "mode")

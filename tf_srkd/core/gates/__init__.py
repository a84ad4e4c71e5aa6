"""Gate policies: which samples of a batch take part in the backward pass.

One slot, several published rules, looked up by name (`--gate` for the teacher,
`--distill_gate` for the students of the self-regulating modes):

  self_regulated       Algorithm 1 of the paper (the default; `training` runs it as before)
  infobatch            Qin et al., ICLR 2024: prune a random fraction of the below-mean-loss
                       samples each epoch, rescale the kept ones' losses
  selective_backprop   Jiang et al. 2019: keep with probability percentile(loss)^beta
  random               keep each sample with probability p (the control)

This module imports no TensorFlow (`config` validates the names with it); a
policy's module is imported when the policy is made. The interface is
`base.GatePolicy`.
"""

import dataclasses
import importlib

from tf_srkd import registry


@dataclasses.dataclass(frozen=True)
class GateSettings:
  """The policies' hyper-parameters (`--infobatch_ratio`, ... ; see `config_fields.GateConfig`).

  Attributes:
    infobatch_ratio: r, the fraction of below-mean samples InfoBatch prunes each epoch.
    infobatch_delta: delta, the fraction of epochs with pruning (the rest use all data).
    sb_beta: beta, Selective Backprop's selectivity exponent.
    keep_fraction: p, the random policy's keep probability.
  """

  infobatch_ratio: float = 0.5
  infobatch_delta: float = 0.875
  sb_beta: float = 1.0
  keep_fraction: float = 0.5

  @classmethod
  def of(cls, config) -> "GateSettings":
    """The settings of a run's `GateConfig` (or anything with the same attributes)."""
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class PolicySpec:
  """One registered policy.

  Attributes:
    name: registry name (flags, MLflow tag `gate`, output tables).
    module: the module under `tf_srkd.core.gates` that implements it.
    class_name: its `base.GatePolicy` subclass there.
    summary: one line for help texts.
  """

  name: str
  module: str
  class_name: str
  summary: str


POLICIES = registry.by_name(
    PolicySpec("self_regulated", "self_regulated", "MarginGate",
               "Algorithm 1: misclassified or margin below eta(n)"),
    PolicySpec("infobatch", "infobatch", "InfoBatch",
               "InfoBatch (Qin et al. 2024): prune r of the below-mean-loss samples, rescale"),
    PolicySpec("selective_backprop", "selective_backprop", "SelectiveBackprop",
               "Selective Backprop (Jiang et al. 2019): keep with percentile(loss)^beta"),
    PolicySpec("random", "random_keep", "RandomKeep", "keep each sample with probability p"),
)

#: The default policy: the paper's rule, decided in the model's own step.
DEFAULT = "self_regulated"


def get_policy_spec(name: str) -> PolicySpec:
  """Returns the registered policy `name`.

  Raises:
    KeyError: if `name` is not registered; the message lists the known names.
  """
  return registry.lookup(POLICIES, name, "gate policy")


def make_policy(name: str, num_examples: int, epochs: int, seed: int,
                settings: GateSettings = GateSettings()):
  """A fresh, unbuilt `base.GatePolicy` for one training stage.

  Args:
    name: a key of `POLICIES`.
    num_examples: N, the sample ids are [0, N).
    epochs: the stage's epoch count (InfoBatch anneals at delta * epochs).
    seed: the run's seed; every random decision is a pure function of
      (policy, seed, epoch, sample id).
    settings: the hyper-parameters.

  Returns:
    The policy; the model that uses it builds its variables (`build`).
  """
  spec = get_policy_spec(name)
  module = importlib.import_module(f"{__name__}.{spec.module}")
  return getattr(module, spec.class_name)(num_examples, epochs, seed, settings)

"""The gate policies' registry and classes: which one decides in the model's own step."""

import numpy as np
import pytest

from tf_srkd.core import gates
from tf_srkd.core.gates import base
from tf_srkd.core.gates import random_keep
from tf_srkd.core.gates import self_regulated


@pytest.mark.parametrize("name", list(gates.POLICIES))
def test_every_registered_policy_builds_and_only_the_papers_decides_in_step(name):
  policy = gates.make_policy(name, num_examples=4, epochs=2, seed=0)
  assert isinstance(policy, base.GatePolicy) and policy.name == name
  assert policy.decided_in_step == (name == gates.DEFAULT)
  assert policy.idle_epochs == (name == gates.DEFAULT)


def test_the_papers_gate_has_no_decide_of_its_own():
  gate = self_regulated.MarginGate(4, 2, 0)
  with pytest.raises(AssertionError, match="decided_in_step"):
    gate.decide(None, None, None, None)


def test_random_keep_is_a_pure_function_of_seed_epoch_and_id():
  first = base.uniforms("random", 3, 1, 1000)
  np.testing.assert_array_equal(first, base.uniforms("random", 3, 1, 1000))
  assert not np.array_equal(first, base.uniforms("random", 3, 2, 1000))
  keep = random_keep.keep_mask(first, 0.25)
  assert set(np.unique(keep)) <= {0.0, 1.0}
  assert abs(keep.mean() - 0.25) < 0.05
  np.testing.assert_array_equal(keep, (first < np.float32(0.25)).astype(np.float32))


def test_an_unknown_policy_names_the_known_ones():
  with pytest.raises(KeyError, match="unknown gate policy 'nope'"):
    gates.get_policy_spec("nope")

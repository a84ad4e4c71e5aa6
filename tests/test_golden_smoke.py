"""A deterministic `flags/smoke.flags` run gives bit-identical outputs to the recorded ones.

The golden digests (tests/golden/smoke_deterministic.json) were recorded before a
refactoring of the package's layering; a change that only moves code must keep
them. How to regenerate them when results are *meant* to change: tests/golden_digest.py.
"""

import json

import pytest

from tests import golden_digest


@pytest.mark.slow
def test_smoke_run_is_bit_identical_to_the_golden_digests(tmp_path):
  out = tmp_path / "run"
  result = golden_digest.run_smoke(str(out))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(golden_digest.GOLDEN_PATH, encoding="utf-8") as f:
    golden = json.load(f)
  got = golden_digest.digest(str(out))
  assert got["summary"] == golden["summary"]
  assert sorted(got["stages"]) == sorted(golden["stages"])
  for stage, expected in golden["stages"].items():
    assert got["stages"][stage] == expected, f"{stage} differs from the golden run"

"""A deterministic `flags/smoke.flags` run gives bit-identical outputs to the recorded ones.

The golden digests (tests/golden/smoke_deterministic.json, one per CPU kind: the
bits depend on the instruction set) were recorded before a refactoring of the
package's layering; a change that only moves code must keep them. How to record
a new CPU kind, or regenerate them when results are *meant* to change:
tests/support/golden_digest.py.
"""

import json

import pytest

from tests.support import golden_digest


@pytest.mark.slow
def test_smoke_run_is_bit_identical_to_the_golden_digests(tmp_path):
  out = tmp_path / "run"
  result = golden_digest.run_smoke(str(out))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(golden_digest.GOLDEN_PATH, encoding="utf-8") as f:
    variants = json.load(f)["variants"]
  got = golden_digest.digest(str(out))
  index, differing = golden_digest.matching_variant(got, variants)
  assert index is not None, (
      f"{differing} differ from the golden run of every recorded CPU kind "
      f"({[v['machine'] for v in variants]}); this one is {golden_digest.machine_kind()}. "
      "If only code moved, that is a regression; if this CPU kind is new, record it with "
      "`python -m tests.support.golden_digest --add` from a commit whose results are known good.")


def test_a_golden_variant_matches_only_as_a_whole():
  stages = {"teacher": {"weights": "a"}, "students/regulated": {"weights": "b"}}
  avx2 = {"summary": {"acc": 1}, "stages": stages}
  avx512 = {"summary": {"acc": 2}, "stages": {"teacher": {"weights": "c"},
                                               "students/regulated": {"weights": "d"}}}
  assert golden_digest.matching_variant(avx512, [avx2, avx512]) == (1, [])
  mixed = {"summary": {"acc": 1}, "stages": dict(stages, teacher={"weights": "c"})}
  assert golden_digest.matching_variant(mixed, [avx2, avx512]) == (None, ["teacher"])
  missing = {"summary": {"acc": 1}, "stages": {"teacher": {"weights": "a"}}}
  assert golden_digest.matching_variant(missing, [avx2]) == (None, ["students/regulated"])

"""bench/RESULTS.md is generated from the scripts' own result files, kind by kind."""

import os
import sys

import pytest

_BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "bench")
_saved_path = list(sys.path)
sys.path.insert(0, _BENCH)
try:
  import common  # pylint: disable=wrong-import-position
  import render_results  # pylint: disable=wrong-import-position
finally:
  sys.path[:] = _saved_path


def test_results_md_is_exactly_what_the_renderer_makes():
  with open(render_results.RESULTS_PATH, encoding="utf-8") as f:
    assert f.read() == render_results.render(), (
        "bench/RESULTS.md differs from its result files: run `python bench/render_results.py` "
        "(and edit bench/results/<kind>/<name>.md or docs/findings.md, never RESULTS.md)")


def test_every_script_and_result_file_has_a_kind():
  kinds = dict(render_results.KINDS)
  for folder in os.listdir(_BENCH):
    path = os.path.join(_BENCH, folder)
    if os.path.isdir(path) and folder not in ("results", "__pycache__"):
      assert folder in kinds, f"bench/{folder}/: scripts go to bench/timing or bench/reproduction"
  for folder in os.listdir(os.path.join(_BENCH, "results")):
    assert folder in kinds, f"bench/results/{folder}/ is not a kind of result"
  assert all(os.listdir(os.path.join(_BENCH, kind)) for kind in kinds)


def test_write_section_stores_the_file_and_rerenders(tmp_path):
  results, out = tmp_path / "results", tmp_path / "RESULTS.md"
  common.write_section("b", "## B\n\n1", kind="timing", results_dir=str(results), path=str(out))
  common.write_section("a", "## A\n\n2", kind="reproduction", results_dir=str(results),
                       path=str(out))
  common.write_section("b", "## B\n\n3", kind="timing", results_dir=str(results), path=str(out))
  assert (results / "timing" / "b.md").read_text() == "## B\n\n3\n"
  text = out.read_text()
  assert text.startswith(render_results.HEADER)
  assert text.index("# Timing benchmarks") < text.index("<!-- bench:b -->\n## B\n\n3\n")
  assert text.index("# Reproduction experiments") < text.index("<!-- bench:a -->")
  assert "## B\n\n1" not in text and not list(tmp_path.rglob("*.tmp"))


def test_the_kind_is_the_scripts_folder():
  assert common.script_kind(os.path.join(_BENCH, "timing", "x.py")) == "timing"
  with pytest.raises(ValueError, match="bench/timing/ or bench/reproduction/"):
    common.script_kind(os.path.join(_BENCH, "x.py"))

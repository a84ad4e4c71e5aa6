"""`--flagfile=` resolution: shipped experiments by name from anywhere, includes relative
to the including file, cycles refused (fast: no TensorFlow)."""

import os
import subprocess
import sys

import pytest

from tf_srkd.cli import flagfiles

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED_SMOKE = os.path.join(flagfiles.SHIPPED_DIR, "smoke.flags")


@pytest.mark.parametrize("value", ["smoke", "smoke.flags", "flags/smoke.flags"])
def test_shipped_experiment_by_name_from_any_directory(value, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  # realpath: under Bazel both are runfiles links to the one source file.
  assert os.path.realpath(flagfiles.resolve(value)) == os.path.realpath(SHIPPED_SMOKE)


def test_a_path_that_exists_wins_over_a_shipped_name(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "smoke.flags").write_text("--epochs=7\n")
  assert flagfiles.resolve("smoke.flags") == str(tmp_path / "smoke.flags")
  assert flagfiles.expand(["prog", "--flagfile=smoke.flags"]) == ["prog", "--epochs=7"]


def test_shipped_smoke_expands_through_its_include_from_anywhere(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  args = flagfiles.expand(["prog", "--flagfile=smoke", "--epochs=3"])
  assert "--dataset=mnist" in args  # From mnist.flags, which smoke.flags includes.
  # Order is kept: the include first, smoke's overrides next, the command line last.
  assert args.index("--epochs=200") < args.index("--epochs=2") < args.index("--epochs=3")
  assert not any(a.startswith("--flagfile") for a in args)


def test_includes_resolve_relative_to_the_including_file(tmp_path, monkeypatch):
  experiments = tmp_path / "experiments"
  experiments.mkdir()
  (experiments / "base.flags").write_text("# base\n--epochs=9\n\n// also a comment\n")
  (experiments / "mine.flags").write_text("--flagfile=base.flags\n--batch_size=32\n")
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  assert flagfiles.expand(["p", "--flagfile=../experiments/mine.flags"]) == [
      "p", "--epochs=9", "--batch_size=32"]


def test_a_user_flagfile_can_include_a_shipped_experiment(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "mine.flags").write_text("--flagfile=quick\n--epochs=1\n")
  args = flagfiles.expand(["p", "--flagfile=mine.flags"])
  assert args[-1] == "--epochs=1" and "--dataset=mnist" in args


def test_arguments_after_the_terminator_are_untouched():
  assert flagfiles.expand(["p", "--", "--flagfile=nowhere"]) == ["p", "--", "--flagfile=nowhere"]


def test_a_missing_flagfile_names_it_and_the_shipped_ones(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(flagfiles.FlagfileError, match=r"--flagfile=nope: no such file.*quick"):
    flagfiles.expand(["p", "--flagfile=nope"])


def test_a_flagfile_that_includes_itself_is_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "a.flags").write_text("--flagfile=b.flags\n")
  (tmp_path / "b.flags").write_text("--epochs=1\n--flagfile=a.flags\n")
  with pytest.raises(flagfiles.FlagfileError, match=r"includes itself \(a.flags -> b.flags -> a.flags\)"):
    flagfiles.expand(["p", "--flagfile=a.flags"])


def test_the_same_file_twice_side_by_side_is_not_a_cycle(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "a.flags").write_text("--epochs=1\n")
  assert flagfiles.expand(["p", "--flagfile=a.flags", "--flagfile=a.flags"]) == [
      "p", "--epochs=1", "--epochs=1"]


def test_cli_refuses_a_cycle_with_one_line_and_status_2(tmp_path):
  (tmp_path / "loop.flags").write_text("--flagfile=loop.flags\n")
  result = subprocess.run([sys.executable, "-m", "tf_srkd.main", "--flagfile=loop.flags"],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: --flagfile={tmp_path / 'loop.flags'} includes itself (loop.flags -> loop.flags)"]


def test_repository_flags_directory_is_the_shipped_one():
  """flags/ at the repository root links to the package's, so `flags/x.flags` paths and a
  plain absl parse from the root keep working; there is one copy of each file."""
  # File by file: Bazel's runfiles turn the flags/ link into a folder of links.
  for name in ("mnist", "quick", "smoke"):
    assert os.path.realpath(os.path.join(ROOT, "flags", f"{name}.flags")) == os.path.realpath(
        os.path.join(flagfiles.SHIPPED_DIR, f"{name}.flags"))
  assert {"mnist", "quick", "smoke"} <= set(flagfiles.shipped_experiments())

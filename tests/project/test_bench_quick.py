"""The benchmark scripts run end to end: each one's `--quick --no_write` check.

The figures in bench/RESULTS.md come from these scripts, run for hours alone on a
machine; nothing else exercises their code between those runs. The quick check runs
the same code paths on a few hundred examples, so a library change that breaks a
benchmark fails here and not months later. Each run must exit 0, print its table, and
leave bench/ byte for byte alone (`--no_write`: RESULTS.md, the Pareto plots, no new file).
"""

import glob
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")

#: script -> (extra arguments, with {tmp} for the test's directory; substrings its stdout
#: must contain).
QUICK_RUNS = {
    "reproduction/bn_gate": (["--output_root={tmp}/run"], ["| regulated | masked |", "| hybrid | compact |"]),
    "reproduction/mobile": (["--output_root={tmp}/run"], ["| conventional |", "| hybrid |"]),
    "reproduction/qad": (["--output_root={tmp}/run"], ["| hybrid |", "| ok / ok / ok |"]),
    "reproduction/precise_bn_case": (["--output_root={tmp}/run"], ["| hybrid |", "precise BN"]),
    "reproduction/feature_kd": (["--output_root={tmp}/run"], [
        "| regulated | logits+feature@0.5 |", "| hybrid | logits |",
        "same ζ budget (±10 %)"]),
    "reproduction/peers": ([], ["| mnist | teacher | self_regulated |", "| mnist | student | infobatch |",
                   "| mnist | student | selective_backprop |", "| mnist | student | random |"]),
    "reproduction/peers_protocol": (["--cells_dir={tmp}/cells"], [
        "| teacher | self_regulated+bounded |", "| student | selective_backprop |",
        "| student | infobatch |", "matched (±10 %)"]),
    "timing/streaming": ([], ["| on disk / in memory (throughput) |", "| 1024 |"]),
    "reproduction/subsets": (["--root={tmp}"], ["| kd | top |", "| supervised | random |"]),
    "timing/trickle_floor": ([], ["| SR no reuse |", "| conventional |", "| epoch 0 compact |"]),
    "timing/bounded_margins": ([], ["| teacher | bounded K=", "| students/hybrid | exact |",
                                    "| teacher | conventional |", "extra admissions"]),
}


def _subsets_run(tmp_path):
  """The subset tool's outputs, which the bench reads: its id lists, rows, curve and runs."""
  from tf_srkd.data import subsets  # pylint: disable=import-outside-toplevel

  run = tmp_path / "mnist-e1-n512"
  out = run / "subsets"
  significance = np.load(run / "teacher/significance.npy")
  lists = {r: np.load(out / f"ids/{r}-f0.25.npy") for r in subsets.RANKINGS}
  top, bottom = lists["top"], lists["bottom"]
  assert all(len(ids) == len(top) > 0 for ids in lists.values())
  assert not set(top) & set(bottom)
  assert significance[top].mean() >= significance[bottom].mean()
  rows = json.loads((out / "summary.json").read_text())["rows"]
  assert len(rows) == 2 * 3 * 2  # methods x rankings x fractions
  assert {r["ranking"] for r in rows if r["fraction"] == 1.0} == set(subsets.RANKINGS)
  assert (out / "curve.png").stat().st_size > 0 and "| kd | top |" in (out / "table.md").read_text()
  assert (out / "kd-top-f0.25/model.keras").exists()
  assert (out / "supervised-all-f1/metrics.json").exists()


def _feature_kd_run(tmp_path):
  """The CLI took the repeated --distillation_loss in order and wrote it back."""
  run = tmp_path / "run_quick" / "s0" / "logits+feature@0.5"
  flags = (run / "flags.txt").read_text()
  assert "--distillation_loss=logits\n--distillation_loss=feature:pool,pool\n" in flags
  assert "--distillation_loss_weights=1.0,0.5\n" in flags
  for mode in ("regulated", "hybrid"):
    assert (run / "students" / mode / "model.keras").exists()


#: script -> a check of the files its quick run left under the test's directory.
RUN_CHECKS = {"reproduction/subsets": _subsets_run, "reproduction/feature_kd": _feature_kd_run}


def _digests():
  """sha256 of every file under bench/ (bar bytecode caches), by path."""
  result = {}
  for folder, subfolders, files in os.walk(BENCH):
    subfolders[:] = [d for d in subfolders if d != "__pycache__"]
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        result[path] = hashlib.sha256(f.read()).hexdigest()
  return result


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(QUICK_RUNS))
def test_quick_run_prints_its_table_and_leaves_bench_alone(script, tmp_path):
  extra, expected = QUICK_RUNS[script]
  before = _digests()
  run = subprocess.run(
      [sys.executable, os.path.join(BENCH, f"{script}.py"), "--quick", "--no_write"]
      + [arg.format(tmp=tmp_path) for arg in extra],
      cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  for line in expected:
    assert line in run.stdout, f"{script}: no {line!r} in\n{run.stdout[-3000:]}"
  if script == "reproduction/mobile":
    # Every mode's int8 file passed the op check (full-integer, HARD_SWISH as an op);
    # --quick runs two of the four modes.
    assert run.stdout.count(" | ok |\n") == 2, run.stdout[-3000:]
  assert _digests() == before, f"{script} --no_write changed bench/"
  if script in RUN_CHECKS:
    RUN_CHECKS[script](tmp_path)


def test_every_quick_script_is_checked():
  """A new bench script with a `--quick` check gets a run here."""
  with_quick = set()
  for path in glob.glob(os.path.join(BENCH, "*", "*.py")):
    name = os.path.relpath(path, BENCH)[:-3]
    with open(path, encoding="utf-8") as f:
      text = f.read()
    # bn_gate.py and mobile.py get their --quick from whole_runs.add_run_args (called
    # through the module, as they do: a `from whole_runs import` would go unseen here).
    helper = os.path.dirname(name) not in ("timing", "reproduction")
    if not helper and ('"--quick"' in text or "whole_runs.add_run_args(" in text):
      with_quick.add(name)
  assert with_quick == set(QUICK_RUNS)

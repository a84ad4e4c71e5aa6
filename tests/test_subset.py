"""Significance-ranked subsets: the id lists' rules, and the tool end to end."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from tf_srkd import config as config_lib
from tf_srkd import config_flags
from tf_srkd import subset
from tf_srkd import subsets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ties(n=1000, seed=0):
  """Labels over 3 classes of unequal size; 3/4 of the significance exactly 0."""
  rng = np.random.default_rng(seed)
  labels = rng.choice(3, n, p=[0.5, 0.3, 0.2])
  significance = np.where(rng.random(n) < 0.75, 0.0, rng.random(n)).astype(np.float32)
  return significance, labels


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("ranking", subsets.RANKINGS)
def test_lists_are_class_balanced_sorted_and_deterministic(fraction, ranking):
  significance, labels = _ties()
  ids = subsets.select(significance, labels, fraction, ranking, seed=3)
  assert ids.dtype == np.int32 and np.all(np.diff(ids) > 0)
  for cls in range(3):
    n_c = int((labels == cls).sum())
    assert (labels[ids] == cls).sum() == max(1, int(np.floor(fraction * n_c + 1e-9)))
  np.testing.assert_array_equal(ids, subsets.select(significance, labels, fraction, ranking, 3))


def test_top_and_bottom_are_disjoint_up_to_half_and_ranked():
  significance, labels = _ties()
  for fraction in (0.01, 0.1, 0.3, 0.5):
    top = subsets.select(significance, labels, fraction, "top")
    bottom = subsets.select(significance, labels, fraction, "bottom")
    assert not set(top) & set(bottom), fraction
    for cls in range(3):
      members = np.flatnonzero(labels == cls)
      rest = np.setdiff1d(members, top)
      assert significance[top[labels[top] == cls]].min() >= significance[rest].max()
      rest = np.setdiff1d(members, bottom)
      assert significance[bottom[labels[bottom] == cls]].max() <= significance[rest].min()
  # Ties: a larger f only adds samples (the hash order is fixed), and the seed moves them.
  for ranking in ("top", "bottom", "random"):
    small = subsets.select(significance, labels, 0.1, ranking)
    assert set(small) <= set(subsets.select(significance, labels, 0.5, ranking))
  bottom = subsets.select(significance, labels, 0.2, "bottom", seed=0)
  assert np.all(significance[bottom] == 0)  # 3/4 are 0: the bottom fifth is all ties
  assert not np.array_equal(bottom, subsets.select(significance, labels, 0.2, "bottom", seed=1))
  assert len(subsets.select(significance, labels, 1.0, "top")) == len(labels)


def test_bad_arguments_are_refused():
  significance, labels = _ties(30)
  with pytest.raises(ValueError, match="ranking"):
    subsets.select(significance, labels, 0.5, "middle")
  with pytest.raises(ValueError, match="fraction"):
    subsets.select(significance, labels, 0.0, "top")
  with pytest.raises(ValueError, match="length"):
    subsets.select(significance[:-1], labels, 0.5, "top")


def _values(tmp_path, **overrides):
  values = dict(teacher_dir=str(tmp_path), fractions=["0.1"], rankings=["top"],
                methods=["kd"], epochs=None, schedule="epochs", output_dir=None, seed=None,
                mlflow=False, mlflow_tracking_uri=None, mlflow_experiment=None, verbose=0)
  values.update(overrides)
  return types.SimpleNamespace(**values)


@pytest.mark.parametrize("overrides,message", [
    ({}, "flags.txt"),
    ({"teacher_dir": None}, "--teacher_dir: required"),
])
def test_tool_refuses_a_directory_without_a_run(tmp_path, overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    subset.plan_from_flags(_values(tmp_path, **overrides))


@pytest.mark.parametrize("overrides,message", [
    ({"fractions": ["0"]}, "--fractions=0"),
    ({"fractions": ["x"]}, "--fractions=x"),
    ({"rankings": ["middle"]}, "--rankings=middle"),
    ({"methods": ["kd", "fancy"]}, "--methods=kd,fancy"),
])
def test_tool_refuses_bad_flags(tmp_path, overrides, message):
  (tmp_path / "flags.txt").write_text(config_flags.to_flagfile(config_lib.Config()))
  with pytest.raises(config_lib.ConfigError, match=message):
    subset.plan_from_flags(_values(tmp_path, **overrides))


@pytest.mark.slow
def test_tool_end_to_end(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  run = tmp_path / "run"
  subprocess.run([sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/smoke.flags",
                  "--stage=teacher", "--alpha=0.5", f"--output_dir={run}"], cwd=ROOT, env=env,
                 check=True, capture_output=True, timeout=600)
  result = subprocess.run([sys.executable, "-m", "tf_srkd.subset", f"--teacher_dir={run}",
                           "--fractions=0.25,1", "--epochs=1", "--nomlflow"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = run / "subsets"
  significance = np.load(run / "teacher/significance.npy")
  labels = np.concatenate([np.load(out / f"ids/{r}-f0.25.npy") for r in subsets.RANKINGS])
  assert len(labels) > 0
  top, bottom = np.load(out / "ids/top-f0.25.npy"), np.load(out / "ids/bottom-f0.25.npy")
  assert not set(top) & set(bottom) and len(top) == len(bottom)
  assert significance[top].mean() >= significance[bottom].mean()
  summary = json.loads((out / "summary.json").read_text())
  assert len(summary["rows"]) == 2 * 3 * 2  # methods x rankings x fractions
  assert {r["ranking"] for r in summary["rows"] if r["fraction"] == 1.0} == set(subsets.RANKINGS)
  assert (out / "curve.png").stat().st_size > 0 and "| kd | top |" in (out / "table.md").read_text()
  assert (out / "kd-top-f0.25/model.keras").exists() and (out / "supervised-all-f1/metrics.json").exists()

"""Significance-ranked subsets: the id lists' rules, and the tool's flags and storage.

The tool end to end from the command line, after a CLI teacher run, is the check of
bench/reproduction/subsets.py (tests/project/test_bench_quick.py)."""

import dataclasses
import os
import types

import numpy as np
import pytest

from tf_srkd.run import config as config_lib
from tf_srkd.run import config_flags
from tf_srkd.cli import subset
from tf_srkd.run import subset_study
from tf_srkd.data import subsets


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
  (tmp_path / "flags.txt").write_text(config_flags.to_flagfile(config_lib.Config.of()))
  with pytest.raises(config_lib.ConfigError, match=message):
    subset.plan_from_flags(_values(tmp_path, **overrides))


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  """A run directory with an untrained teacher, a made-up significance and the flags.txt of
  a tiny MNIST run (160 examples): what the tool reads, without training a teacher."""
  import keras  # pylint: disable=import-outside-toplevel

  from tf_srkd.storage import io_utils  # pylint: disable=import-outside-toplevel
  from tf_srkd.storage import layout  # pylint: disable=import-outside-toplevel
  from tf_srkd.models import zoo as models  # pylint: disable=import-outside-toplevel

  run = layout.RunDir(str(tmp_path_factory.mktemp("subset_teacher") / "run"))
  config = config_lib.Config.of(dataset="mnist", epochs=1, train_examples=160, batch_size=32,
                                eval_batch_size=500, verbose=0, mlflow=False, output_dir=run.path)
  os.makedirs(run.teacher.path)
  io_utils.write_text(run.flags, config_flags.to_flagfile(config))
  keras.utils.set_random_seed(0)
  io_utils.save_keras(run.teacher.model, models.build_model("lenet5", (28, 28, 1), 10))
  io_utils.save_npy(run.teacher.significance,
                    np.random.default_rng(0).random(160).astype(np.float32))
  return run.path


def _run_tool(teacher_run, output_dir, max_in_memory_mb, monkeypatch, train=False):
  """The tool at f = 0.25 (kd: the method with extras): its rows and, per student, the
  transfer set, test split and extras it got. With `train` False no student trains: the
  stage is "evaluated" as the run's teacher's accuracy on the test split the tool loaded."""
  import keras  # pylint: disable=import-outside-toplevel

  from tf_srkd.run import stages  # pylint: disable=import-outside-toplevel

  plan = subset.plan_from_flags(_values(teacher_run, fractions=["0.25"],
                                        output_dir=str(output_dir)))
  plan = dataclasses.replace(plan, config=plan.config.replace(max_in_memory_mb=max_in_memory_mb))
  teacher = keras.models.load_model(os.path.join(teacher_run, "teacher", "model.keras"))
  seen = []
  real = stages.run_stage

  def spy(stage, config, strategy, split, test, tracker, build, make_extras=dict, **kwargs):
    seen.append((stage.name, split, test, make_extras()))
    if train:
      return real(stage, config, strategy, split, test, tracker, build, make_extras, **kwargs)
    return types.SimpleNamespace(metrics={
        "test_accuracy": stages.evaluate_accuracy(teacher, test, config.training.eval_batch_size)})

  monkeypatch.setattr(stages, "run_stage", spy)
  rows = subset_study.run(plan)
  monkeypatch.undo()
  return rows, seen


def _check_same_students(tmp_path, memory, disk):
  """The on-disk run's students got what the in-memory run's got, kept on disk."""
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel

  ids = np.load(tmp_path / "disk/ids/top-f0.25.npy")
  np.testing.assert_array_equal(np.load(tmp_path / "memory/ids/top-f0.25.npy"), ids)
  assert [s[0] for s in memory] == [s[0] for s in disk] == ["kd-top-f0.25"]
  for (_, train_m, test_m, extras_m), (_, train_d, test_d, extras_d) in zip(memory, disk):
    assert isinstance(train_m.images, np.ndarray) and isinstance(test_m.images, np.ndarray)
    assert data.is_stored(train_d.images) and data.is_stored(test_d.images)
    assert train_d.size == len(ids) < 160 and test_d.size == 10000
    np.testing.assert_array_equal(np.asarray(train_d.images), train_m.images)
    np.testing.assert_array_equal(train_d.labels, train_m.labels)
    assert set(extras_d) == set(extras_m) == {"teacher_logits"}
    assert data.is_stored(extras_d["teacher_logits"])
    np.testing.assert_array_equal(np.asarray(extras_d["teacher_logits"]),
                                  extras_m["teacher_logits"])


def test_tool_on_splits_on_disk_equals_the_tool_in_memory(teacher_run, tmp_path, monkeypatch):
  """--max_in_memory_mb=0: the splits, the subset and its teacher logits stay on disk; the
  students get the same rows, and the evaluation over the test split the same accuracy."""
  memory_rows, memory = _run_tool(teacher_run, tmp_path / "memory", 2048, monkeypatch)
  disk_rows, disk = _run_tool(teacher_run, tmp_path / "disk", 0, monkeypatch)
  _check_same_students(tmp_path, memory, disk)
  assert memory_rows == disk_rows and 0 < disk_rows[0]["test_accuracy"] < 1


@pytest.mark.slow
def test_students_trained_on_disk_equal_students_trained_in_memory(teacher_run, tmp_path,
                                                                    monkeypatch):
  memory_rows, memory = _run_tool(teacher_run, tmp_path / "memory", 2048, monkeypatch, True)
  disk_rows, disk = _run_tool(teacher_run, tmp_path / "disk", 0, monkeypatch, True)
  _check_same_students(tmp_path, memory, disk)
  for row in memory_rows + disk_rows:
    row.pop("wall_time_s")
  assert memory_rows == disk_rows

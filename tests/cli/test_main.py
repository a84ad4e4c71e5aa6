"""The `tf-srkd` entry point's own steps after the pipeline: which students `--export`
and `--register_model` take, and the one line for those held back at chance."""

import pytest

from tf_srkd.cli import main as main_lib
from tf_srkd.run import config as config_lib

SUMMARY = {"students": {"conventional": {"test_accuracy": 0.97},
                        "regulated": {"test_accuracy": 0.1032, "at_chance": True},
                        "hybrid": {"test_accuracy": 0.95, "at_chance": False}}}


def _config(tmp_path, **overrides):
  return config_lib.Config.of(dataset="mnist", output_dir=str(tmp_path / "run"), mlflow=False,
                              **overrides)


@pytest.fixture(name="exported")
def _exported(tmp_path, monkeypatch):
  """Runs `main.run` on SUMMARY (the pipeline stubbed) and returns a function that gives
  the modes it exported and registered for a config."""
  from tf_srkd.run import pipeline  # pylint: disable=import-outside-toplevel

  calls = {"export": [], "register": []}
  monkeypatch.setattr(pipeline, "run", lambda *args, **kwargs: SUMMARY)
  monkeypatch.setattr(main_lib, "export_students",
                      lambda config, modes, tracker: calls["export"].append(modes))
  monkeypatch.setattr(main_lib, "register_students",
                      lambda config, modes, tracker: calls["register"].append(modes))

  def run(**overrides):
    for kind in calls:
      calls[kind].clear()
    assert main_lib.run(_config(tmp_path, **overrides)) is SUMMARY
    return {kind: [list(modes) for modes in made] for kind, made in calls.items()}

  return run


def test_only_the_students_not_at_chance_are_exported_and_registered(exported):
  assert exported(export=("float32",), register_model="srkd") == {
      "export": [["conventional", "hybrid"]], "register": [["conventional", "hybrid"]]}
  assert exported(export=("int8",), export_at_chance=True) == {
      "export": [["conventional", "regulated", "hybrid"]], "register": []}
  assert exported() == {"export": [], "register": []}  # Neither asked for.


def test_the_refusal_names_the_held_student_and_the_flag_that_asked(tmp_path):
  line = main_lib.refusal_at_chance(_config(tmp_path, export=("float32",)), SUMMARY)
  assert line.startswith("--export: nothing exported or registered for the student(s) at "
                         "chance (regulated 0.1032 test accuracy, 10 classes)")
  assert "conventional" not in line and "hybrid" not in line and "--export_at_chance" in line
  line = main_lib.refusal_at_chance(_config(tmp_path, register_model="srkd"), SUMMARY)
  assert line.startswith("--register_model: ")
  # Nothing to refuse: no export or registration asked for, or at chance allowed.
  assert main_lib.refusal_at_chance(_config(tmp_path), SUMMARY) is None
  assert main_lib.refusal_at_chance(
      _config(tmp_path, export=("float32",), export_at_chance=True), SUMMARY) is None

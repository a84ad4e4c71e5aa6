"""The run's console lines and the entry points' quiet defaults (fast: no training)."""

import errno
import io
import logging
import os
import subprocess
import sys

from absl import flags
from absl import logging as absl_logging
import pytest

from tf_srkd.cli import environment as cli
from tf_srkd.run import console


class _Stream(io.StringIO):

  def __init__(self, tty):
    super().__init__()
    self.tty = tty

  def isatty(self):
    return self.tty


def test_fit_verbosity_is_a_bar_on_a_terminal_and_a_line_per_epoch_in_a_file():
  assert console.default_fit_verbosity(_Stream(True)) == 1
  assert console.default_fit_verbosity(_Stream(False)) == 2


def test_stage_lines_say_what_trains_and_what_it_gave(capsys):
  teacher = console.describe_stage("teacher", "teacher", "lenet5", None, 0.02)
  student = console.describe_stage("student-significance", "student", "lenet5_half",
                                   "significance", float("inf"))
  assert teacher == "teacher lenet5 (self-regulated, alpha=0.02)"
  assert student == "student-significance lenet5_half (significance distillation, every sample)"
  console.stage_started(teacher, 60000, 200)
  console.stage_finished("teacher", {"test_accuracy": 0.98765, "zeta": 0.0123}, 61.25)
  console.stage_finished("student-conventional", {"test_accuracy": 0.5, "zeta": None}, 2.0)
  assert capsys.readouterr().out.splitlines() == [
      "== teacher lenet5 (self-regulated, alpha=0.02): 60,000 samples, 200 epochs",
      "== teacher done: test accuracy 0.9877, zeta 0.0123 (1.23%); 61.2 s",
      "== student-conventional done: test accuracy 0.5000; 2.0 s",
  ]


class _Tracker:
  """The part of a tracker the console reads."""

  def __init__(self, uri, parent="abc123"):
    self.tracking_uri = uri
    self.parent = parent

  def parent_run(self):
    return self.parent


def test_a_parent_run_known_only_to_the_pending_log_is_not_printed(capsys):
  console.run_finished("runs/u", 1.0, _Tracker("http://127.0.0.1:5000", parent=None))
  assert capsys.readouterr().out.splitlines() == ["wall time 1.0 s; outputs in runs/u"]


def test_the_run_ends_with_outputs_parent_run_and_how_to_open_it(capsys):
  console.run_finished("runs/x", 12.34, _Tracker("sqlite:///mlflow.db"))
  console.run_finished("runs/y", 1.0, _Tracker("http://127.0.0.1:5000"))
  console.run_finished("runs/z", 1.0, None)  # --nomlflow
  with_experiment = _Tracker("http://127.0.0.1:5000/")
  with_experiment.experiment_id = "7"
  console.run_finished("runs/w", 1.0, with_experiment)
  with_experiment.tracking_uri = "sqlite:///mlflow.db"
  console.run_finished("runs/v", 1.0, with_experiment)
  assert capsys.readouterr().out.splitlines() == [
      "wall time 12.3 s; outputs in runs/x",
      "MLflow parent run abc123 in sqlite:///mlflow.db; "
      "see it with: mlflow ui --backend-store-uri sqlite:///mlflow.db",
      "wall time 1.0 s; outputs in runs/y",
      "MLflow parent run abc123 in http://127.0.0.1:5000; "
      "see it with: open http://127.0.0.1:5000 in a browser",
      "wall time 1.0 s; outputs in runs/z",
      "wall time 1.0 s; outputs in runs/w",
      "MLflow parent run abc123 in http://127.0.0.1:5000/; see it with: open "
      "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning in a browser",
      "wall time 1.0 s; outputs in runs/v",
      "MLflow parent run abc123 in sqlite:///mlflow.db; see it with: mlflow ui "
      "--backend-store-uri sqlite:///mlflow.db, then open "
      "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning",
  ]


def test_quiet_environment_keeps_what_the_user_set():
  environ = {}
  cli.quiet_environment(environ)
  assert environ == {"TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_LOGGING_LEVEL": "WARNING"}
  environ = {"TF_CPP_MIN_LOG_LEVEL": "0"}
  cli.quiet_environment(environ)
  assert environ == {"TF_CPP_MIN_LOG_LEVEL": "0", "MLFLOW_LOGGING_LEVEL": "WARNING"}


def test_relative_tfds_data_dir_is_made_absolute_from_the_current_directory(tmp_path,
                                                                            monkeypatch):
  monkeypatch.chdir(tmp_path)
  environ = {"TFDS_DATA_DIR": "../shared/tfds"}
  cli.prepare_environment(environ)
  assert environ["TFDS_DATA_DIR"] == os.path.join(os.path.dirname(str(tmp_path)), "shared",
                                                  "tfds")
  assert environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
  for kept in ("/data/tfds", "gs://bucket/tfds"):
    environ = {"TFDS_DATA_DIR": kept}
    cli.absolute_data_dir(environ)
    assert environ["TFDS_DATA_DIR"] == kept
  environ = {}
  cli.absolute_data_dir(environ)
  assert environ == {}


def test_python_logging_is_quiet_unless_verbosity_is_given():
  tf_logger = logging.getLogger("tensorflow")
  before = {name: logging.getLogger(name).level for name in cli.NOISY_LOGGERS}
  root, verbosity = logging.root.level, absl_logging.get_verbosity()
  try:
    given = flags.FlagValues()
    flags.DEFINE_integer("verbosity", -1, "", flag_values=given)
    given(["prog", "--verbosity=0"])
    tf_logger.setLevel(logging.INFO)
    cli.quiet_python_logging(given)
    assert tf_logger.level == logging.INFO  # --verbosity given: left alone.
    cli.quiet_python_logging(flags.FlagValues())
    assert tf_logger.level == logging.WARNING  # Checkpoint sharding INFO lines are gone.
  finally:  # The rest of the session keeps its logging.
    absl_logging.set_verbosity(verbosity)
    logging.root.setLevel(root)
    for name, level in before.items():
      logging.getLogger(name).setLevel(level)


def test_failing_on_gives_bad_input_and_a_full_disk_one_line_and_status_2(capsys):
  with pytest.raises(SystemExit) as exit_info:
    with cli.failing_on(KeyError, ValueError):
      raise ValueError("--epochs must be >= 1")
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == "error: --epochs must be >= 1\n"
  with pytest.raises(SystemExit) as exit_info:
    with cli.failing_on(KeyError):
      raise OSError(errno.ENOSPC, "No space left on device", "/r/metrics.json")
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.startswith(
      "error: No space left on device writing /r/metrics.json; free some space")
  with pytest.raises(RuntimeError, match="a bug"):  # Not input: the traceback stays.
    with cli.failing_on(KeyError):
      raise RuntimeError("a bug")
  assert capsys.readouterr().err == ""


def test_stage_retrace_filter_drops_only_the_step_loop_false_alarm():
  import logging  # pylint: disable=import-outside-toplevel

  from tf_srkd.cli import environment as cli  # pylint: disable=import-outside-toplevel

  def record(message):
    return logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, message, None, None)

  keep = cli.StageRetraceFilter().filter
  loop = ("5 out of the last 9 calls to <function TensorFlowTrainer._make_function.<locals>."
          "multi_step_on_iterator at 0x7f> triggered tf.function retracing. Tracing is expensive")
  other = ("6 out of the last 10 calls to <function my_step at 0x7f> triggered tf.function "
           "retracing. Tracing is expensive")
  assert not keep(record(loop))
  assert keep(record(other))
  assert keep(record("an unrelated warning"))


_CYCLE_AT_EXIT = """
import sys
sys.path.insert(0, {root!r})
from tf_srkd.cli import environment
if {skip}:
  environment.skip_the_final_collection()
class Cycle:
  def __del__(self):
    print("collected at exit")
cycle = Cycle()
cycle.self = cycle
del cycle
import gc
gc.disable()  # Only the collection at exit is left to find it.
"""


@pytest.mark.parametrize("skip", [False, True])
def test_a_command_skips_only_the_last_collection(skip):
  """Without the hook CPython's exit collects a leftover cycle; with it the cycle goes with
  the process (the ~1.3 s saved), while atexit hooks and reference counting still run."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run(
      [sys.executable, "-c", _CYCLE_AT_EXIT.format(root=root, skip=skip)
       + "import atexit; atexit.register(print, 'hook ran')"],
      capture_output=True, text=True, timeout=120, check=True)
  assert "hook ran" in result.stdout
  assert ("collected at exit" in result.stdout) is not skip


@pytest.mark.parametrize("module", ["tf_srkd.main", "tf_srkd.cli.subset", "tf_srkd.cli.report",
                                    "export.tflite"])
@pytest.mark.parametrize("arg,culprit", [("--bogus=1", "'bogus'"),
                                         ("--flagfile=/no/such.flags", "/no/such.flags")])
def test_every_entry_point_refuses_a_bad_flag_in_one_line_with_status_2(module, arg, culprit):
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run([sys.executable, "-m", module, arg], cwd=root, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and culprit in errors[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr and "USAGE" not in result.stderr


def test_every_flag_of_the_main_job_is_in_one_help_group():
  from tf_srkd.run import config_flags  # pylint: disable=import-outside-toplevel

  grouped = [name for _, names in config_flags.HELP_GROUPS for name in names]
  assert sorted(grouped) == sorted(spec.name for spec in config_flags.flag_specs())
  assert len(grouped) == len(set(grouped))


@pytest.mark.parametrize("module,expected", [
    ("tf_srkd.main", ["data:", "models:", "gate:", "training:", "run and outputs:", "tracking:",
                      "export:", "--dataset (default: mnist)", "--teacher_input (default: auto)",
                      "--modes (default: conventional,significance,regulated,hybrid)"]),
    ("export.tflite", ["--quantization (default: float32)", "--export_at_chance"]),
    ("tf_srkd.cli.report", ["--experiment"]),
    ("tf_srkd.cli.subset", ["--fractions"]),
])
def test_help_lists_the_programs_own_flags_with_defaults(module, expected):
  result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                          text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__)))), check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  for text in expected:
    assert text in result.stdout, (text, result.stdout[:3000])
  assert "--helpfull" in result.stdout and "--log_dir" not in result.stdout  # absl's own

"""What every command-line entry point does before and around `absl.app.run`.

`quiet_environment()` must run before TensorFlow or MLflow is first imported
(it sets environment variables they read once); `run(main)` expands the
`--flagfile=` arguments (`flagfiles`), then lets absl parse and call `main`
with the Python logging of TensorFlow and TFDS at WARNING.

Getting the noise back: `TF_CPP_MIN_LOG_LEVEL=0` (TensorFlow's C++ INFO and
WARNING lines; a few lines it prints before its logging starts cannot be
switched off), `MLFLOW_LOGGING_LEVEL=INFO`, `--verbosity=0` (absl / Python
INFO lines, e.g. TFDS' dataset loading and checkpoint sharding).
"""

import logging
import os
import sys

#: Environment defaults that quiet TensorFlow's start-up (C++ INFO and WARNING lines)
#: and MLflow's INFO lines (database set-up; MLflow configures its logger itself on
#: import, from this variable); a value the user set wins.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_LOGGING_LEVEL": "WARNING"}
#: Python loggers whose INFO lines are noise on our console (per-epoch checkpoint
#: "Sharding callback duration", TFDS' "Load dataset info"); kept at WARNING.
NOISY_LOGGERS = ("tensorflow", "absl", "tensorflow_datasets")


def quiet_environment(environ=os.environ):
  """Sets the `QUIET_ENVIRONMENT` defaults that the user has not set."""
  for name, value in QUIET_ENVIRONMENT.items():
    environ.setdefault(name, value)


def _verbosity_given(flag_values) -> bool:
  return any(name in flag_values and flag_values[name].present for name in ("verbosity", "v"))


def quiet_python_logging(flag_values):
  """Python logging at WARNING unless `--verbosity`/`-v` was given."""
  if _verbosity_given(flag_values):
    return
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in NOISY_LOGGERS:
    logging.getLogger(name).setLevel(logging.WARNING)


def run(main, argv=None, flags_parser=None):
  """`absl.app.run(main)` on `argv` (default `sys.argv`) with flagfiles expanded.

  A missing or self-including flagfile exits with status 2 and one line.
  `flags_parser` is absl's hook for parsing the expanded arguments (default:
  absl's own).
  """
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  from tf_srkd import flagfiles  # pylint: disable=import-outside-toplevel

  try:
    argv = flagfiles.expand(sys.argv if argv is None else argv)
  except (flagfiles.FlagfileError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

  def quiet_main(args):
    quiet_python_logging(flags.FLAGS)
    return main(args)

  if flags_parser is None:
    app.run(quiet_main, argv=argv)
  else:
    app.run(quiet_main, argv=argv, flags_parser=flags_parser)

"""What every command-line entry point does before and around `absl.app.run`.

`prepare_environment()` (quiet defaults, an absolute `TFDS_DATA_DIR`) must run
before TensorFlow or MLflow is first imported (it sets environment variables they
read once); `run(main)` expands the
`--flagfile=` arguments (`flagfiles`), then lets absl parse and call `main`
with the Python logging of TensorFlow and TFDS at WARNING; `run_program` is
both, for a program whose flags are defined only when it runs. `fail` is the
one line and exit status 2 that every bad input gets; `failing_on` gives it to
the errors that mean bad input, and to a full disk, around a run. Every command
ends without CPython's last full garbage collection (`skip_the_final_collection`).

Getting the noise back: `TF_CPP_MIN_LOG_LEVEL=0` (TensorFlow's C++ INFO and
WARNING lines; a few lines it prints before its logging starts cannot be
switched off), `MLFLOW_LOGGING_LEVEL=INFO`, `--verbosity=0` (absl / Python
INFO lines, e.g. TFDS' dataset loading and checkpoint sharding).
"""

import atexit
import contextlib
import gc
import logging
import os
import sys

from tf_srkd.storage import disk_errors

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


def absolute_data_dir(environ=os.environ):
  """Makes a relative `TFDS_DATA_DIR` absolute, relative to the current directory.

  A relative value means the directory the user typed the command in. Resolved once,
  at start-up, it keeps that meaning for TFDS, error messages and every process the
  run starts (multi-worker workers, bench scripts), whatever their working directory.
  URLs (`gs://...`) and absolute paths are left as they are.
  """
  value = environ.get("TFDS_DATA_DIR")
  if value and "://" not in value:
    environ["TFDS_DATA_DIR"] = os.path.abspath(os.path.expanduser(value))


def prepare_environment(environ=os.environ):
  """`quiet_environment` and `absolute_data_dir`: what every entry point does first."""
  quiet_environment(environ)
  absolute_data_dir(environ)


def skip_the_final_collection():
  """Lets this process end without CPython's last full garbage collection.

  At exit CPython walks every object the process still holds, however much it ran;
  with TensorFlow and Keras imported that is over a million objects and ~1.3 s of
  every command's time, spent after its work is done and its files are written.
  `gc.freeze()` at exit moves them out of the collector's sight. `atexit` hooks still
  run (MLflow's flush, absl's logging) and every object is still released by
  reference counting; only cycles left for the collector go with the process.
  """
  atexit.register(gc.freeze)


def fail(message):
  """The one line every bad input gets (`error: <message>` on stderr), and exit status 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


@contextlib.contextmanager
def failing_on(*errors):
  """`fail`s on any of `errors` (bad input) or on a full disk (`disk_errors`).

  Any other exception propagates with its traceback: it is a bug, not input.
  """
  try:
    yield
  except errors as e:
    fail(e)
  except Exception as e:  # pylint: disable=broad-except
    message = disk_errors.disk_full_message(e)
    if message is None:
      raise
    fail(message)


def _verbosity_given(flag_values) -> bool:
  return any(name in flag_values and flag_values[name].present for name in ("verbosity", "v"))


class StageRetraceFilter(logging.Filter):
  """Drops TensorFlow's "frequent retracing" warning about Keras' step loop.

  TensorFlow counts traces per Python code object, not per function instance
  (`polymorphic_function._get_key_for_call_stats`), so every stage's fresh model
  tracing its own `multi_step_on_iterator` once adds up: a short multi-stage
  run with whole epochs per call (`--steps_per_execution=0`, ~2 calls a stage)
  crosses its 5-in-10 threshold without any function retracing. Other
  retracing warnings pass.
  """

  def filter(self, record):
    message = record.getMessage()
    return not ("triggered tf.function retracing" in message
                and "multi_step_on_iterator" in message)


def quiet_python_logging(flag_values):
  """Python logging at WARNING unless `--verbosity`/`-v` was given; TensorFlow's
  false retracing alarm about the step loop dropped (`StageRetraceFilter`)."""
  tf_logger = logging.getLogger("tensorflow")
  if not any(isinstance(f, StageRetraceFilter) for f in tf_logger.filters):
    tf_logger.addFilter(StageRetraceFilter())
  if _verbosity_given(flag_values):
    return
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in NOISY_LOGGERS:
    logging.getLogger(name).setLevel(logging.WARNING)


def parse_flags(argv):
  """absl's flag parsing, with every flag error as one line and exit status 2.

  absl's own handler prints a usage hint and exits 1; the documented status for
  bad input is 2, whichever layer notices it.
  """
  from absl import flags  # pylint: disable=import-outside-toplevel

  # `run` has already expanded the flagfiles (and refused self-inclusion).
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(" ".join(str(e).split()).removeprefix("ERROR:: "))


#: The arguments that print `help_text` instead of running (absl's --helpfull stays absl's).
HELP_ARGUMENTS = ("--help", "-help", "-h", "--helpshort", "-?")


def _wrap(text: str, indent: str, width: int = 88) -> str:
  import textwrap  # pylint: disable=import-outside-toplevel

  return textwrap.fill(" ".join(text.split()), width=width, initial_indent=indent,
                       subsequent_indent=indent)


def help_text(program: str, groups=None) -> str:
  """The program's own flags with their help and defaults.

  Args:
    program: the command's name, for the usage line.
    groups: ((heading, (flag names...)), ...); None: one group per module that
      defines flags, bar absl's, TensorFlow's, TFDS', Keras' and MLflow's.

  Returns:
    The text `--help` prints (`--helpfull` adds absl's and TensorFlow's own flags).
  """
  from absl import flags  # pylint: disable=import-outside-toplevel

  if groups is None:  # The flags this program defines, not its libraries' (absl, TF, ...).
    foreign = ("absl", "tensorflow", "tensorflow_datasets", "keras", "mlflow")
    names = [f.name for module, module_flags in flags.FLAGS.flags_by_module_dict().items()
             if module.split(".")[0] not in foreign for f in module_flags]
    groups = [("flags", tuple(dict.fromkeys(names)))]
  lines = [f"usage: {program} [--flagfile=FILE] [--flag=value ...]", "",
           "Flags (--helpfull also lists absl's and TensorFlow's):"]
  for heading, names in groups:
    lines += ["", f"{heading}:"]
    for name in names:
      if name not in flags.FLAGS:
        continue
      flag = flags.FLAGS[name]
      default = flag.default
      if isinstance(default, (list, tuple)):
        default = ",".join(str(v) for v in default)
      default = "" if default is None else f" (default: {default})"
      lines.append(f"  --{name}{default}")
      lines.append(_wrap(flag.help, "      "))
  return "\n".join(lines) + "\n"


def run(main, argv=None, help_groups=None):
  """`absl.app.run(main)` on `argv` (default `sys.argv`) with flagfiles expanded.

  A missing or self-including flagfile, an unknown flag or a value absl cannot
  parse exits with status 2 and one line (`parse_flags`). `--help` prints the
  program's own flags (`help_text`, grouped by `help_groups`) and exits 0.
  """
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  from tf_srkd.cli import flagfiles  # pylint: disable=import-outside-toplevel

  skip_the_final_collection()
  try:
    argv = flagfiles.expand(sys.argv if argv is None else argv)
  except (flagfiles.FlagfileError, OSError) as e:
    fail(e)
  if any(arg in HELP_ARGUMENTS for arg in argv[1:]):
    sys.stdout.write(help_text(os.path.basename(argv[0]), help_groups))
    sys.exit(0)

  def quiet_main(args):
    quiet_python_logging(flags.FLAGS)
    return main(args)

  app.run(quiet_main, argv=argv, flags_parser=parse_flags)


def run_program(main, define_flags):
  """A console script whose flags are defined only when it runs (not on import).

  Prepares the environment first (the program has not imported TensorFlow or
  MLflow yet), defines the flags with `define_flags()`, then `run(main)`.
  """
  prepare_environment()
  define_flags()
  run(main)

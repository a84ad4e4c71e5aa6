"""The package's exceptions, one type per kind of failure, at the bottom of the package.

Every type here means the run cannot go on as asked, for a reason its message
states in one line, naming the flag, file, directory or address at fault; the
entry points turn each into one `error:` line and exit status 2 (a bug is any
other exception, with its traceback). They live here, imported by everything
and importing nothing, so that every room can raise and catch them without
depending on the room that defines the check. Each is also importable from the
module that raises it (e.g. `tf_srkd.data.arrays.DataError`).
"""


class ConfigError(ValueError):
  """Bad input: a flag, a file or a setting the run cannot use, and what was expected."""


class FlagfileError(ValueError):
  """A flagfile that cannot be found or includes itself; the message says which."""


class DatasetError(ValueError):
  """A dataset that cannot be used as configured; the message names the flag or file."""


class DataError(RuntimeError):
  """A dataset could not be loaded as configured (missing, not prepared, unreadable)."""


class InputContractError(ValueError):
  """A pre-trained model is at chance under both pixel scalings: it cannot be used."""


class RunDirBusy(RuntimeError):
  """Another process holds the run directory's lock; the message names it and its pid."""


class StoreError(RuntimeError):
  """The tracking store cannot be used; the message is one line naming the URI."""


class TrackingError(RuntimeError):
  """MLflow cannot be used as configured; raised before any training."""


class ReportError(RuntimeError):
  """Tracked runs cannot be read (unreachable store, unknown experiment or run, mixed runs)."""


class ExportError(ValueError):
  """Bad export input or a failed check of an exported model; the message says what and where."""

"""The one error type of the export package."""


class ExportError(ValueError):
  """Bad export input or a failed check; the message says what and where."""

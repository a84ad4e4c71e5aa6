"""The exception every bad input raises, at the bottom of the package.

`ConfigError` means bad input: a flag, a file or a setting the run cannot use. Its
message names the culprit and what was expected; the entry points turn it into one
`error:` line and exit status 2. It lives here, imported by everything and importing
nothing, so that checking a file (`storage.checked_reads`) or a model source (`models.sources`)
does not depend on the configuration module that also calls them.
"""


class ConfigError(ValueError):
  """Bad input; the message names the flag or file and what was expected."""

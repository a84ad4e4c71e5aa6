"""The one helper behind the package's registries (datasets, models, modes).

A registry is a plain dict from a name to a frozen spec that carries that name.
Keeping the lookup in one place keeps the error message the same everywhere.
"""


def by_name(*specs) -> dict:
  """{spec.name: spec} in the given order.

  Raises:
    ValueError: if two specs share a name.
  """
  table = {}
  for spec in specs:
    if spec.name in table:
      raise ValueError(f"{spec.name!r} is registered twice")
    table[spec.name] = spec
  return table


def lookup(table: dict, name: str, kind: str):
  """Returns `table[name]`.

  Args:
    table: a registry made by `by_name`.
    name: the name to look up.
    kind: what the registry holds ("dataset", "model", "mode"), for the message.

  Raises:
    KeyError: if `name` is not registered; the message lists the known names.
  """
  if name not in table:
    raise KeyError(f"unknown {kind} {name!r}; expected one of {sorted(table)}")
  return table[name]

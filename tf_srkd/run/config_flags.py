"""`Config` settings as command-line flags, and `Config`s as flagfiles.

Every leaf setting of `Config` (`config_fields.flag_fields()`) is a flag of the
same name (`tf_srkd.main` defines them from `flag_specs()`); a run's `flags.txt`
is `to_flagfile(config)`, which `from_flagfile` reads back.
"""

import dataclasses
import math
from typing import Optional, Tuple

from tf_srkd.run import config_fields
from tf_srkd.run.config import Config
from tf_srkd.errors import ConfigError


def to_flagfile(config: Config) -> str:
  """Renders `config` in absl flagfile format (one `--flag=value` per line)."""
  lines = []
  values = config.settings()
  for _, field in config_fields.flag_fields():
    value = values[field.name]
    if value is None:
      continue
    if isinstance(value, bool):
      lines.append(f"--{field.name}" if value else f"--no{field.name}")
    elif isinstance(value, tuple) and field.metadata.get("kind") == "multi":
      # One line per value. A repeated flag adds to what a flagfile gave (absl), so the
      # default is left out: a flag on the command line after this file then replaces it.
      if value != field.default:
        lines.extend(f"--{field.name}={v}" for v in value)
    elif isinstance(value, tuple):
      lines.append(f"--{field.name}={','.join(map(str, value))}")
    else:
      lines.append(f"--{field.name}={value}")
  return "\n".join(lines) + "\n"


#: The absl flag type of each field type (`kind="rate"` fields are strings: 'inf').
_KINDS = {str: "string", int: "integer", float: "float", bool: "bool",
          Tuple[str, ...]: "list", Tuple[float, ...]: "floats", Optional[int]: "integer",
          Optional[str]: "string"}


@dataclasses.dataclass(frozen=True)
class FlagSpec:
  """How one `Config` setting appears on the command line.

  Attributes:
    name: the flag (= field) name.
    kind: string | integer | float | bool | list (comma-separated) | floats (a comma
      list of numbers) | multi (a repeatable flag) | enum | rate (a float, or 'inf').
    default: the flag's default, in the flag's own type.
    help: the help text.
    choices: the allowed values of an enum flag, else None.
  """

  name: str
  kind: str
  default: object
  help: str
  choices: Optional[Tuple[str, ...]] = None


#: The `--help` title of each settings group (None: the run-level settings).
_HELP_TITLES = {"data": "data", "models": "models", "gating": "gate", "training": "training",
                None: "run and outputs", "tracking": "tracking", "exporting": "export"}

#: `tf-srkd --help`: the flags by concern, in the order a user meets them, drawn from
#: `Config`'s groups so that every setting is in exactly one.
HELP_GROUPS = tuple(
    (title, tuple(field.name for g, field in config_fields.flag_fields() if g == group))
    for group, title in _HELP_TITLES.items())


def flag_specs() -> Tuple[FlagSpec, ...]:
  """One `FlagSpec` per setting, in `config_fields.flag_fields()` order."""
  specs = []
  for _, field in config_fields.flag_fields():
    meta = field.metadata
    kind = "enum" if meta.get("choices") else meta.get("kind") or _KINDS[field.type]
    default = meta.get("flag_default", field.default)
    if kind == "rate":
      default = str(default)
    elif kind in ("list", "multi"):
      default = list(default)
    elif kind == "floats":
      default = [str(v) for v in default]
    specs.append(FlagSpec(field.name, kind, default, meta["help"], meta.get("choices")))
  return tuple(specs)


def parse_rate(flag: str, text: str) -> float:
  """A self-regulation rate: a number, or 'inf' (conventional training).

  Raises:
    ConfigError: `text` is neither.
  """
  try:
    return math.inf if text.strip().lower() in ("inf", "infinity") else float(text)
  except ValueError as e:
    raise ConfigError(f"--{flag}={text}: expected a number >= 0 or 'inf'") from e


def _number(flag: str, text) -> float:
  try:
    return float(text)
  except ValueError as e:
    raise ConfigError(f"--{flag}={text}: expected a comma list of numbers") from e


def from_flag_values(values: dict) -> Config:
  """The `Config` for parsed flag values ({flag name: value in the flag's type}).

  Rates are parsed, lists become tuples; missing names keep the field default.

  Raises:
    ConfigError: a rate that is not a number or 'inf'.
  """
  fields = {}
  for spec in flag_specs():
    if spec.name not in values:
      continue
    value = values[spec.name]
    if spec.kind == "rate" and isinstance(value, str):
      value = parse_rate(spec.name, value)
    elif spec.kind in ("list", "multi") and value is not None:
      value = tuple(value)
    elif spec.kind == "floats" and value is not None:
      value = tuple(_number(spec.name, v) for v in value)
    fields[spec.name] = value
  return Config.of(**fields)


def from_flagfile(text: str) -> Config:
  """The `Config` a flagfile written by `to_flagfile` describes (its inverse).

  Lines for flags that `Config` does not have (and comments) are ignored.
  """
  specs = {spec.name: spec for spec in flag_specs()}
  comma_list = lambda v: [x for x in v.split(",") if x]
  parsers = {"integer": int, "float": float, "string": str, "enum": str, "rate": str,
             "list": comma_list, "floats": comma_list, "multi": lambda v: [v]}
  values = {}
  for line in text.splitlines():
    line = line.strip()
    if not line.startswith("--"):
      continue
    name, has_value, value = line[2:].partition("=")
    kind = specs[name].kind if name in specs else None
    if has_value and kind == "multi":  # Repeated lines add up, as on the command line.
      values.setdefault(name, []).extend(parsers[kind](value))
    elif has_value and kind not in (None, "bool"):
      values[name] = parsers[kind](value)
    elif not has_value and kind == "bool":
      values[name] = True
    elif not has_value and name.startswith("no") and name[2:] in specs:
      values[name[2:]] = False  # --noflag
  return from_flag_values(values)


def read_flagfile(path: str) -> Config:
  """The `Config` of a run from its `flags.txt`."""
  with open(path, encoding="utf-8") as f:
    return from_flagfile(f.read())

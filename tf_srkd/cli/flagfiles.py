"""Where `--flagfile=` arguments point, so experiments run from any directory.

absl resolves a `--flagfile` path, and every `--flagfile=` line inside one,
relative to the current directory; the experiments ship inside the package
(`tf_srkd/flags/`), so the entry points expand flagfiles themselves, before
absl parses the arguments. The rule, for each `--flagfile=VALUE`:

1. inside a flagfile: VALUE relative to the directory of the including file;
2. on the command line: VALUE as a path (relative to the current directory);
3. a shipped experiment: `mnist`, `mnist.flags` and `flags/mnist.flags` all
   name `tf_srkd/flags/mnist.flags`;
4. inside a flagfile only, as a last resort: VALUE relative to the current
   directory (how absl itself reads it).

The shipped files include each other as `flags/<name>.flags`: step 3 finds
them from anywhere, and a plain absl parse from the repository root (whose
`flags/` links to `tf_srkd/flags/`) still works. A flagfile that includes
itself, directly or through others, is an error.
"""

import os
from typing import List, Optional, Sequence
from tf_srkd.errors import FlagfileError  # pylint: disable=unused-import  (raised here; see errors)

#: The directory of the shipped experiments.
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "flags")
_PREFIXES = ("--flagfile=", "-flagfile=")


def shipped_experiments() -> List[str]:
  """The names of the shipped experiments (`mnist`, `quick`, ...)."""
  return sorted(f[:-len(".flags")] for f in os.listdir(SHIPPED_DIR) if f.endswith(".flags"))


def _shipped(value: str) -> Optional[str]:
  """The shipped flagfile `value` names (`mnist`, `mnist.flags`, `flags/mnist.flags`)."""
  name = value[len("flags/"):] if value.startswith("flags/") else value
  name = name if name.endswith(".flags") else name + ".flags"
  path = os.path.join(SHIPPED_DIR, name)
  return path if os.sep not in name and os.path.isfile(path) else None


def resolve(value: str, including_dir: Optional[str] = None) -> str:
  """The file a `--flagfile=value` means (see the module docstring for the rule).

  Args:
    value: the flag's value.
    including_dir: the directory of the flagfile that holds the line; None on
      the command line.

  Returns:
    The absolute path, symlinks resolved.

  Raises:
    FlagfileError: nothing matches.
  """
  expanded = os.path.expanduser(value)
  candidates = []
  if including_dir is not None:
    candidates.append(os.path.join(including_dir, expanded))
  else:
    candidates.append(expanded)
  candidates.append(_shipped(value))
  if including_dir is not None:
    candidates.append(expanded)
  for candidate in candidates:
    if candidate and os.path.isfile(candidate):
      return os.path.realpath(candidate)  # One name per file, for the cycle check.
  where = f" (included from {including_dir})" if including_dir is not None else ""
  raise FlagfileError(f"--flagfile={value}{where}: no such file, and not a shipped experiment "
                      f"(one of {', '.join(shipped_experiments())})")


def _flagfile_value(arg: str) -> Optional[str]:
  for prefix in _PREFIXES:
    if arg.startswith(prefix):
      return arg[len(prefix):]
  return None


def _read(path: str, chain: Sequence[str]) -> List[str]:
  """The arguments of flagfile `path`, nested flagfiles expanded in place."""
  if path in chain:
    cycle = " -> ".join(os.path.basename(p) for p in (*chain[chain.index(path):], path))
    raise FlagfileError(f"--flagfile={path} includes itself ({cycle})")
  args = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith(("#", "//")):  # absl's comment syntax.
        continue
      value = _flagfile_value(line)
      if value is None:
        args.append(line)
      else:
        args += _read(resolve(value, os.path.dirname(path)), (*chain, path))
  return args


def expand(argv: Sequence[str]) -> List[str]:
  """`argv` with every `--flagfile=` replaced by the arguments it holds.

  Arguments keep their order, so flags after a flagfile still override it;
  nothing after a `--` terminator is touched.

  Raises:
    FlagfileError: a flagfile is missing or includes itself.
  """
  out = list(argv[:1])
  rest = list(argv[1:])
  while rest:
    arg = rest.pop(0)
    if arg == "--":
      out += [arg, *rest]
      break
    value = _flagfile_value(arg)
    out += [arg] if value is None else _read(resolve(value), ())
  return out

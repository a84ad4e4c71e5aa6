"""The Bazel BUILD files are in sync with the tree (fast; no Bazel needed).

Every module under tf_srkd/ and export/ is in a py_library's srcs in /BUILD, every
tests/<room>/test_*.py has a `pytest_test` in tests/BUILD (every other file under
tests/ in some srcs there), nothing listed is missing on disk, every CLI target names a module that
exists, and every target's deps provide what its sources import (the rooms' deps are
the package's walls, so a room importing above itself fails here). The BUILD files are read by exec-ing
them with stand-ins that record each rule call (Starlark BUILD syntax is a subset
of Python's).
"""

import ast
import builtins
import fnmatch
import os

import pytest

# Under `bazel test` this file is a symlink in the runfiles tree: check the real tree.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
LIBRARY_DIRS = ("tf_srkd", "export")
#: The repository's own top-level packages (everything else comes from the environment).
REPO_PACKAGES = LIBRARY_DIRS + ("tests",)


class _BuildFile(dict):
  """Namespace for exec-ing one BUILD file: any unknown name is a rule that records its call."""

  def __init__(self, package):
    super().__init__(load=lambda *args: None, glob=self._glob)
    self.package = package
    self.calls = []  # (rule name, kwargs)

  def __missing__(self, name):
    if hasattr(builtins, name):
      return getattr(builtins, name)
    return lambda *args, **kwargs: self.calls.append((name, kwargs))

  def _glob(self, include, exclude=(), **unused):
    base = os.path.join(ROOT, self.package)
    found = set()
    for dirpath, _, files in os.walk(base):
      for f in files:
        rel = os.path.relpath(os.path.join(dirpath, f), base).replace(os.sep, "/")
        if (any(fnmatch.fnmatch(rel, p) for p in include)
            and not any(fnmatch.fnmatch(rel, p) for p in exclude)):
          found.add(rel)
    return sorted(found)

  def rules(self, *kinds):
    return [kwargs for kind, kwargs in self.calls if kind in kinds]

  def path(self, src):
    """Repository-relative path of a source label written in this package."""
    if src.startswith("//"):
      package, _, name = src[2:].partition(":")
      return f"{package}/{name}" if package else name
    return f"{self.package}/{src.lstrip(':')}" if self.package else src.lstrip(":")


def read_build(package):
  path = os.path.join(ROOT, package, "BUILD")
  build = _BuildFile(package)
  with open(path) as f:
    exec(compile(f.read(), path, "exec"), {"__builtins__": {}}, build)  # pylint: disable=exec-used
  return build


def python_files(directory):
  found = []
  for dirpath, dirnames, files in os.walk(os.path.join(ROOT, directory)):
    dirnames[:] = [d for d in dirnames if d != "__pycache__"]
    found += [os.path.relpath(os.path.join(dirpath, f), ROOT).replace(os.sep, "/")
              for f in files if f.endswith(".py")]
  return sorted(found)


def exists(path):
  return os.path.isfile(os.path.join(ROOT, path))


def test_every_library_module_is_in_a_py_library():
  build = read_build("")
  listed = {build.path(s) for lib in build.rules("py_library") for s in lib.get("srcs", [])}
  missing = [f for d in LIBRARY_DIRS for f in python_files(d) if f not in listed]
  assert not missing, (f"not in any py_library's srcs in BUILD (add them to the srcs of "
                       f"their room's target, e.g. //:core): {', '.join(missing)}")
  stale = sorted(f for f in listed if not exists(f))
  assert not stale, f"listed in BUILD's py_library srcs but not on disk: {', '.join(stale)}"


def test_every_test_file_has_a_py_test():
  build = read_build("tests")
  covered = {build.path(t["name"] + ".py") for t in build.rules("pytest_test")}
  covered |= {build.path(s) for t in build.rules("py_test") for s in t.get("srcs", [])}
  test_files = [f for f in python_files("tests")
                if fnmatch.fnmatch(os.path.basename(f), "test_*.py")]
  missing = [f for f in test_files if f not in covered]
  assert not missing, ("no py_test in tests/BUILD for: " + ", ".join(missing) + "; add "
                       + " ".join(f'pytest_test(name = "{os.path.basename(f)[:-3]}")'
                                  for f in missing))
  stale = sorted(f for f in covered if not exists(f))
  assert not stale, f"tests/BUILD has a py_test for a file not on disk: {', '.join(stale)}"


def test_test_helpers_are_in_tests_build():
  """conftest.py and any helper module the tests import must be in the runfiles."""
  build = read_build("tests")
  listed = {build.path(s) for kind, rule in build.calls for s in rule.get("srcs", [])}
  for t in build.rules("pytest_test"):  # see bazel/defs.bzl
    listed |= {build.path(t["name"] + ".py"), build.path("pytest_runner.py")}
  missing = [f for f in python_files("tests") if f not in listed]
  assert not missing, ("not in any srcs in tests/BUILD (add them to the srcs of "
                       f"//tests:support): {', '.join(missing)}")


@pytest.mark.parametrize("name", ["main", "report", "tflite"])
def test_cli_targets_name_existing_modules(name):
  build = read_build("")
  binaries = {b["name"]: b["module"] for b in build.rules("py_module_binary")}
  assert name in binaries, f"BUILD has no py_module_binary //:{name}"
  module = binaries[name]
  path = module.replace(".", "/") + ".py"
  assert exists(path), f"//:{name} runs `python -m {module}`, but {path} does not exist"


# -- deps ----------------------------------------------------------------------------


def _label(build, dep):
  """`//package:name` for a dep written in `build`'s package."""
  return dep if dep.startswith("//") else f"//{build.package}:{dep.lstrip(':')}"


def py_targets():
  """{label: (kind, repository-relative srcs, dep labels)} of every Python target.

  A py_module_binary's source is the module it runs; a pytest_test's is its
  test file (bazel/defs.bzl adds pytest_runner.py and the :support dep).
  """
  targets = {}
  for package in ("", "tests"):
    build = read_build(package)
    for kind, rule in build.calls:
      deps = [_label(build, d) for d in rule.get("deps", [])]
      if kind == "py_library":
        srcs = [build.path(s) for s in rule.get("srcs", [])]
      elif kind == "py_module_binary":
        srcs = [rule["module"].replace(".", "/") + ".py"]
      elif kind == "pytest_test":
        srcs, deps = [build.path(rule["name"] + ".py")], [_label(build, ":support")] + deps
      else:
        continue
      targets[_label(build, ":" + rule["name"])] = (kind, srcs, deps)
  return targets


def repo_imports(path):
  """The repository files `path` imports (anywhere in the file, lazily or not)."""
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.add(node.module)
      names |= {f"{node.module}.{alias.name}" for alias in node.names}
  found = set()
  for name in names:
    if name.split(".")[0] not in REPO_PACKAGES:
      continue
    base = name.replace(".", "/")
    found |= {c for c in (base + ".py", base + "/__init__.py") if exists(c)}
  return found


def test_every_import_is_in_the_targets_srcs_or_deps():
  targets = py_targets()
  owner = {src: label for label, (kind, srcs, _) in targets.items() if kind == "py_library"
           for src in srcs}

  def closure(label, seen):
    if label not in seen:
      seen.add(label)
      for dep in targets.get(label, (None, (), ()))[2]:
        closure(dep, seen)
    return seen

  problems = []
  for label, (kind, srcs, deps) in sorted(targets.items()):
    problems += [f"{label}: no target {d}" for d in deps if d not in targets]
    reachable = closure(label, set())
    for src in srcs:
      # A binary runs its module; a library's or a test's sources import modules.
      needed = {src} if kind == "py_module_binary" else repo_imports(src)
      problems += [f"{label}: {src} needs {path} (in {owner.get(path, 'no library')}), which "
                   "is not in its srcs or deps" for path in sorted(needed)
                   if owner.get(path) not in reachable]
  assert not problems, "\n".join(problems)


def test_only_the_command_line_imports_export():
  """export/ builds on the library; of tf_srkd/, only the command line (tf_srkd/cli/) uses it."""
  for path in python_files("tf_srkd"):
    if path.startswith("tf_srkd/cli/"):
      continue
    bad = sorted(p for p in repo_imports(path) if p.startswith("export/"))
    assert not bad, f"{path} imports {bad}: only tf_srkd/cli/ may depend on export/"


def test_a_wall_broken_in_a_room_is_a_missing_dep():
  """The rooms' deps are the walls: a core module importing run has no dep to reach it."""
  targets = py_targets()
  assert ":run" not in " ".join(targets["//:core"][2])
  assert "//:export" not in targets["//:run"][2] and "//:mlflow_tracking" not in targets["//:run"][2]

"""The package's import graph has no circles, lazy (function-level) imports included."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("tf_srkd", "export")


def _modules():
  """{dotted module name: path} of every module of the packages."""
  found = {}
  for package in PACKAGES:
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
          found[dotted.removesuffix(".__init__")] = path
  return found


def import_graph():
  """{module: the package modules it imports anywhere in its file}."""
  modules = _modules()
  graph = {m: set() for m in modules}
  for module, path in modules.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        graph[module].update(a.name for a in node.names if a.name in modules)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for alias in node.names:
          full = f"{node.module}.{alias.name}"
          if full in modules:
            graph[module].add(full)
          elif node.module in modules:
            graph[module].add(node.module)
    graph[module].discard(module)
  return graph


def cycles(graph):
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_cycle_finder_finds_a_planted_circle():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circles():
  graph = import_graph()
  assert "tf_srkd.run.config" in graph and graph["tf_srkd.run.config"]  # The scan sees imports.
  assert cycles(graph) == []


def test_the_data_and_error_layers_import_nothing_above_them():
  graph = import_graph()
  assert graph["tf_srkd.errors"] == set()
  assert graph["tf_srkd.data.specs"] <= {"tf_srkd.registry", "tf_srkd.errors"}


#: The rooms of `tf_srkd`, each allowed to import the rooms listed (plus itself and
#: the package's `errors` and `registry`). Imports point down only.
ROOMS = {
    "storage": set(),
    "core": {"storage"},
    "data": {"storage"},
    "models": {"storage", "core", "data"},
    "tracking": {"storage"},
    "run": {"storage", "core", "data", "models", "tracking"},
    "reporting": {"storage", "tracking"},
    "cli": {"storage", "core", "data", "models", "tracking", "run", "reporting", "api", "export"},
    "api": {"core", "data", "models"},
    "export": {"storage", "core", "data", "models", "tracking", "run"},
}
FOUNDATION = {"tf_srkd", "tf_srkd.errors", "tf_srkd.registry"}
#: `python -m` names kept for users; they only forward to the command in `cli`.
FORWARDERS = {"tf_srkd.main", "export.tflite"}


def room_of(module):
  """The room of a dotted module name: 'core', 'export', 'api', ...; None for the foundation."""
  if module in FOUNDATION:
    return None
  parts = module.split(".")
  if parts[0] == "export":
    return "export"
  return parts[1]


def test_room_of_names_the_room():
  assert room_of("tf_srkd.core.gates.base") == "core"
  assert room_of("tf_srkd.api") == "api"
  assert room_of("export.qat") == "export"
  assert room_of("tf_srkd.errors") is None


def wall_breaks(graph):
  """'a -> b' for every import from one room into a room it may not import."""
  found = []
  for module, imported in sorted(graph.items()):
    if module in FORWARDERS:
      continue
    here = room_of(module)
    for target in sorted(imported):
      there = room_of(target)
      if there is None or there == here:
        continue
      if here is None or there not in ROOMS[here]:
        found.append(f"{module} -> {target}")
  return found


def test_the_wall_checker_finds_a_planted_break():
  assert wall_breaks({"tf_srkd.core.steps": {"tf_srkd.run.config"}}) == [
      "tf_srkd.core.steps -> tf_srkd.run.config"]
  assert wall_breaks({"tf_srkd.errors": {"tf_srkd.core.steps"}}) == [
      "tf_srkd.errors -> tf_srkd.core.steps"]
  assert wall_breaks({"tf_srkd.run.stages": {"tf_srkd.core.steps", "tf_srkd.errors"}}) == []


def test_the_rooms_exist_and_every_module_is_in_one():
  graph = import_graph()
  rooms = {room_of(m) for m in graph if m not in FORWARDERS} - {None}
  assert rooms == set(ROOMS), rooms ^ set(ROOMS)
  paths = _modules()
  loose = sorted(m for m in graph if m.startswith("tf_srkd.") and m.count(".") == 1
                 and not paths[m].endswith("__init__.py")
                 and m not in FOUNDATION | FORWARDERS | {"tf_srkd.api"})
  assert not loose, f"modules outside every room: {loose}"


def test_imports_point_down_only():
  assert wall_breaks(import_graph()) == []


def test_nothing_imports_the_command_line():
  graph = import_graph()
  for module, imported in graph.items():
    if room_of(module) != "cli" and module not in FORWARDERS:
      assert not {m for m in imported if room_of(m) == "cli"}, module


def _imports_mlflow(module):
  path = _modules()[module]
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    names = ([a.name for a in node.names] if isinstance(node, ast.Import)
             else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
    if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
      return True
  return False


def test_the_run_logs_through_the_tracker_interface_only():
  """`run` and everything below it never import MLflow; the command line injects it."""
  graph = import_graph()
  below = {m for m in graph if room_of(m) in ("run", "core", "data", "models", "storage", "api")}
  assert "tf_srkd.run.pipeline" in below
  for module in sorted(below):
    assert not _imports_mlflow(module), module
    assert not any(m.startswith("tf_srkd.tracking.mlflow_") for m in graph[module]), module
  assert _imports_mlflow("tf_srkd.tracking.mlflow_tracking")  # The scan sees MLflow imports.


def test_run_sees_only_the_tracker_interface_of_tracking():
  graph = import_graph()
  for module, imported in sorted(graph.items()):
    if room_of(module) == "run":
      tracking = {m for m in imported if room_of(m) == "tracking"}
      assert tracking <= {"tf_srkd.tracking", "tf_srkd.tracking.base"}, (module, tracking)

"""The package's import graph has no circles, lazy (function-level) imports included."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
  assert "tf_srkd.config" in graph and graph["tf_srkd.config"]  # The scan sees imports.
  assert cycles(graph) == []


def test_the_data_and_error_layers_import_nothing_above_them():
  graph = import_graph()
  assert graph["tf_srkd.errors"] == set()
  assert graph["tf_srkd.dataset_specs"] <= {"tf_srkd.registry"}


#: The entry points: they read flags, build the tracker and call the library.
ENTRY_POINTS = {"tf_srkd.main", "tf_srkd.subset", "tf_srkd.report",
                "export.tflite", "export.qat"}
#: The run: data, models, the gated steps and the stages. They log through the tracker
#: interface they are handed (`tracking`), never through MLflow itself.
RUN_MODULES = {"tf_srkd.pipeline", "tf_srkd.stages", "tf_srkd.stage_health", "tf_srkd.training",
               "tf_srkd.distillation", "tf_srkd.steps", "tf_srkd.callbacks", "tf_srkd.resume",
               "tf_srkd.regulation", "tf_srkd.losses", "tf_srkd.modes", "tf_srkd.chance",
               "tf_srkd.precise_bn", "tf_srkd.input_contract", "tf_srkd.data",
               "tf_srkd.datasets", "tf_srkd.dataset_specs", "tf_srkd.streaming",
               "tf_srkd.model_sources", "tf_srkd.models", "tf_srkd.config", "tf_srkd.api"}


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


def test_the_walls_hold():
  graph = import_graph()
  assert RUN_MODULES | ENTRY_POINTS <= set(graph), (RUN_MODULES | ENTRY_POINTS) - set(graph)
  for module, imported in graph.items():
    # Nothing but another entry point imports an entry point.
    assert not (imported & ENTRY_POINTS) or module in ENTRY_POINTS, (module, imported)
  for module in RUN_MODULES:
    mlflow_modules = {m for m in graph[module] if m.startswith("tf_srkd.mlflow_")}
    assert not mlflow_modules and not _imports_mlflow(module), module
    assert not any(m.startswith("export") for m in graph[module]), module

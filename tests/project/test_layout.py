"""The tests mirror the package: one folder per room, and every module has a test file."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(ROOT, "tests")
ROOMS = ("core", "data", "models", "storage", "tracking", "run", "reporting", "cli")
#: Test folders beside the rooms: the public API, export/, whole runs (the slow tier),
#: the repository itself, and helpers.
OTHER_FOLDERS = ("api", "export", "e2e", "project", "support")
#: Modules exercised only through another module's tests or a whole run, with the reason.
TESTED_ELSEWHERE = {
    "tf_srkd.main": "the `python -m tf_srkd.main` forwarder: every CLI test runs it",
    "tf_srkd.api": "the public names are tested as `tf_srkd.X` (tests/api/)",
    "tf_srkd.cli.export_tflite": "run as `python -m export.tflite` (tests/export/, tests/cli/)",
    "tf_srkd.cli.strategy": "chosen by the CLI runs of tests/e2e/test_distribute.py",
    "tf_srkd.core.distributed": "exact replica sums, run by tests/e2e/test_distribute.py",
    "tf_srkd.core.steps": "the gated step, through tests/core/test_training.py",
    "tf_srkd.models.app_preprocessing": "through tests/models/test_sources.py (applications)",
    "tf_srkd.reporting.markdown": "through tests/reporting/test_report.py",
    "tf_srkd.run.stage_health": "through tests/e2e/test_first_hour.py",
    "tf_srkd.tracking.mlflow_registry": "through tests/tracking/test_mlflow_tracking.py",
    "export.convert": "through tests/export/test_export.py",
    "export.mlflow_log": "through tests/export/test_export.py",
    "export.sidecar": "through tests/export/test_export.py",
}


def _library_modules():
  found = []
  for package in ("tf_srkd", "export"):
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
      for name in files:
        if name.endswith(".py") and name != "__init__.py":
          path = os.path.relpath(os.path.join(folder, name), ROOT)
          found.append(path[:-3].replace(os.sep, "."))
  return sorted(found)


def _test_files():
  for folder, _, files in os.walk(TESTS):
    for name in files:
      if name.startswith("test_") and name.endswith(".py"):
        yield os.path.join(folder, name)


def _imported_by_tests():
  names = set()
  for path in _test_files():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module:
        names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
  return names


def test_every_test_file_is_in_a_room_folder():
  misplaced = [os.path.relpath(p, TESTS) for p in _test_files()
               if os.path.relpath(p, TESTS).split(os.sep)[0] not in ROOMS + OTHER_FOLDERS]
  assert not misplaced, f"test files outside tests/<room>/: {misplaced}"


def test_every_room_has_a_test_folder():
  for room in ROOMS:
    assert os.path.isdir(os.path.join(TESTS, room)), room


def test_every_library_module_has_a_test_file_that_imports_it():
  imported = _imported_by_tests()
  untested = [m for m in _library_modules() if m not in imported and m not in TESTED_ELSEWHERE]
  assert not untested, f"no test file imports: {untested} (add tests/<room>/test_<module>.py)"
  stale = sorted(m for m in TESTED_ELSEWHERE if m not in _library_modules())
  assert not stale, f"TESTED_ELSEWHERE names modules that do not exist: {stale}"

"""Entry point of every py_test in tests/BUILD: run pytest on one test file.

Bazel runs `pytest_runner.py tests/<room>/test_x.py` from the runfiles tree (see
bazel/defs.bzl: pytest_test). Extra pytest options come from PYTEST_ADDOPTS
(`bazel test --config=fast` sets `-m 'not slow'`) and `--test_filter` (as `-k`).
"""

import os
import sys

import pytest


def main(argv):
  args = list(argv) + ["-q"]
  selected = "-m" in os.environ.get("PYTEST_ADDOPTS", "")
  if os.environ.get("TESTBRIDGE_TEST_ONLY"):  # bazel test --test_filter=...
    args += ["-k", os.environ["TESTBRIDGE_TEST_ONLY"]]
    selected = True
  if os.environ.get("XML_OUTPUT_FILE"):  # per-test results for Bazel's test.xml
    args += ["--junitxml", os.environ["XML_OUTPUT_FILE"]]
  code = pytest.main(args)
  if code == pytest.ExitCode.NO_TESTS_COLLECTED and selected:
    print(f"pytest_runner: every test in {argv} was deselected", file=sys.stderr)
    code = pytest.ExitCode.OK
  return int(code)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

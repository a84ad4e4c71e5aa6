"""Offline stand-in for @rules_python//python:defs.bzl: Bazel 4's native Python rules.

The interpreter is Bazel's autodetecting toolchain (`python3` on PATH), so third-party
packages come from that environment (`pip install -r requirements.txt`).
"""

py_binary = native.py_binary
py_library = native.py_library
py_runtime = native.py_runtime
py_test = native.py_test

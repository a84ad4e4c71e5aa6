"""Shared test setup: quiet TensorFlow, repo root on sys.path, the shared TFDS dir."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
SHARED_TFDS = os.path.join(os.path.dirname(ROOT), "shared", "tfds")
if not os.environ.get("TFDS_DATA_DIR") and os.path.isdir(SHARED_TFDS):
  os.environ["TFDS_DATA_DIR"] = SHARED_TFDS


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: takes minutes (end-to-end runs, installs); `pytest -m \"not slow\"` skips it")

"""A live `mlflow server` for tests: 127.0.0.1, a free port, sqlite backend, own process group."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

SERVER_START_TIMEOUT_S = 240


def free_port():
  """A TCP port on 127.0.0.1 that is free now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """`mlflow server` on 127.0.0.1:<free port>, sqlite backend, in its own process group.

  A second `Server` on the same `tmp` serves the same store (on another port, or
  on `port`: the first one's, once it is stopped).
  """

  def __init__(self, tmp, port=None):
    self.port = port or free_port()
    self.uri = f"http://127.0.0.1:{self.port}"
    self.log_path = os.path.join(tmp, "server.log")
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(self.log_path, "wb") as log:
      self.process = subprocess.Popen(
          [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{tmp}/server.db",
           "--default-artifact-root", os.path.join(tmp, "artifacts"),
           "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp, env=env,
          start_new_session=True)

  def log_tail(self):
    with open(self.log_path, encoding="utf-8", errors="replace") as f:
      return f.read()[-3000:]

  def wait_ready(self, timeout_s=SERVER_START_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        pytest.fail(f"mlflow server exited with {self.process.returncode}:\n{self.log_tail()}")
      try:
        with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
          if response.status == 200:
            return
      except OSError:
        pass
      time.sleep(1)
    pytest.fail(f"mlflow server did not answer within {timeout_s} s:\n{self.log_tail()}")

  def stop(self):
    if self.process.poll() is None:
      try:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=20)
      except subprocess.TimeoutExpired:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)
      except ProcessLookupError:
        pass
    try:  # Children (uvicorn) that outlived the parent.
      os.killpg(self.process.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass

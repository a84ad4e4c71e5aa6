"""A two-worker TF_CONFIG cluster on 127.0.0.1 for the MultiWorkerMirroredStrategy tests."""

import json
import os
import socket
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def free_port():
  """A TCP port free on 127.0.0.1 right now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_two_workers(command_for, timeout=420):
  """Runs `command_for(index)` as the two workers of a 127.0.0.1 TF_CONFIG cluster.

  Both are killed if anything fails; each must exit 0. Returns their outputs.
  """
  cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
  procs = []
  try:
    for index in range(2):
      env = dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster,
                                            "task": {"type": "worker", "index": index}}))
      procs.append(subprocess.Popen(command_for(index), cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs

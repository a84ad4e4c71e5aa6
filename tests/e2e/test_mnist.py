"""A short run on real MNIST (../shared/tfds): the teacher must pass 95 % test accuracy."""

import os
import subprocess
import sys
import json

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_short_real_mnist_run_via_cli(tmp_path):
  out = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/mnist.flags", "--epochs=2",
       "--modes=hybrid", "--distill_epochs=1", "--nomlflow",
       "--verbose=0", f"--output_dir={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["train_examples"] == 60000
  assert summary["teacher"]["test_accuracy"] > 0.95, summary
  assert 0 < summary["teacher"]["zeta"] < 0.5, summary  # self-regulation thins participation
  assert summary["students"]["hybrid"]["test_accuracy"] > 0.9, summary
  assert summary["students"]["hybrid"]["zeta"] < 0.5, summary
  assert "teacher" in result.stdout and "student/hybrid" in result.stdout

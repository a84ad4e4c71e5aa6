"""End to end on datasets beyond the three registered ones.

TFDS builders that are not prepared run under `tfds.testing.mock_data`: a
100-class one (cifar100) and one without a test split and with images of
varying size (tf_flowers, with sliced splits and --image_size). A generated
image folder runs through the CLI twice (bit-identical participation with
--deterministic) and is exported with its size and class names.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.support import own_data_helpers as helpers
from tf_srkd.storage import layout

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_mocked(config, num_examples):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  from tf_srkd.run import pipeline  # pylint: disable=import-outside-toplevel

  with tfds.testing.mock_data(num_examples=num_examples):
    return pipeline.run(config)


@pytest.mark.slow
def test_a_100_class_tfds_builder_runs_end_to_end(tmp_path):
  config = helpers.tiny_config(tmp_path, dataset="cifar100", train_examples=0)
  summary = _run_mocked(config, 96)
  run = layout.RunDir(config.output_dir)
  assert summary["dataset"] == "cifar100" and summary["train_examples"] == 96
  significance = np.load(run.teacher.significance)
  assert significance.shape == (96,) and 0 <= significance.min() and significance.max() <= 1
  assert set(summary["students"]) == {"hybrid"}
  with open(run.run_config, encoding="utf-8") as f:
    assert json.load(f)["dataset"] == "cifar100"


@pytest.mark.slow
def test_a_builder_without_test_split_runs_with_sliced_splits_and_resize(tmp_path):
  config = helpers.tiny_config(tmp_path, dataset="tf_flowers", train_split="train[:85%]",
                               test_split="train[85%:]", image_size="16,16")
  summary = _run_mocked(config, 40)
  assert summary["train_examples"] == 40  # Mock data ignores slices: 40 per split.
  assert summary["students"]["hybrid"]["test_accuracy"] is not None


def _cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "tf_srkd.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_an_image_folder_runs_reruns_identically_and_exports(tmp_path):
  photos = helpers.make_folder(tmp_path / "photos", per_class=10)
  common = [f"--dataset=folder:{photos}", "--image_size=16,16", "--validation_fraction=0.2",
            "--teacher_model=lenet5", "--student_model=lenet5_half", "--epochs=2",
            "--distill_epochs=1", "--batch_size=8", "--alpha=0.5", "--distill_alpha=0.5",
            "--modes=hybrid", "--nomlflow", "--verbose=0", "--deterministic"]
  # A few images of noise: the student is at chance, exported because asked to.
  first = _cli(*common, f"--output_dir={tmp_path / 'a'}", "--export=float32",
               "--export_at_chance")
  assert first.returncode == 0, first.stderr[-3000:]
  second = _cli(*common, f"--output_dir={tmp_path / 'b'}")
  assert second.returncode == 0, second.stderr[-3000:]
  for name in ("teacher/participation.npy", "students/hybrid/participation.npy",
               "teacher/significance.npy"):
    a, b = np.load(tmp_path / "a" / name), np.load(tmp_path / "b" / name)
    assert a.shape == (24,)
    np.testing.assert_array_equal(a, b, err_msg=name)
  tflite = tmp_path / "a" / "students" / "hybrid" / "tflite"
  assert (tflite / "labels.txt").read_text().splitlines() == ["cat", "dog", "emu"]
  with open(tflite / "model_float32.json", encoding="utf-8") as f:
    sidecar = json.load(f)
  assert (sidecar["input"]["height"], sidecar["input"]["width"]) == (16, 16)
  assert sidecar["input"]["resize"]["height"] == 16 and "centre crop" in sidecar["input"][
      "resize"]["method"]
  assert sidecar["input"]["shape"] == [1, 16, 16, 3]


def _truncated_folder(tmp_path):
  root = tmp_path / "trunc"
  helpers.make_folder(root, per_class=2, sizes=((16, 16),))
  victim = root / "dog" / "img_01.png"
  victim.write_bytes(victim.read_bytes()[:60])
  return [f"--dataset=folder:{root}", "--validation_fraction=0.5", "--train_examples=0"], str(victim)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["sizes", "one_class", "truncated", "unknown", "no_image",
                                  "varying", "split", "image_size", "stream_truncated"])
def test_cli_refuses_bad_data_with_one_line_exit_2_writing_nothing(tmp_path, case):
  photos = helpers.make_folder(tmp_path / "photos", per_class=2)
  one = helpers.make_folder(tmp_path / "one", classes=("only",), per_class=2)
  args, expected = {
      "sizes": ([f"--dataset=folder:{photos}", "--validation_fraction=0.5"], "--image_size=H,W"),
      "one_class": ([f"--dataset=folder:{one}", "--validation_fraction=0.5", "--image_size=8"],
                    "expected at least 2"),
      "unknown": (["--dataset=fashion_mnst"], "closest known: fashion_mnist"),
      "no_image": (["--dataset=imdb_reviews"], "no 'image' feature"),
      "varying": (["--dataset=tf_flowers"], "--image_size=H,W"),
      "split": (["--train_split=train[:50%]", "--test_split=tests"], "--test_split=tests"),
      "image_size": (["--image_size=0,3"], "--image_size=0,3"),
  }.get(case, (None, None))
  if case in ("truncated", "stream_truncated"):
    args, expected = _truncated_folder(tmp_path)
    args += ["--max_in_memory_mb=0"] if case == "stream_truncated" else []
  out = tmp_path / "out"
  result = _cli("--flagfile=flags/smoke.flags", *args, f"--output_dir={out}")
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not out.exists()

"""`--distillation_loss`: feature terms beside the paper's KD in the flag pipeline, with a
projection for channels that differ, a bit-identical resume, and layer errors up front.

The repeated flag on the command line, written back to flags.txt in order, is checked on
bench/reproduction/feature_kd.py's quick run (tests/project/test_bench_quick.py)."""

import json
import os

import numpy as np
import pytest

from tf_srkd.run import config as config_lib
from tf_srkd.run import pipeline
from tf_srkd.run import resume

N = 96
FEATURES = ("logits", "feature:conv2,conv2", "feature:fc2,fc2,cosine_similarity")

pytestmark = pytest.mark.slow


def _config(out, **overrides):
  config = config_lib.Config.of(dataset="mnist", epochs=3, train_examples=N, batch_size=32,
                                eval_batch_size=64, output_dir=str(out), verbose=0, mlflow=False,
                                alpha=0.5, distill_alpha=0.5, seed=3, modes=("hybrid",),
                                backward="compact", distillation_loss=FEATURES,
                                distillation_loss_weights=(1.0, 0.5, 0.25))
  return config.replace(**overrides)


def _run(config):
  return pipeline.run(config)  # Real MNIST (../shared/tfds): mock images give zero features.


def _student(out):
  import keras  # pylint: disable=import-outside-toplevel

  model = keras.saving.load_model(os.path.join(out, "students", "hybrid", "model.keras"))
  with open(os.path.join(out, "students", "hybrid", "history.json")) as f:
    return model.get_weights(), json.load(f)


def test_feature_terms_train_and_a_killed_student_resumes_bit_for_bit(tmp_path, monkeypatch):
  whole = tmp_path / "whole"
  _run(_config(whole))
  weights, history = _student(whole)
  # (Keras' cosine_similarity loss is -cos, so the sum may be negative.)
  assert all(np.isfinite(h["kd_loss"]) and h["kd_loss"] != 0 for h in history)
  # The projection (conv2: 16 channels for the teacher, 8 for the student) is not shipped:
  # the saved student holds exactly LeNet-5-half's weights.
  from tf_srkd.models import zoo  # pylint: disable=import-outside-toplevel

  plain = zoo.build_model("lenet5_half", (28, 28, 1), 10)
  assert [w.shape for w in weights] == [tuple(w.shape) for w in plain.get_weights()]

  cut = tmp_path / "cut"
  saves = []
  original = resume.StageCheckpoint.save

  def save_then_die(self, next_epoch):
    original(self, next_epoch)
    if "students" in self.directory:
      saves.append(next_epoch)
      if len(saves) == 1:
        raise KeyboardInterrupt  # After the student's first epoch is checkpointed.

  with monkeypatch.context() as m:
    m.setattr(resume.StageCheckpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
      _run(_config(cut))
  _run(_config(cut))
  resumed_weights, resumed_history = _student(cut)
  for a, b in zip(weights, resumed_weights):
    np.testing.assert_array_equal(a, b)
  assert [h["kd_loss"] for h in history] == [h["kd_loss"] for h in resumed_history]


def test_changing_the_terms_is_another_run(tmp_path):
  out = tmp_path / "out"
  _run(_config(out, stage="teacher"))
  with pytest.raises(config_lib.ConfigError, match="distillation_loss"):
    _run(_config(out, distillation_loss=("logits",), distillation_loss_weights=()))

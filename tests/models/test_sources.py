"""Models from any source: registry, keras.applications, factory, .keras file."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tf_srkd.run import config as config_lib
from tf_srkd.models import sources as model_sources

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
MNIST = (28, 28, 1)


def test_kind_of_each_source():
  assert model_sources.kind_of("lenet5") == "registry"
  assert model_sources.kind_of("MobileNetV3Small") == "application"
  assert model_sources.kind_of("tests.support.model_factories:tiny_cnn") == "factory"
  assert model_sources.kind_of("teacher.keras") == "file"
  assert model_sources.kind_of("resnet") is None
  assert model_sources.kind_of("a b:c") is None


@pytest.mark.parametrize("name, shape", [("lenet5_half", MNIST),
                                         ("tests.support.model_factories:tiny_cnn", MNIST),
                                         ("MobileNetV3Small", MNIST),
                                         ("MobileNetV2", (32, 32, 3))])
def test_every_source_builds_a_logits_model_for_the_dataset(name, shape):
  model = model_sources.build(name, shape, 10)
  assert tuple(model.inputs[0].shape[1:]) == shape
  logits = np.asarray(model(np.random.default_rng(0).random((2, *shape), np.float32)))
  assert logits.shape == (2, 10) and np.isfinite(logits).all()
  assert model.count_params() > 0


def test_small_images_are_padded_to_the_application_minimum():
  model = model_sources.build("MobileNetV3Small", MNIST, 10)
  assert model.get_layer("pad_to_min_size").output.shape[1:3] == (32, 32)
  assert model_sources.has_batch_norm(model)
  assert not model_sources.has_batch_norm(model_sources.build("lenet5", MNIST, 10))


def test_application_preprocessing_is_folded_in_and_survives_safe_mode(tmp_path):
  """ResNet50 expects caffe-style BGR minus mean: a [0, 1] image is mapped there in the model."""
  model = model_sources.build("ResNet50", (32, 32, 3), 10)
  pre = model.get_layer("preprocess")
  x = np.full((1, 2, 2, 3), 0.5, np.float32)
  expected = keras.applications.resnet50.preprocess_input(x * 255.0)
  np.testing.assert_allclose(np.asarray(pre(x)), np.asarray(expected), rtol=1e-6)
  path = str(tmp_path / "resnet.keras")
  model.save(path)
  again = model_sources.build(path, (32, 32, 3), 10)  # safe_mode=True
  images = np.random.default_rng(1).random((2, 32, 32, 3), np.float32)
  np.testing.assert_allclose(np.asarray(model(images)), np.asarray(again(images)), atol=1e-5)


def test_keras_file_and_weights_file_load(tmp_path):
  model = model_sources.build("lenet5_half", MNIST, 10)
  model.save(tmp_path / "t.keras")
  model.save_weights(tmp_path / "t.weights.h5")
  images = np.random.default_rng(2).random((2, *MNIST), np.float32)
  loaded = model_sources.build(str(tmp_path / "t.keras"), MNIST, 10)
  weighted = model_sources.build("lenet5_half", MNIST, 10, str(tmp_path / "t.weights.h5"))
  np.testing.assert_allclose(np.asarray(model(images)), np.asarray(loaded(images)), atol=1e-6)
  np.testing.assert_allclose(np.asarray(model(images)), np.asarray(weighted(images)), atol=1e-6)


def _lambda_model(path):
  inputs = keras.Input(MNIST)
  x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
  x = keras.layers.Flatten()(x)
  keras.Model(inputs, keras.layers.Dense(10)(x)).save(path)


@pytest.mark.parametrize("case, expected", [
    ("lambda", "refused by Keras safe mode"),
    ("classes", "the dataset has 10 classes"),
    ("shape", "the dataset's images are (28, 28, 1)"),
    ("factory_classes", "the dataset has 10 classes"),
    ("factory_type", "expected a keras.Model"),
    ("factory_import", "cannot import the factory"),
    ("application", "--teacher_model=NoSuchNet: unknown"),
    ("weights", "--teacher_weights="),
])
def test_bad_sources_are_one_line_errors(tmp_path, case, expected):
  name, weights = str(tmp_path / "m.keras"), None
  if case == "lambda":
    _lambda_model(name)
  elif case == "classes":
    model_sources.build("lenet5_half", MNIST, 5).save(name)
  elif case == "shape":
    model_sources.build("lenet5_half", (32, 32, 3), 10).save(name)
  elif case == "factory_classes":
    name = "tests.support.model_factories:wrong_classes"
  elif case == "factory_type":
    name = "tests.support.model_factories:not_a_model"
  elif case == "factory_import":
    name = "tests.no_such_module:f"
  elif case == "application":
    name = "NoSuchNet"
  else:
    name = "lenet5"
    model_sources.build("lenet5_half", MNIST, 10).save_weights(tmp_path / "w.weights.h5")
    weights = str(tmp_path / "w.weights.h5")
  with pytest.raises(config_lib.ConfigError) as error:
    model_sources.build(name, MNIST, 10, weights, flag="teacher_model")
  message = str(error.value)
  assert expected in message and "\n" not in message, message
  assert message.startswith("--teacher_"), message


def _config(**overrides):
  return config_lib.Config.of().replace(output_dir="/nonexistent/x", **overrides)


def test_pretrained_teacher_without_finetuning_refuses_significance_modes(tmp_path):
  path = str(tmp_path / "t.keras")
  model_sources.build("lenet5", MNIST, 10).save(path)
  with pytest.raises(config_lib.ConfigError, match="--teacher_finetune_epochs=K"):
    config_lib.validate(_config(teacher_model=path, modes=("regulated", "hybrid")))
  config_lib.validate(_config(teacher_model=path, modes=("conventional", "regulated")))
  config_lib.validate(_config(teacher_model=path, teacher_finetune_epochs=2))
  with pytest.raises(config_lib.ConfigError, match="only for a pre-trained teacher"):
    config_lib.validate(_config(teacher_finetune_epochs=2))
  with pytest.raises(config_lib.ConfigError, match="no such .keras file"):
    config_lib.validate(_config(teacher_model=str(tmp_path / "absent.keras")))
  with pytest.raises(config_lib.ConfigError, match="--student_weights=.*no such file"):
    config_lib.validate(_config(student_weights=str(tmp_path / "absent.h5")))


def _cli(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/smoke.flags",
                         *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                        timeout=timeout)


@pytest.mark.slow
def test_bad_teacher_files_exit_2_through_main_before_writing(tmp_path):
  lam, five = str(tmp_path / "lambda.keras"), str(tmp_path / "five.keras")
  _lambda_model(lam)
  model_sources.build("lenet5", MNIST, 5).save(five)
  for path, expected in ((lam, "safe mode"), (five, "10 classes")):
    out = tmp_path / "out"
    result = _cli(f"--teacher_model={path}", "--modes=conventional", f"--output_dir={out}")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: --teacher_model=") and expected in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_keras_teacher_file_and_factory_student_end_to_end(tmp_path):
  """A pre-trained .keras teacher fine-tuned 1 epoch (its counts give significance) and a
  factory student in hybrid mode, through the CLI. (An application student: through the
  CLI tests/e2e/test_first_hour.py's, gated tests/export/test_qad.py's.)"""
  teacher = str(tmp_path / "teacher.keras")
  model_sources.build("lenet5", MNIST, 10).save(teacher)
  # An untrained stand-in for a trained teacher: its input range is pinned, since `auto`
  # refuses a teacher at chance (tests/e2e/test_first_hour.py).
  first = tmp_path / "factory"
  result = _cli("--train_examples=128", "--batch_size=64", f"--teacher_model={teacher}",
                "--teacher_input=unit", "--teacher_finetune_epochs=1", "--distill_epochs=1",
                "--student_model=tests.support.model_factories:tiny_cnn",
                "--modes=conventional,hybrid", f"--output_dir={first}")
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((first / "teacher" / "metrics.json").read_text())
  assert metrics["epochs"] == 1 and metrics["params"] == 61_706
  assert np.load(first / "teacher" / "significance.npy").shape == (128,)
  summary = json.loads((first / "summary.json").read_text())
  assert summary["students"]["hybrid"]["zeta"] is not None
  assert summary["students"]["hybrid"]["params"] > 0


@pytest.mark.slow
def test_pretrained_teacher_used_as_is_has_no_significance(tmp_path):
  teacher = str(tmp_path / "teacher.keras")
  model_sources.build("lenet5", MNIST, 10).save(teacher)
  out = tmp_path / "run"
  from tf_srkd.cli import main as cli_main  # pylint: disable=import-outside-toplevel

  # flags/smoke.flags' settings, in-process: the run, not its exit code, is under test.
  cli_main.run(config_lib.Config.of(
      dataset="mnist", epochs=2, train_examples=128, batch_size=64, eval_batch_size=256,
      verbose=0, mlflow=False, teacher_model=teacher, teacher_input="unit", distill_epochs=1,
      modes=("conventional", "regulated"), output_dir=str(out)))
  metrics = json.loads((out / "teacher" / "metrics.json").read_text())
  assert metrics["epochs"] == 0 and metrics["zeta"] is None and metrics["history"] == []
  assert not (out / "teacher" / "significance.npy").exists()
  assert not (out / "teacher" / "participation.npy").exists()
  summary = json.loads((out / "summary.json").read_text())
  assert summary["students"]["regulated"]["zeta"] is not None
  # The pre-trained weights are the teacher's: its accuracy is the loaded model's (untrained).
  assert summary["teacher"]["test_accuracy"] < 0.5


def test_saved_applications_load_in_a_fresh_process_without_this_package(tmp_path):
  """Keras' own layers only: `keras.saving.load_model` (safe mode) with no tf_srkd import."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  from tf_srkd.models import input_contract  # pylint: disable=import-outside-toplevel

  images = np.random.default_rng(2).random((2, 32, 32, 3), np.float32)
  np.save(tmp_path / "x.npy", images)
  for name in ("MobileNetV3Small", "ResNet50"):
    model = input_contract.wrap(model_sources.build(name, (32, 32, 3), 10), "pixels")
    model.save(tmp_path / f"{name}.keras")
    np.save(tmp_path / f"{name}.npy", np.asarray(model(images / 255.0)))
  script = ("import sys, numpy as np, keras\n"
            "x = np.load(sys.argv[1] + '/x.npy')\n"
            "for name in ('MobileNetV3Small', 'ResNet50'):\n"
            "  m = keras.saving.load_model(sys.argv[1] + f'/{name}.keras', safe_mode=True)\n"
            "  np.testing.assert_allclose(np.asarray(m(x / 255.0)), np.load(sys.argv[1] + "
            "f'/{name}.npy'), atol=1e-4)\n"
            "assert not any(k.startswith('tf_srkd') for k in sys.modules)\n"
            "print('loaded')\n")
  result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=300, cwd=str(tmp_path),
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                          check=False)
  assert result.returncode == 0 and "loaded" in result.stdout, result.stderr[-3000:]

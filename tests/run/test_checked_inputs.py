"""Fuzz over every file of a real smoke teacher: each damage is one line naming the file.

A teacher trained on real MNIST data (flags/smoke.flags sizes) is copied and one
file damaged per case; `--stage=distill --teacher_dir=<copy>` must then refuse
with one `ConfigError` line naming that file, before anything is written (the
output directory is never created). A few cases also go through the command
line: exit 2, one `error:` line, no traceback.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from tf_srkd.run import config as config_lib
from tf_srkd.run import pipeline

# Under pytest-xdist (`-n`) this file's tests stay on one worker: they share a real smoke
# teacher in a module fixture that each worker would otherwise build again.
pytestmark = pytest.mark.xdist_group("test_fuzz_inputs")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 256  # flags/smoke.flags
EPOCHS = 2


def smoke_config(out, **overrides):
  config = config_lib.Config.of(dataset="mnist", epochs=EPOCHS, train_examples=N, batch_size=64,
                                eval_batch_size=256, output_dir=str(out), verbose=0, mlflow=False,
                                modes=("conventional",))
  return config.replace(**overrides)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """A real smoke teacher directory (model.keras, significance, participation, metrics)."""
  out = tmp_path_factory.mktemp("smoke") / "run"
  pipeline.run(smoke_config(out, stage="teacher"))
  return out / "teacher"


def _model(input_shape=(28, 28, 1), classes=10, outputs=1, lambda_layer=False):
  inputs = keras.Input(input_shape)
  x = keras.layers.Flatten()(inputs)
  if lambda_layer:
    x = keras.layers.Lambda(lambda t: t * 1.0)(x)
  heads = [keras.layers.Dense(classes)(x) for _ in range(outputs)]
  return keras.Model(inputs, heads if outputs > 1 else heads[0])


def _save_model(model):
  def damage(path):
    os.remove(path)
    model.save(path)
  return damage


def _bytes(transform):
  def damage(path):
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(transform(data))
  return damage


def _array(make):
  def damage(path):
    np.save(path, make(np.load(path)), allow_pickle=True)
  return damage


def _pickle(path):
  with open(path, "wb") as f:
    pickle.dump({"not": "an array"}, f)


def _junk_zip(path):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("config.json", "{not json")


def _json(text):
  def damage(path):
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
  return damage


EMPTY = _bytes(lambda b: b"")
TRUNCATED = _bytes(lambda b: b[:len(b) // 2])
RANDOM = _bytes(lambda b: np.random.default_rng(0).bytes(len(b)))
COMMON = [("empty", EMPTY), ("truncated", TRUNCATED), ("random bytes", RANDOM),
          ("a pickle", _pickle)]

CASES = [("model.keras", name, damage) for name, damage in COMMON] + [
    ("model.keras", "input shape of cifar10", _save_model(_model((32, 32, 3)))),
    ("model.keras", "5 classes", _save_model(_model(classes=5))),
    ("model.keras", "2 outputs", _save_model(_model(outputs=2))),
    ("model.keras", "a Lambda layer", _save_model(_model(lambda_layer=True))),
    ("model.keras", "a zip of junk", _junk_zip),
] + [(name, damage_name, damage) for name in ("significance.npy", "participation.npy")
     for damage_name, damage in COMMON + [
         ("wrong length", _array(lambda a: a[:-1])),
         ("2-D", _array(lambda a: a.reshape(2, -1))),
         ("object array (pickled)", _array(lambda a: a.astype(object))),
         ("strings", _array(lambda a: a.astype(str))),
         ("complex", _array(lambda a: a.astype(np.complex64))),
         ("negative", _array(lambda a: a - 5)),
     ]] + [
    ("significance.npy", "all-zero integers", _array(lambda a: np.zeros(a.shape, np.int32))),
    ("significance.npy", "NaN", _array(lambda a: np.where(np.arange(a.size) == 3, np.nan, a))),
    ("significance.npy", "inf", _array(lambda a: np.full(a.shape, np.inf, np.float32))),
    ("significance.npy", "above 1", _array(lambda a: a + 1.5)),
    ("participation.npy", "floats", _array(lambda a: a.astype(np.float32))),
    ("participation.npy", "above --epochs", _array(lambda a: a + EPOCHS + 1)),
    ("metrics.json", "empty", EMPTY),
    ("metrics.json", "random bytes", RANDOM),
    ("metrics.json", "NaN", _json('{"test_accuracy": NaN, "epochs": 2}')),
    ("metrics.json", "a list", _json("[1, 2]")),
]


def _damaged_copy(teacher, tmp_path, name, damage):
  copy = tmp_path / "T"
  shutil.copytree(teacher, copy)
  damage(str(copy / name))
  return copy


@pytest.mark.parametrize("name,damage_name,damage", CASES,
                         ids=[f"{n}-{d}" for n, d, _ in CASES])
def test_damaged_teacher_file_is_one_line_naming_it(teacher, tmp_path, name, damage_name,
                                                    damage):
  del damage_name
  copy = _damaged_copy(teacher, tmp_path, name, damage)
  out = tmp_path / "out"
  with pytest.raises(config_lib.ConfigError) as e:
    pipeline.run(smoke_config(out, stage="distill", teacher_dir=str(copy)))
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(str(copy / name)), message
  assert not out.exists()


def test_the_good_teacher_passes_and_another_dataset_is_refused(teacher, tmp_path):
  out = tmp_path / "out"
  with pytest.raises(config_lib.ConfigError, match="model.keras: takes inputs of shape"):
    pipeline.run(smoke_config(out, stage="distill", teacher_dir=str(teacher),
                              dataset="cifar10", train_examples=N))
  assert not out.exists()
  pipeline.run(smoke_config(out, stage="distill", teacher_dir=str(teacher), epochs=1))
  assert json.loads((out / "run_config.json").read_text())["teacher_sha256"]


@pytest.mark.parametrize("name,damage", [("model.keras", RANDOM),
                                         ("participation.npy", _pickle),
                                         ("significance.npy", _array(lambda a: a * np.nan))])
def test_cli_damaged_teacher_exits_2_with_one_line(teacher, tmp_path, name, damage):
  copy = _damaged_copy(teacher, tmp_path, name, damage)
  out = tmp_path / "out"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(
      [sys.executable, "-m", "tf_srkd.main", "--flagfile=flags/smoke.flags", "--stage=distill",
       "--modes=conventional", f"--teacher_dir={copy}", f"--output_dir={out}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and str(copy / name) in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert not out.exists()


@pytest.mark.parametrize("name,damage", COMMON + [("Lambda", _save_model(_model(lambda_layer=True))),
                                                  ("junk zip", _junk_zip)])
def test_exporter_model_is_one_line_naming_it(teacher, tmp_path, name, damage):
  from export import source  # pylint: disable=import-outside-toplevel
  from export.errors import ExportError  # pylint: disable=import-outside-toplevel

  del name
  path = tmp_path / "model.keras"
  shutil.copy(teacher / "model.keras", path)
  damage(str(path))
  with pytest.raises(ExportError) as e:
    source.load_student(str(path), dataset="mnist")
  assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_exporter_significance_is_never_unpickled(teacher, tmp_path):
  from export import source  # pylint: disable=import-outside-toplevel
  from export.errors import ExportError  # pylint: disable=import-outside-toplevel

  student = source.load_student(str(teacher / "model.keras"), dataset="mnist")
  assert source.load_significance(student, str(teacher / "significance.npy")).shape == (N,)
  for damage in (_pickle, _array(lambda a: a.astype(object)), _array(lambda a: a - 5)):
    path = tmp_path / "significance.npy"
    shutil.copy(teacher / "significance.npy", path)
    damage(str(path))
    with pytest.raises(ExportError, match=f"^{path}: "):
      source.load_significance(student, str(path))

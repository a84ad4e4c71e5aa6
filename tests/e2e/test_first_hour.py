"""A new user's first hour with their own images, through the `tf-srkd` command.

Each test does what a Keras user does: an image folder of PNG files, a teacher trained
the way Keras' guides train one (`keras.utils.image_dataset_from_directory`, float
pixels 0..255, often a `Rescaling(1/255)` layer inside) and saved as `.keras`, then the
command. The run must use the teacher at the accuracy Keras' own `evaluate` gives, refuse
a teacher that is not trained, and never export a student at chance without being asked.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = ("red", "green", "blue")
SIZE = 16

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_first_hour")]


def _make_folder(root, per_class, seed):
  """PNG images whose class is the colour channel lifted above the noise: a few
  Keras epochs of a small CNN learn it, so every failure below is the pipeline's."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  for c, name in enumerate(CLASSES):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      pixels = rng.integers(0, 200, (SIZE, SIZE, 3)).astype(np.int32)
      pixels[..., c] += 60
      Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
          os.path.join(root, name, f"{i:03d}.png"))
  return str(root)


def _keras_sets(folder):
  import keras  # pylint: disable=import-outside-toplevel

  train = keras.utils.image_dataset_from_directory(
      os.path.join(folder, "train"), image_size=(SIZE, SIZE), batch_size=16, seed=0)
  test = keras.utils.image_dataset_from_directory(
      os.path.join(folder, "test"), image_size=(SIZE, SIZE), batch_size=16, shuffle=False)
  return train, test


def _small_cnn(rescale: bool):
  import keras  # pylint: disable=import-outside-toplevel

  inputs = keras.Input((SIZE, SIZE, 3))
  x = keras.layers.Rescaling(1 / 255)(inputs) if rescale else inputs
  x = keras.layers.Conv2D(8, 3, activation="relu")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, keras.layers.Dense(len(CLASSES))(x))
  model.compile(optimizer=keras.optimizers.Adam(0.01), metrics=["accuracy"],
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


@pytest.fixture(scope="module")
def user(tmp_path_factory):
  """{"dir", "pixels", "unit", "untrained": teacher files, "*_keras_accuracy": Keras'
  evaluate on the test folder} for a generated folder."""
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  base = tmp_path_factory.mktemp("first_hour")
  _make_folder(base / "train", 150, seed=0)
  _make_folder(base / "test", 60, seed=1)
  train, test = _keras_sets(str(base))
  to_unit = lambda x, y: (tf.cast(x, tf.float32) / 255.0, y)  # pylint: disable=unnecessary-lambda-assignment
  out = {"dir": base}
  keras.utils.set_random_seed(0)
  pixels = _small_cnn(rescale=True)  # Keras' guides: Rescaling inside, 0..255 fed.
  pixels.fit(train, epochs=25, verbose=0)
  out["pixels_keras_accuracy"] = pixels.evaluate(test, verbose=0)[1]
  pixels.save(base / "teacher_pixels.keras")
  unit = _small_cnn(rescale=False)  # A hand-written model fed [0, 1].
  unit.fit(train.map(to_unit), epochs=25, verbose=0)
  out["unit_keras_accuracy"] = unit.evaluate(test.map(to_unit), verbose=0)[1]
  unit.save(base / "teacher_unit.keras")
  keras.utils.set_random_seed(1)
  _small_cnn(rescale=True).save(base / "teacher_untrained.keras")
  return out


def _tf_srkd(user, *args, output="out"):
  command = [sys.executable, "-m", "tf_srkd.main",
             f"--dataset=folder:{user['dir'] / 'train'}", f"--test_folder={user['dir'] / 'test'}",
             f"--image_size={SIZE},{SIZE}", "--nomlflow", "--verbose=0",
             f"--output_dir={user['dir'] / output}", *args]
  return subprocess.run(command, cwd=str(user["dir"]), capture_output=True, text=True,
                        timeout=900, env=dict(os.environ, PYTHONPATH=ROOT), check=False)


def _summary(user, output):
  with open(user["dir"] / output / "summary.json", encoding="utf-8") as f:
    return json.load(f)


@pytest.mark.parametrize("teacher", ["pixels", "unit"])
def test_a_keras_trained_teacher_is_fed_what_it_was_trained_on(user, teacher):
  assert user[f"{teacher}_keras_accuracy"] > 0.6  # The fixture made a usable teacher.
  output = f"run_{teacher}"
  run = _tf_srkd(user, f"--teacher_model=teacher_{teacher}.keras", "--student_model=lenet5_half",
                 "--modes=regulated", "--epochs=1", "--batch_size=32", output=output)
  assert run.returncode == 0, run.stderr[-3000:]
  assert f"--teacher_input=auto: teacher_{teacher}.keras scores" in run.stdout
  assert f"using {teacher}" in run.stdout
  # The run sees the accuracy Keras' evaluate gives on the same test images.
  assert abs(_summary(user, output)["teacher"]["test_accuracy"]
             - user[f"{teacher}_keras_accuracy"]) < 1e-6
  with open(user["dir"] / output / "run_config.json", encoding="utf-8") as f:
    measured = json.load(f)["measured_inputs"]["teacher_input"]
  assert measured["choice"] == teacher and measured["images"] == 450


def test_an_untrained_teacher_is_refused_in_one_line_and_nothing_is_written(user):
  run = _tf_srkd(user, "--teacher_model=teacher_untrained.keras", "--modes=regulated",
                 "--epochs=1", output="run_untrained")
  assert run.returncode == 2, run.stderr[-3000:]
  errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "teacher_untrained.keras" in errors[0]
  assert "[0, 1] inputs" in errors[0] and "0..255 pixels" in errors[0]
  assert not os.path.exists(user["dir"] / "run_untrained")


def test_a_pinned_input_skips_the_measurement(user):
  run = _tf_srkd(user, "--teacher_model=teacher_pixels.keras", "--teacher_input=pixels",
                 "--student_model=lenet5_half", "--modes=regulated", "--epochs=1",
                 "--batch_size=32", output="run_pinned")
  assert run.returncode == 0, run.stderr[-3000:]
  assert "--teacher_input=auto" not in run.stdout
  assert abs(_summary(user, "run_pinned")["teacher"]["test_accuracy"]
             - user["pixels_keras_accuracy"]) < 1e-6


def test_a_short_batch_norm_student_is_lifted_by_precise_bn_or_flagged_and_not_exported(user):
  common = ["--teacher_model=teacher_pixels.keras", "--student_model=MobileNetV3Small",
            "--modes=conventional", "--epochs=3", "--batch_size=16"]
  # Without --export: a student not at chance is exported like any other (the CLI's export
  # is tests/e2e/test_own_data.py's, a MobileNetV3Small's conversion test_mobile_export's),
  # and the float conversion of this one would double the run.
  precise = _tf_srkd(user, *common, output="run_bn")
  assert precise.returncode == 0, precise.stderr[-3000:]
  assert "note: student-conventional: only 87 optimizer steps" in precise.stdout
  student = _summary(user, "run_bn")["students"]["conventional"]
  assert "at_chance" not in student and student["test_accuracy"] > 0.5
  assert student["params"] > 1_000_000  # keras.applications' model, not a look-alike.
  assert "warning: student-conventional is at chance" not in precise.stdout

  moving = _tf_srkd(user, *common, "--export=float32", "--precise_bn_batches=0",
                    output="run_bn_moving")
  assert moving.returncode == 2, moving.stderr[-3000:]
  assert "warning: student-conventional is at chance" in moving.stdout
  assert "BatchNorm yes" in moving.stdout
  errors = [line for line in moving.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "--export_at_chance" in errors[0]
  out = user["dir"] / "run_bn_moving"
  assert _summary(user, "run_bn_moving")["students"]["conventional"]["at_chance"] is True
  assert (out / "students/conventional/model.keras").is_file()  # Every other file kept.
  assert not (out / "students/conventional/tflite").exists()

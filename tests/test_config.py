"""Bad input: one clear line naming the flag or file, before training, writing nothing."""

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tf_srkd import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make(tmp_path, **overrides):
  base = config_lib.Config(output_dir=str(tmp_path / "out"), epochs=1, train_examples=100)
  return dataclasses.replace(base, **overrides)


@pytest.mark.parametrize("overrides,flag", [
    ({"dataset": "imagenet"}, "--dataset"),
    ({"teacher_model": "resnet"}, "--teacher_model"),
    ({"student_model": "vit"}, "--student_model"),
    ({"modes": ("conventional", "magic")}, "--modes"),
    ({"modes": ()}, "--modes"),
    ({"alpha": -0.1}, "--alpha"),
    ({"distill_alpha": -1.0}, "--distill_alpha"),
    ({"alpha": math.nan}, "--alpha"),
    ({"temperature": 0.0}, "--temperature"),
    ({"temperature": -2.0}, "--temperature"),
    ({"gate_temperature": 0.0}, "--gate_temperature"),
    ({"kd_lambda": -0.3}, "--kd_lambda"),
    ({"epochs": 0}, "--epochs"),
    ({"distill_epochs": -1}, "--distill_epochs"),
    ({"batch_size": 0}, "--batch_size"),
    ({"train_examples": 60001}, "--train_examples"),
    ({"stage": "deploy"}, "--stage"),
    ({"backward": "sparse"}, "--backward"),
    ({"export": ("int4",)}, "--export"),
    ({"stage": "distill"}, "--stage=distill"),
])
def test_each_bad_value_names_its_flag(tmp_path, overrides, flag):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(make(tmp_path, **overrides))
  assert str(e.value).startswith(flag)
  assert not (tmp_path / "out").exists()


def test_good_config_and_inf_alpha_pass(tmp_path):
  config_lib.validate(make(tmp_path, alpha=math.inf, distill_alpha=math.inf))


def test_teacher_dir_checks(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="not a directory"):
    config_lib.validate(make(tmp_path, teacher_dir=str(tmp_path / "nope")))
  teacher = tmp_path / "run" / "teacher"
  teacher.mkdir(parents=True)
  with pytest.raises(config_lib.ConfigError, match="model.keras"):
    config_lib.validate(make(tmp_path, teacher_dir=str(tmp_path / "run")))
  (teacher / "model.keras").write_bytes(b"x")
  with pytest.raises(config_lib.ConfigError, match="significance.npy"):
    config_lib.validate(make(tmp_path, teacher_dir=str(tmp_path / "run")))
  np.save(teacher / "significance.npy", np.ones(99, np.float32))
  with pytest.raises(config_lib.ConfigError, match=r"shape \(99,\), expected \(100,\)"):
    config_lib.validate(make(tmp_path, teacher_dir=str(tmp_path / "run")))
  np.save(teacher / "significance.npy", np.ones(100, np.float32))
  config_lib.validate(make(tmp_path, teacher_dir=str(tmp_path / "run")))
  config_lib.validate(make(tmp_path, teacher_dir=str(teacher)))  # the teacher/ dir itself


def test_flagfile_round_trip():
  text = config_lib.to_flagfile(config_lib.Config(alpha=math.inf, modes=("hybrid",), mlflow=False))
  assert "--alpha=inf\n" in text and "--modes=hybrid\n" in text and "--nomlflow\n" in text
  for config in (config_lib.Config(alpha=math.inf, modes=("hybrid",), mlflow=False),
                 config_lib.Config(teacher_dir="/runs/a", export=("int8", "float32"),
                                   distill_epochs=3, mlflow_tracking_uri="sqlite:///x=y.db")):
    assert config_lib.from_flagfile(config_lib.to_flagfile(config)) == config


def test_every_field_is_a_flag_with_help():
  specs = config_lib.flag_specs()
  assert [s.name for s in specs] == [f.name for f in dataclasses.fields(config_lib.Config)]
  assert all(s.help for s in specs)
  kinds = {s.name: s.kind for s in specs}
  assert (kinds["alpha"], kinds["modes"], kinds["stage"], kinds["deterministic"]) == (
      "rate", "list", "enum", "bool")


def run_cli(*args, env_extra=None, cwd=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "tf_srkd.main", *args], cwd=cwd or ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,expected", [
    (["--alpha=-1"], "--alpha=-1.0: expected a number >= 0"),
    (["--alpha=fast"], "--alpha=fast: expected a number >= 0 or 'inf'"),
    (["--teacher_model=resnet"], "--teacher_model=resnet: unknown"),
    (["--train_examples=70000"], "--train_examples=70000"),
    (["--modes=conventional,bogus"], "--modes=bogus"),
])
def test_cli_bad_input_exits_nonzero_and_writes_nothing(tmp_path, args, expected):
  out = tmp_path / "out"
  result = run_cli("--flagfile=flags/smoke.flags", f"--output_dir={out}", *args)
  assert result.returncode != 0
  assert expected in result.stderr
  assert not out.exists()


@pytest.mark.slow
def test_cli_missing_dataset_offline(tmp_path):
  out = tmp_path / "out"
  result = run_cli("--flagfile=flags/smoke.flags", f"--output_dir={out}",
                   env_extra={"TFDS_DATA_DIR": str(tmp_path / "empty_tfds")})
  assert result.returncode == 2, result.stderr[-2000:]
  assert "--dataset=mnist: could not load" in result.stderr
  assert not out.exists()

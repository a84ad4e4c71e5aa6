"""Bad input: one clear line naming the flag or file, before training, writing nothing."""

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tf_srkd.run import config as config_lib
from tf_srkd.run import config_fields
from tf_srkd.run import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make(tmp_path, **overrides):
  base = config_lib.Config.of(output_dir=str(tmp_path / "out"), epochs=1, train_examples=100)
  return base.replace(**overrides)


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
    ({"register_model": "srkd", "mlflow": False}, "--register_model=srkd"),  # needs --mlflow
    ({"register_model": "a/b"}, "--register_model=a/b"),
    ({"register_model": " "}, "--register_model= "),
    ({"steps_per_execution": -1}, "--steps_per_execution=-1"),
    ({"adam_epsilon": 0.0}, "--adam_epsilon=0.0"),  # Adam divides by sqrt(v) + epsilon
    ({"margin_refresh": "lazy"}, "--margin_refresh=lazy"),
    ({"margin_max_age": -1}, "--margin_max_age=-1"),
    ({"margin_band": -0.1}, "--margin_band=-0.1"),
    ({"margin_band": math.nan}, "--margin_band=nan"),
    ({"margin_refresh": "bounded", "reuse_margins": False}, "--margin_refresh=bounded"),
    ({"margin_refresh": "bounded", "backward": "masked"}, "--margin_refresh=bounded --backward"),
    ({"margin_audit": True}, "--margin_audit"),
    ({"margin_refresh": "bounded", "augment": True}, "--margin_refresh=bounded --augment"),
    ({"distillation_loss": ()}, "--distillation_loss"),
    ({"distillation_loss": ("hint",)}, "--distillation_loss=hint"),
    ({"distillation_loss": ("feature:conv1",)}, "--distillation_loss=feature:conv1"),
    ({"distillation_loss": ("feature:a,b,l2",)}, "--distillation_loss=feature:a,b,l2"),
    ({"distillation_loss_weights": (1.0, 2.0)}, "--distillation_loss_weights=1.0,2.0"),
    ({"distillation_loss_weights": (-1.0,)}, "--distillation_loss_weights=-1.0"),
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
  text = config_flags.to_flagfile(config_lib.Config.of(alpha=math.inf, modes=("hybrid",),
                                                       mlflow=False))
  assert "--alpha=inf\n" in text and "--modes=hybrid\n" in text and "--nomlflow\n" in text
  for config in (config_lib.Config.of(alpha=math.inf, modes=("hybrid",), mlflow=False),
                 config_lib.Config.of(teacher_dir="/runs/a", export=("int8", "float32"),
                                      distill_epochs=3, mlflow_tracking_uri="sqlite:///x=y.db")):
    assert config_flags.from_flagfile(config_flags.to_flagfile(config)) == config


def test_repeated_distillation_losses_round_trip_one_line_each():
  config = config_lib.Config.of(distillation_loss=("logits",
                                                   "feature:conv2,conv2,cosine_similarity"),
                             distillation_loss_weights=(1.0, 0.25))
  text = config_flags.to_flagfile(config)
  assert "--distillation_loss=logits\n--distillation_loss=feature:conv2,conv2,cosine_similarity\n" \
      in text and "--distillation_loss_weights=1.0,0.25\n" in text
  assert config_flags.from_flagfile(text) == config
  # The default is not written: a --distillation_loss after the flagfile replaces it.
  assert "--distillation_loss=" not in config_flags.to_flagfile(config_lib.Config.of())
  assert config_lib.identity(config)["distillation_loss"] == [
      "logits", "feature:conv2,conv2,cosine_similarity"]
  # The paper's KD alone: runs written before the flag still match.
  assert "distillation_loss" not in config_lib.identity(config_lib.Config.of())
  ones = config_lib.Config.of(distillation_loss=("logits",), distillation_loss_weights=(1.0,))
  assert config_lib.identity(ones) == config_lib.identity(config_lib.Config.of())
  with pytest.raises(config_lib.ConfigError, match="--distillation_loss_weights=x"):
    config_flags.from_flag_values({"distillation_loss_weights": ["x"]})


def test_every_field_is_a_flag_with_help():
  specs = config_flags.flag_specs()
  leaves = [f.name for _, f in config_fields.flag_fields()]
  assert [s.name for s in specs] == leaves and len(set(leaves)) == len(leaves)
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
    # absl's own parse errors, and the inputs a run refuses before it starts.
    (["--epochs=abc"], "--epochs=abc"),
    (["--bogus=1"], "'bogus'"),
    (["--flagfile=/no/such.flags"], "/no/such.flags"),
    (["--dataset=imagenet"], "--dataset=imagenet"),
    (["--output_dir="], "--output_dir"),
    (["--seed=-1"], "--seed=-1"),
    (["--stage=teacher", "--teacher_dir=/tmp"], "nothing to train"),
    (["--margin_refresh=bounded", "--backward=masked"], "--margin_refresh=bounded --backward"),
    (["--margin_max_age=-2"], "--margin_max_age=-2"),
    (["--distillation_loss=feature:conv9,conv2"], "the teacher has no layer 'conv9'; did you mean"),
    (["--distillation_loss=feature:fc1,conv2"], "(120,) and the student's (10, 10, 8)"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, expected):
  out = tmp_path / "out"
  result = run_cli("--flagfile=flags/smoke.flags", f"--output_dir={out}", *args)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not out.exists()


@pytest.mark.slow
def test_cli_missing_dataset_offline(tmp_path):
  out = tmp_path / "out"
  result = run_cli("--flagfile=flags/smoke.flags", f"--output_dir={out}",
                   env_extra={"TFDS_DATA_DIR": str(tmp_path / "empty_tfds")})
  assert result.returncode == 2, result.stderr[-2000:]
  assert "--dataset=mnist: could not load" in result.stderr
  assert not out.exists()


def test_added_identity_field_keeps_older_run_configs_matching():
  # Runs written before --distill_loss_normaliser existed used "participants":
  # at that value the field stays out of the identity, so they still resume.
  assert "distill_loss_normaliser" not in config_lib.identity(
      config_lib.Config.of(distill_loss_normaliser="participants"))
  assert config_lib.identity(config_lib.Config.of(distill_loss_normaliser="batch"))[
      "distill_loss_normaliser"] == "batch"
  # Runs written before --adam_epsilon existed used Keras' 1e-7.
  assert "adam_epsilon" not in config_lib.identity(config_lib.Config.of())
  assert config_lib.identity(config_lib.Config.of(adam_epsilon=1e-8))["adam_epsilon"] == 1e-8


def test_unknown_loss_normaliser_is_refused():
  with pytest.raises(config_lib.ConfigError, match="--distill_loss_normaliser=median"):
    config_lib.validate(config_lib.Config.of(distill_loss_normaliser="median"))


def test_qad_epochs_needs_int8_and_stays_out_of_the_identity():
  with pytest.raises(config_lib.ConfigError, match=r"--qad_epochs=2: .* add --export=int8"):
    config_lib.validate(config_lib.Config.of(qad_epochs=2, export=("float16",)))
  with pytest.raises(config_lib.ConfigError, match="--qad_epochs=-1: expected an integer >= 0"):
    config_lib.validate(config_lib.Config.of(qad_epochs=-1, export=("int8",)))
  config_lib.validate(config_lib.Config.of(qad_epochs=2, export=("int8",), output_dir="/tmp/x"))
  # Export settings: a finished run may be restarted to add them.
  assert "qad_epochs" not in config_lib.identity(config_lib.Config.of(qad_epochs=3, export=("int8",
                                                                                            )))


def test_cli_refuses_a_file_as_output_dir_a_bad_tf_config_and_a_self_including_flagfile(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("keep")
  result = run_cli("--flagfile=flags/smoke.flags", f"--output_dir={a_file}")
  assert result.returncode == 2 and "exists and is not a directory" in result.stderr
  assert a_file.read_text() == "keep"
  out = tmp_path / "out"
  result = run_cli("--flagfile=flags/smoke.flags", f"--output_dir={out}",
                   env_extra={"TF_CONFIG": "{not json"})
  assert result.returncode == 2 and "TF_CONFIG: not valid JSON" in result.stderr
  loop = tmp_path / "loop.flags"
  loop.write_text(f"--epochs=1\n--flagfile={tmp_path / 'inner.flags'}\n")
  (tmp_path / "inner.flags").write_text(f"--flagfile={loop}\n")
  result = run_cli(f"--flagfile={loop}", f"--output_dir={out}")
  assert result.returncode == 2 and "includes itself (loop.flags -> inner.flags -> loop.flags)" in result.stderr
  assert not out.exists() and "Traceback" not in result.stderr


def test_tf_config_and_seed_rules(tmp_path):
  config_lib.validate_tf_config(None)
  config_lib.validate_tf_config('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker"}}')
  for bad in ("[1, 2]", '{"task": 3}', "{"):
    with pytest.raises(config_lib.ConfigError, match="^TF_CONFIG"):
      config_lib.validate_tf_config(bad)
  with pytest.raises(config_lib.ConfigError, match=r"^--seed=4294967296"):
    config_lib.validate(make(tmp_path, seed=2**32))


def test_settings_are_grouped_by_concern_in_frozen_groups():
  config = config_lib.Config.of(dataset="cifar10", epochs=3, gate="random", mlflow=False,
                                export=("int8",), teacher_model="resnet8", seed=5)
  assert (config.data.dataset, config.training.epochs, config.gating.gate) == ("cifar10", 3,
                                                                               "random")
  assert (config.tracking.mlflow, config.exporting.export, config.models.teacher_model,
          config.seed) == (False, ("int8",), "resnet8", 5)
  groups = {f.name for f in dataclasses.fields(config) if f.metadata.get("group")}
  assert groups == {"data", "models", "gating", "training", "tracking", "exporting"}
  for name in groups:
    with pytest.raises(dataclasses.FrozenInstanceError):
      setattr(getattr(config, name), "seed", 1)
  changed = config.replace(epochs=4, sb_beta=2.0)
  assert (changed.training.epochs, changed.gating.sb_beta, changed.data) == (4, 2.0, config.data)
  assert config.training.epochs == 3  # replace() copies
  assert changed.settings() == dict(config.settings(), epochs=4, sb_beta=2.0)
  with pytest.raises(TypeError, match="no setting 'epoch'"):
    config_lib.Config.of(epoch=3)


def test_help_groups_are_the_config_groups():
  titles = [title for title, _ in config_flags.HELP_GROUPS]
  assert titles == ["data", "models", "gate", "training", "run and outputs", "tracking", "export"]
  data = dict(config_flags.HELP_GROUPS)["data"]
  assert data == tuple(f.name for f in dataclasses.fields(config_fields.DataConfig))

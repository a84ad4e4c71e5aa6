"""The frozen run configuration and every bad-input rule.

Entry points turn flags into a `Config`; the library only ever sees this
object. `validate` runs before any training and before anything is written; it
needs neither TensorFlow nor the data, so it is cheap to unit-test. Each error
names the flag (or file) and what was expected.
"""

import dataclasses
import math
import os
from typing import Optional, Tuple

from tf_srkd import datasets
from tf_srkd import models
from tf_srkd import modes

STAGES = ("teacher", "distill", "all")
BACKWARDS = ("masked", "compact", "auto")
LOSS_NORMALISERS = ("participants", "batch", "weights")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
QUANTIZATIONS = ("float32", "dynamic", "float16", "int8")


class ConfigError(ValueError):
  """Bad input; the message names the flag or file and what was expected."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything one run needs. Field names match the command-line flags."""

  dataset: str = "mnist"
  teacher_model: str = "lenet5"
  student_model: str = "lenet5_half"
  epochs: int = 200
  distill_epochs: Optional[int] = None
  batch_size: int = 512
  teacher_lr: float = 1e-3
  distill_lr: float = 1e-2
  alpha: float = 0.02
  distill_alpha: float = 0.02
  temperature: float = 20.0
  kd_lambda: float = 0.3
  kd_scale_temperature_squared: bool = True
  gate_temperature: float = 1.0
  loss_normaliser: str = "participants"
  modes: Tuple[str, ...] = ("conventional", "significance", "regulated", "hybrid")
  seed: int = 0
  output_dir: str = "runs/mnist"
  train_examples: int = 0
  teacher_dir: Optional[str] = None
  stage: str = "all"
  backward: str = "auto"
  augment: bool = False
  download: bool = False
  jit_compile: bool = False
  eval_batch_size: int = 2048
  strategy: str = "auto"
  cpu_replicas: int = 0
  overwrite: bool = False
  deterministic: bool = False
  skip_idle_epochs: bool = True
  export: Tuple[str, ...] = ()
  mlflow: bool = True
  mlflow_experiment: Optional[str] = None
  mlflow_tracking_uri: Optional[str] = None
  verbose: int = 2

  @property
  def resolved_distill_epochs(self) -> int:
    return self.distill_epochs if self.distill_epochs is not None else self.epochs

  @property
  def dataset_spec(self) -> datasets.DatasetSpec:
    return datasets.get_dataset_spec(self.dataset)

  @property
  def num_train_examples(self) -> int:
    return self.train_examples or self.dataset_spec.train_size

  @property
  def experiment_name(self) -> str:
    return self.mlflow_experiment or self.dataset


def _require(condition, message):
  if not condition:
    raise ConfigError(message)


def _check_name(flag, value, registry):
  _require(value in registry, f"--{flag}={value}: unknown; expected one of {', '.join(sorted(registry))}")


def _finite_nonnegative_or_inf(flag, value):
  _require(not math.isnan(value) and value >= 0,
           f"--{flag}={value}: expected a number >= 0 or 'inf' (conventional training)")


def teacher_files(teacher_dir: str):
  """(model, significance) paths inside a `--teacher_dir`.

  Accepts either a run's output directory (containing `teacher/`) or the
  `teacher/` directory itself.
  """
  base = os.path.join(teacher_dir, "teacher")
  if not os.path.isdir(base):
    base = teacher_dir
  return os.path.join(base, "model.keras"), os.path.join(base, "significance.npy")


def validate(config: Config) -> Config:
  """Checks every rule that needs no training; returns `config` unchanged.

  Raises:
    ConfigError: naming the first offending flag or file.
  """
  _check_name("dataset", config.dataset, datasets.DATASETS)
  _check_name("teacher_model", config.teacher_model, models.MODELS)
  _check_name("student_model", config.student_model, models.MODELS)
  _require(config.modes, "--modes: expected at least one of " + ", ".join(modes.MODES))
  for mode in config.modes:
    _check_name("modes", mode, modes.MODES)
  _require(len(set(config.modes)) == len(config.modes), f"--modes={','.join(config.modes)}: a mode is repeated")
  _require(config.stage in STAGES, f"--stage={config.stage}: expected one of {', '.join(STAGES)}")
  _require(config.loss_normaliser in LOSS_NORMALISERS,
           f"--loss_normaliser={config.loss_normaliser}: expected one of "
           f"{', '.join(LOSS_NORMALISERS)}")
  _require(config.backward in BACKWARDS, f"--backward={config.backward}: expected one of {', '.join(BACKWARDS)}")
  _require(config.strategy in STRATEGIES, f"--strategy={config.strategy}: expected one of {', '.join(STRATEGIES)}")
  for q in config.export:
    _require(q in QUANTIZATIONS, f"--export={q}: expected a comma list of {', '.join(QUANTIZATIONS)}")
  _finite_nonnegative_or_inf("alpha", config.alpha)
  _finite_nonnegative_or_inf("distill_alpha", config.distill_alpha)
  for flag in ("temperature", "gate_temperature"):
    value = getattr(config, flag)
    _require(math.isfinite(value) and value > 0, f"--{flag}={value}: expected a number > 0")
  _require(math.isfinite(config.kd_lambda) and config.kd_lambda >= 0,
           f"--kd_lambda={config.kd_lambda}: expected a number >= 0")
  for flag in ("teacher_lr", "distill_lr"):
    value = getattr(config, flag)
    _require(math.isfinite(value) and value > 0, f"--{flag}={value}: expected a number > 0")
  _require(config.epochs > 0, f"--epochs={config.epochs}: expected an integer > 0")
  _require(config.distill_epochs is None or config.distill_epochs > 0,
           f"--distill_epochs={config.distill_epochs}: expected an integer > 0")
  _require(config.batch_size > 0, f"--batch_size={config.batch_size}: expected an integer > 0")
  _require(config.eval_batch_size > 0, f"--eval_batch_size={config.eval_batch_size}: expected an integer > 0")
  _require(config.cpu_replicas >= 0, f"--cpu_replicas={config.cpu_replicas}: expected an integer >= 0")
  size = config.dataset_spec.train_size
  _require(0 <= config.train_examples <= size,
           f"--train_examples={config.train_examples}: expected 0 (all) up to the {size} examples "
           f"of the {config.dataset} train split")
  _require(bool(config.output_dir), "--output_dir: expected a directory path")
  if config.stage == "distill" and not config.teacher_dir:
    teacher_model = os.path.join(config.output_dir, "teacher", "model.keras")
    _require(os.path.exists(teacher_model),
             f"--stage=distill: needs --teacher_dir, or a finished teacher at {teacher_model}")
  if config.teacher_dir:
    _validate_teacher_dir(config)
  return config


def _validate_teacher_dir(config: Config):
  _require(os.path.isdir(config.teacher_dir),
           f"--teacher_dir={config.teacher_dir}: not a directory")
  model_path, significance_path = teacher_files(config.teacher_dir)
  _require(os.path.isfile(model_path),
           f"--teacher_dir={config.teacher_dir}: expected a trained teacher at {model_path}")
  _require(os.path.isfile(significance_path),
           f"--teacher_dir={config.teacher_dir}: expected the teacher's significance at {significance_path}")
  import numpy as np  # pylint: disable=import-outside-toplevel

  try:
    significance = np.load(significance_path, mmap_mode="r")
  except (OSError, ValueError) as e:
    raise ConfigError(f"{significance_path}: not a readable .npy array ({e})") from e
  expected = config.num_train_examples
  _require(significance.ndim == 1 and significance.shape[0] == expected,
           f"{significance_path}: has shape {tuple(significance.shape)}, expected ({expected},) "
           f"= the --train_examples/{config.dataset} training examples of this run")


#: Fields that do not change what a stage computes: a restart may change them.
_NON_IDENTITY_FIELDS = frozenset({
    "stage", "overwrite", "verbose", "mlflow", "mlflow_experiment", "mlflow_tracking_uri",
    "export", "output_dir", "eval_batch_size", "download", "strategy", "cpu_replicas",
    "jit_compile", "teacher_dir", "modes", "deterministic",
})


def _json_value(value):
  """Tuples as lists and infinite rates as the string "inf" (strict JSON has no inf)."""
  if isinstance(value, tuple):
    return list(value)
  if isinstance(value, float) and math.isinf(value):
    return "inf" if value > 0 else "-inf"
  return value


#: Result-determining fields added after runs were already written, with the
#: value those runs used: a field at that value is left out of the identity, so
#: the older runs' `run_config.json` still matches (and resumes).
_ADDED_IDENTITY_FIELDS = {"loss_normaliser": "participants"}


def identity(config: Config) -> dict:
  """The settings that determine a run's results, as strict-JSON values, for
  restart-compatibility checks."""
  return {k: _json_value(v)
          for k, v in dataclasses.asdict(config).items()
          if k not in _NON_IDENTITY_FIELDS
          and not (k in _ADDED_IDENTITY_FIELDS and v == _ADDED_IDENTITY_FIELDS[k])}


def to_flagfile(config: Config) -> str:
  """Renders `config` in absl flagfile format (one `--flag=value` per line)."""
  lines = []
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if value is None:
      continue
    if isinstance(value, bool):
      lines.append(f"--{field.name}" if value else f"--no{field.name}")
    elif isinstance(value, tuple):
      lines.append(f"--{field.name}={','.join(value)}")
    else:
      lines.append(f"--{field.name}={value}")
  return "\n".join(lines) + "\n"

"""The frozen run configuration and every bad-input rule.

Entry points turn flags into a `Config`; the library only ever sees this
object. The fields are the one list of settings (`config_fields`, re-exported
here): each carries its flag's help (`flag_specs()`), `tf_srkd.main` defines the
flags from them, and `to_flagfile` / `from_flagfile` write and read a run's
`flags.txt`.

`validate` runs before any training and before anything is written; it needs
neither TensorFlow nor the data, so it is cheap to unit-test. Each error names
the flag (or file) and what was expected. Which fields make up a run's identity
(restart compatibility) lives in `tf_srkd.run.identity`; `identity` is
re-exported here.
"""

import math
import os
from typing import Optional

from tf_srkd.data import datasets
from tf_srkd import errors
from tf_srkd.core import gates
from tf_srkd.models import input_contract
from tf_srkd.storage import layout
from tf_srkd.core import modes as modes_lib
from tf_srkd.core import distill_terms
from tf_srkd.core import staleness
from tf_srkd.run.identity import identity  # pylint: disable=unused-import  # re-exported

from tf_srkd.run.config_fields import (  # pylint: disable=unused-import  # re-exported
    BACKWARDS, LOSS_NORMALISERS, QUANTIZATIONS, STAGES, STRATEGIES, Config)

ConfigError = errors.ConfigError  # Raised by `validate`; importable from here too.


def dataset_spec(config: Config) -> datasets.DatasetSpec:
  """The dataset `config` names, resolved (TFDS metadata or a folder scan; cached per settings).

  A function rather than a property of `Config`, because it reads from disk.
  """
  return datasets.resolve(
      config.dataset, train_split=config.train_split, test_split=config.test_split,
      image_size=config.image_size, channels=config.channels, test_folder=config.test_folder,
      validation_fraction=config.validation_fraction, seed=config.seed, download=config.download)


def num_train_examples(config: Config) -> Optional[int]:
  """Examples in the transfer set (None: not known before the split is read)."""
  return config.train_examples or dataset_spec(config).train_size


def _require(condition, message):
  if not condition:
    raise ConfigError(message)


def _check_name(flag, value, registry):
  _require(value in registry, f"--{flag}={value}: unknown; expected one of {', '.join(sorted(registry))}")


def _finite_nonnegative_or_inf(flag, value):
  _require(not math.isnan(value) and value >= 0,
           f"--{flag}={value}: expected a number >= 0 or 'inf' (conventional training)")


def validate(config: Config) -> Config:
  """Checks every rule that needs no training; returns `config` unchanged.

  Raises:
    ConfigError: naming the first offending flag or file.
  """
  _require(bool(config.dataset), "--dataset: expected a dataset name or folder:PATH")
  try:
    spec = dataset_spec(config)
  except datasets.DatasetError as e:
    raise ConfigError(str(e)) from e
  _require(config.modes, "--modes: expected at least one of " + ", ".join(modes_lib.MODES))
  for mode in config.modes:
    _check_name("modes", mode, modes_lib.MODES)
  _require(len(set(config.modes)) == len(config.modes), f"--modes={','.join(config.modes)}: a mode is repeated")
  _require(config.stage in STAGES, f"--stage={config.stage}: expected one of {', '.join(STAGES)}")
  _require(config.distill_loss_normaliser in LOSS_NORMALISERS,
           f"--distill_loss_normaliser={config.distill_loss_normaliser}: expected one of "
           f"{', '.join(LOSS_NORMALISERS)}")
  _require(config.backward in BACKWARDS, f"--backward={config.backward}: expected one of {', '.join(BACKWARDS)}")
  _require(config.strategy in STRATEGIES, f"--strategy={config.strategy}: expected one of {', '.join(STRATEGIES)}")
  for q in config.export:
    _require(q in QUANTIZATIONS, f"--export={q}: expected a comma list of {', '.join(QUANTIZATIONS)}")
  _require(config.qad_epochs >= 0, f"--qad_epochs={config.qad_epochs}: expected an integer >= 0")
  _require(not config.qad_epochs or "int8" in config.export,
           f"--qad_epochs={config.qad_epochs}: trains the int8 student, so it needs int8 in "
           f"--export (got --export={','.join(config.export) or 'nothing'}); add --export=int8")
  _finite_nonnegative_or_inf("alpha", config.alpha)
  _finite_nonnegative_or_inf("distill_alpha", config.distill_alpha)
  for flag in ("temperature", "gate_temperature"):
    value = getattr(config, flag)
    _require(math.isfinite(value) and value > 0, f"--{flag}={value}: expected a number > 0")
  _require(math.isfinite(config.kd_lambda) and config.kd_lambda >= 0,
           f"--kd_lambda={config.kd_lambda}: expected a number >= 0")
  for flag in ("teacher_lr", "distill_lr", "adam_epsilon"):
    value = getattr(config, flag)
    _require(math.isfinite(value) and value > 0, f"--{flag}={value}: expected a number > 0")
  _require(config.epochs > 0, f"--epochs={config.epochs}: expected an integer > 0")
  _require(config.distill_epochs is None or config.distill_epochs > 0,
           f"--distill_epochs={config.distill_epochs}: expected an integer > 0")
  _require(config.batch_size > 0, f"--batch_size={config.batch_size}: expected an integer > 0")
  _require(config.eval_batch_size > 0, f"--eval_batch_size={config.eval_batch_size}: expected an integer > 0")
  _require(config.cpu_replicas >= 0, f"--cpu_replicas={config.cpu_replicas}: expected an integer >= 0")
  _require(config.precise_bn_batches >= 0,
           f"--precise_bn_batches={config.precise_bn_batches}: expected an integer >= 0 "
           "(0: off)")
  for flag in ("teacher_input", "student_input"):
    _check_name(flag, getattr(config, flag), input_contract.INPUTS)
  _require(config.steps_per_execution >= 0,
           f"--steps_per_execution={config.steps_per_execution}: expected an integer >= 0")
  size = spec.train_size
  _require(0 <= config.train_examples and (size is None or config.train_examples <= size),
           f"--train_examples={config.train_examples}: expected 0 (all) up to the {size} examples "
           f"of the {config.dataset} train split")
  _require(0 <= config.seed < 2**32, f"--seed={config.seed}: expected an integer in [0, 2**32)")
  _require(math.isfinite(config.max_in_memory_mb) and config.max_in_memory_mb >= 0,
           f"--max_in_memory_mb={config.max_in_memory_mb}: expected a number >= 0")
  _require(bool(config.output_dir), "--output_dir: expected a directory path")
  _require(not os.path.exists(config.output_dir) or os.path.isdir(config.output_dir),
           f"--output_dir={config.output_dir}: exists and is not a directory")
  _require(not (config.stage == "teacher" and config.teacher_dir),
           f"--stage=teacher --teacher_dir={config.teacher_dir}: nothing to train (the teacher "
           "is given); use --stage=distill, or drop --teacher_dir")
  if config.stage == "distill" and not config.teacher_dir:
    teacher_model = layout.RunDir(config.output_dir).teacher.model
    _require(os.path.exists(teacher_model),
             f"--stage=distill: needs --teacher_dir, or a finished teacher at {teacher_model}")
  _validate_model_sources(config)
  if config.teacher_dir:
    _validate_teacher_dir(config)
  _validate_gates(config)
  _validate_margin_refresh(config)
  _validate_distillation_losses(config)
  _validate_register_model(config)
  return config


def _validate_distillation_losses(config: Config):
  _require(config.distillation_loss, "--distillation_loss: expected at least one loss (logits)")
  for text in config.distillation_loss:
    try:
      distill_terms.parse_flag(text)
    except ValueError as e:
      raise ConfigError(str(e)) from e
  weights = config.distillation_loss_weights
  _require(not weights or len(weights) == len(config.distillation_loss),
           f"--distillation_loss_weights={','.join(map(str, weights))}: {len(weights)} weights "
           f"for {len(config.distillation_loss)} --distillation_loss values")
  for w in weights:
    _require(math.isfinite(w) and w >= 0,
             f"--distillation_loss_weights={w}: expected numbers >= 0")


def _validate_margin_refresh(config: Config):
  _check_name("margin_refresh", config.margin_refresh, staleness.REFRESH)
  _require(config.margin_max_age >= 0,
           f"--margin_max_age={config.margin_max_age}: expected an integer >= 0")
  _require(not math.isnan(config.margin_band) and config.margin_band >= 0,
           f"--margin_band={config.margin_band}: expected a number >= 0 or 'inf'")
  if config.margin_refresh != "bounded":
    _require(not config.margin_audit, "--margin_audit: audits --margin_refresh=bounded; "
             "the exact gate has nothing to compare")
    return
  _require(config.reuse_margins, "--margin_refresh=bounded: keeps cached margins, so it needs "
           "--reuse_margins")
  _require(config.backward != "masked", "--margin_refresh=bounded --backward=masked: the masked "
           "gate forwards every row in training mode; use --backward=compact or auto")
  _require(not config.augment, "--margin_refresh=bounded --augment: each epoch shows every row "
           "other pixels, so no margin carries over to the next; drop one of the two")


# -- gate policies -----------------------------------------------------------------


def _validate_gates(config: Config):
  for flag in ("gate", "distill_gate"):
    _check_name(flag, getattr(config, flag), gates.POLICIES)
  checks = (("infobatch_ratio", lambda v: 0 <= v < 1, "a number in [0, 1)"),
            ("infobatch_delta", lambda v: 0 < v <= 1, "a number in (0, 1]"),
            ("sb_beta", lambda v: 0 < v < math.inf, "a number > 0"),
            ("keep_fraction", lambda v: 0 < v <= 1, "a number in (0, 1]"))
  for flag, good, expected in checks:
    value = getattr(config, flag)
    _require(not math.isnan(value) and good(value), f"--{flag}={value}: expected {expected}")


# -- MLflow Model Registry ---------------------------------------------------------


def _validate_register_model(config: Config):
  if config.register_model is None:
    return
  _require(config.mlflow, f"--register_model={config.register_model}: needs MLflow tracking; "
           "drop --nomlflow")
  _require(bool(config.register_model.strip()) and "/" not in config.register_model
           and ":" not in config.register_model,
           f"--register_model={config.register_model}: expected a model name without '/' or ':'")


def validate_tf_config(text: Optional[str]):
  """Checks the `TF_CONFIG` environment value (None: unset) that multi-worker runs read.

  Raises:
    ConfigError: it is set but not a JSON object.
  """
  if not text:
    return
  import json  # pylint: disable=import-outside-toplevel

  try:
    value = json.loads(text)
  except ValueError as e:
    raise ConfigError(f"TF_CONFIG: not valid JSON ({e})") from e
  _require(isinstance(value, dict) and isinstance(value.get("cluster", {}), dict)
           and isinstance(value.get("task", {}), dict),
           "TF_CONFIG: expected a JSON object with 'cluster' and 'task' objects")


def _validate_model_sources(config: Config):
  """The model flags' syntax and files, and a pre-trained teacher's significance."""
  from tf_srkd.models import sources as model_sources  # pylint: disable=import-outside-toplevel  (imports config)

  model_sources.check_name("teacher_model", config.teacher_model)
  model_sources.check_name("student_model", config.student_model)
  for flag in ("teacher_weights", "student_weights"):
    path = getattr(config, flag)
    _require(path is None or os.path.isfile(path), f"--{flag}={path}: no such file")
  k = config.teacher_finetune_epochs
  _require(k >= 0, f"--teacher_finetune_epochs={k}: expected an integer >= 0")
  if config.teacher_dir or config.stage == "distill":
    return  # The teacher is read back from a run, with its own significance.
  pretrained = model_sources.is_pretrained(config.teacher_model, config.teacher_weights)
  _require(pretrained or k == 0,
           f"--teacher_finetune_epochs={k}: only for a pre-trained teacher (--teacher_model="
           "<file>.keras or --teacher_weights); a teacher trained here takes --epochs")
  if pretrained and k == 0:
    needing = [m for m in config.modes if modes_lib.get_mode(m).weight_by_significance]
    _require(not needing,
             f"--modes={','.join(config.modes)}: {', '.join(needing)} needs the teacher's "
             "significance, and a pre-trained teacher has no participation history; pass "
             "--teacher_finetune_epochs=K (K self-regulated epochs from its weights) or drop "
             "those modes")


def _validate_teacher_dir(config: Config):
  _require(os.path.isdir(config.teacher_dir),
           f"--teacher_dir={config.teacher_dir}: not a directory")
  teacher = layout.teacher_stage(config.teacher_dir)
  model_path, significance_path = teacher.model, teacher.significance
  _require(os.path.isfile(model_path),
           f"--teacher_dir={config.teacher_dir}: expected a trained teacher at {model_path}")
  _require(os.path.isfile(significance_path),
           f"--teacher_dir={config.teacher_dir}: expected the teacher's significance at {significance_path}")
  from tf_srkd.storage import checked_reads  # pylint: disable=import-outside-toplevel  (imports config)

  checked_reads.load_array(significance_path, kinds=checked_reads.FLOAT_KINDS,
                        length=num_train_examples(config), low=0, high=1)

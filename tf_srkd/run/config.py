"""The frozen run configuration and every bad-input rule.

Entry points turn flags into a `Config`; the library only ever sees this
object. Its settings, grouped by concern, are the one list of settings (`config_fields`,
re-exported here): each carries its flag's help (`flag_specs()`), `tf_srkd.main` defines the
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
  data = config.data
  return datasets.resolve(
      data.dataset, train_split=data.train_split, test_split=data.test_split,
      image_size=data.image_size, channels=data.channels, test_folder=data.test_folder,
      validation_fraction=data.validation_fraction, seed=config.seed, download=data.download)


def num_train_examples(config: Config) -> Optional[int]:
  """Examples in the transfer set (None: not known before the split is read)."""
  return config.data.train_examples or dataset_spec(config).train_size


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
  data, exporting, gating, models, training = (
      config.data, config.exporting, config.gating, config.models, config.training)
  _require(bool(data.dataset), "--dataset: expected a dataset name or folder:PATH")
  try:
    spec = dataset_spec(config)
  except datasets.DatasetError as e:
    raise ConfigError(str(e)) from e
  _require(training.modes, "--modes: expected at least one of " + ", ".join(modes_lib.MODES))
  for mode in training.modes:
    _check_name("modes", mode, modes_lib.MODES)
  _require(len(set(training.modes)) == len(training.modes),
           f"--modes={','.join(training.modes)}: a mode is repeated")
  _require(config.stage in STAGES, f"--stage={config.stage}: expected one of {', '.join(STAGES)}")
  _require(training.distill_loss_normaliser in LOSS_NORMALISERS,
           f"--distill_loss_normaliser={training.distill_loss_normaliser}: expected one of "
           f"{', '.join(LOSS_NORMALISERS)}")
  _require(gating.backward in BACKWARDS,
           f"--backward={gating.backward}: expected one of {', '.join(BACKWARDS)}")
  _require(training.strategy in STRATEGIES,
           f"--strategy={training.strategy}: expected one of {', '.join(STRATEGIES)}")
  for q in exporting.export:
    _require(q in QUANTIZATIONS, f"--export={q}: expected a comma list of {', '.join(QUANTIZATIONS)}")
  _require(exporting.qad_epochs >= 0,
           f"--qad_epochs={exporting.qad_epochs}: expected an integer >= 0")
  _require(not exporting.qad_epochs or "int8" in exporting.export,
           f"--qad_epochs={exporting.qad_epochs}: trains the int8 student, so it needs int8 in "
           f"--export (got --export={','.join(exporting.export) or 'nothing'}); add --export=int8")
  _finite_nonnegative_or_inf("alpha", gating.alpha)
  _finite_nonnegative_or_inf("distill_alpha", gating.distill_alpha)
  settings = config.settings()
  for flag in ("temperature", "gate_temperature"):
    value = settings[flag]
    _require(math.isfinite(value) and value > 0, f"--{flag}={value}: expected a number > 0")
  _require(math.isfinite(training.kd_lambda) and training.kd_lambda >= 0,
           f"--kd_lambda={training.kd_lambda}: expected a number >= 0")
  for flag in ("teacher_lr", "distill_lr", "adam_epsilon"):
    value = settings[flag]
    _require(math.isfinite(value) and value > 0, f"--{flag}={value}: expected a number > 0")
  _require(training.epochs > 0, f"--epochs={training.epochs}: expected an integer > 0")
  _require(training.distill_epochs is None or training.distill_epochs > 0,
           f"--distill_epochs={training.distill_epochs}: expected an integer > 0")
  _require(training.batch_size > 0, f"--batch_size={training.batch_size}: expected an integer > 0")
  _require(training.eval_batch_size > 0,
           f"--eval_batch_size={training.eval_batch_size}: expected an integer > 0")
  _require(training.cpu_replicas >= 0,
           f"--cpu_replicas={training.cpu_replicas}: expected an integer >= 0")
  _require(training.precise_bn_batches >= 0,
           f"--precise_bn_batches={training.precise_bn_batches}: expected an integer >= 0 "
           "(0: off)")
  for flag in ("teacher_input", "student_input"):
    _check_name(flag, settings[flag], input_contract.INPUTS)
  _require(training.steps_per_execution >= 0,
           f"--steps_per_execution={training.steps_per_execution}: expected an integer >= 0")
  size = spec.train_size
  _require(0 <= data.train_examples and (size is None or data.train_examples <= size),
           f"--train_examples={data.train_examples}: expected 0 (all) up to the {size} examples "
           f"of the {data.dataset} train split")
  _require(0 <= config.seed < 2**32, f"--seed={config.seed}: expected an integer in [0, 2**32)")
  _require(math.isfinite(data.max_in_memory_mb) and data.max_in_memory_mb >= 0,
           f"--max_in_memory_mb={data.max_in_memory_mb}: expected a number >= 0")
  _require(bool(config.output_dir), "--output_dir: expected a directory path")
  _require(not os.path.exists(config.output_dir) or os.path.isdir(config.output_dir),
           f"--output_dir={config.output_dir}: exists and is not a directory")
  _require(not (config.stage == "teacher" and models.teacher_dir),
           f"--stage=teacher --teacher_dir={models.teacher_dir}: nothing to train (the teacher "
           "is given); use --stage=distill, or drop --teacher_dir")
  if config.stage == "distill" and not models.teacher_dir:
    teacher_model = layout.RunDir(config.output_dir).teacher.model
    _require(os.path.exists(teacher_model),
             f"--stage=distill: needs --teacher_dir, or a finished teacher at {teacher_model}")
  _validate_model_sources(config)
  if models.teacher_dir:
    _validate_teacher_dir(config)
  _validate_gates(config)
  _validate_margin_refresh(config)
  _validate_distillation_losses(config)
  _validate_register_model(config)
  return config


def _validate_distillation_losses(config: Config):
  training = config.training
  _require(training.distillation_loss, "--distillation_loss: expected at least one loss (logits)")
  for text in training.distillation_loss:
    try:
      distill_terms.parse_flag(text)
    except ValueError as e:
      raise ConfigError(str(e)) from e
  weights = training.distillation_loss_weights
  _require(not weights or len(weights) == len(training.distillation_loss),
           f"--distillation_loss_weights={','.join(map(str, weights))}: {len(weights)} weights "
           f"for {len(training.distillation_loss)} --distillation_loss values")
  for w in weights:
    _require(math.isfinite(w) and w >= 0,
             f"--distillation_loss_weights={w}: expected numbers >= 0")


def _validate_margin_refresh(config: Config):
  data, gating = config.data, config.gating
  _check_name("margin_refresh", gating.margin_refresh, staleness.REFRESH)
  _require(gating.margin_max_age >= 0,
           f"--margin_max_age={gating.margin_max_age}: expected an integer >= 0")
  _require(not math.isnan(gating.margin_band) and gating.margin_band >= 0,
           f"--margin_band={gating.margin_band}: expected a number >= 0 or 'inf'")
  if gating.margin_refresh != "bounded":
    _require(not gating.margin_audit, "--margin_audit: audits --margin_refresh=bounded; "
             "the exact gate has nothing to compare")
    return
  _require(gating.reuse_margins, "--margin_refresh=bounded: keeps cached margins, so it needs "
           "--reuse_margins")
  _require(gating.backward != "masked", "--margin_refresh=bounded --backward=masked: the masked "
           "gate forwards every row in training mode; use --backward=compact or auto")
  _require(not data.augment, "--margin_refresh=bounded --augment: each epoch shows every row "
           "other pixels, so no margin carries over to the next; drop one of the two")


# -- gate policies -----------------------------------------------------------------


def _validate_gates(config: Config):
  settings = config.settings()
  for flag in ("gate", "distill_gate"):
    _check_name(flag, settings[flag], gates.POLICIES)
  checks = (("infobatch_ratio", lambda v: 0 <= v < 1, "a number in [0, 1)"),
            ("infobatch_delta", lambda v: 0 < v <= 1, "a number in (0, 1]"),
            ("sb_beta", lambda v: 0 < v < math.inf, "a number > 0"),
            ("keep_fraction", lambda v: 0 < v <= 1, "a number in (0, 1]"))
  for flag, good, expected in checks:
    value = settings[flag]
    _require(not math.isnan(value) and good(value), f"--{flag}={value}: expected {expected}")


# -- MLflow Model Registry ---------------------------------------------------------


def _validate_register_model(config: Config):
  tracking = config.tracking
  if tracking.register_model is None:
    return
  _require(tracking.mlflow, f"--register_model={tracking.register_model}: needs MLflow tracking; "
           "drop --nomlflow")
  _require(bool(tracking.register_model.strip()) and "/" not in tracking.register_model
           and ":" not in tracking.register_model,
           f"--register_model={tracking.register_model}: expected a model name without '/' or ':'")


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
  models, training = config.models, config.training
  from tf_srkd.models import sources as model_sources  # pylint: disable=import-outside-toplevel  (imports config)

  model_sources.check_name("teacher_model", models.teacher_model)
  model_sources.check_name("student_model", models.student_model)
  settings = config.settings()
  for flag in ("teacher_weights", "student_weights"):
    path = settings[flag]
    _require(path is None or os.path.isfile(path), f"--{flag}={path}: no such file")
  k = models.teacher_finetune_epochs
  _require(k >= 0, f"--teacher_finetune_epochs={k}: expected an integer >= 0")
  if models.teacher_dir or config.stage == "distill":
    return  # The teacher is read back from a run, with its own significance.
  pretrained = model_sources.is_pretrained(models.teacher_model, models.teacher_weights)
  _require(pretrained or k == 0,
           f"--teacher_finetune_epochs={k}: only for a pre-trained teacher (--teacher_model="
           "<file>.keras or --teacher_weights); a teacher trained here takes --epochs")
  if pretrained and k == 0:
    needing = [m for m in training.modes if modes_lib.get_mode(m).weight_by_significance]
    _require(not needing,
             f"--modes={','.join(training.modes)}: {', '.join(needing)} needs the teacher's "
             "significance, and a pre-trained teacher has no participation history; pass "
             "--teacher_finetune_epochs=K (K self-regulated epochs from its weights) or drop "
             "those modes")


def _validate_teacher_dir(config: Config):
  models = config.models
  _require(os.path.isdir(models.teacher_dir),
           f"--teacher_dir={models.teacher_dir}: not a directory")
  teacher = layout.teacher_stage(models.teacher_dir)
  model_path, significance_path = teacher.model, teacher.significance
  _require(os.path.isfile(model_path),
           f"--teacher_dir={models.teacher_dir}: expected a trained teacher at {model_path}")
  _require(os.path.isfile(significance_path),
           f"--teacher_dir={models.teacher_dir}: expected the teacher's significance at "
           f"{significance_path}")
  from tf_srkd.storage import checked_reads  # pylint: disable=import-outside-toplevel  (imports config)

  checked_reads.load_array(significance_path, kinds=checked_reads.FLOAT_KINDS,
                        length=num_train_examples(config), low=0, high=1)

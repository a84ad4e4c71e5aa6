"""The frozen run configuration, its flags, and every bad-input rule.

Entry points turn flags into a `Config`; the library only ever sees this
object. The fields are the one list of settings: each carries its flag's help
(`flag_specs()`), `tf_srkd.main` defines the flags from them, and
`to_flagfile` / `from_flagfile` write and read a run's `flags.txt`.

`validate` runs before any training and before anything is written; it needs
neither TensorFlow nor the data, so it is cheap to unit-test. Each error names
the flag (or file) and what was expected. Which fields make up a run's identity
(restart compatibility) lives in `tf_srkd.run.identity`; `identity` is
re-exported here.
"""

import dataclasses
import math
import os
from typing import Optional, Tuple

from tf_srkd.data import datasets
from tf_srkd import errors
from tf_srkd.core import gates
from tf_srkd.models import input_contract
from tf_srkd.storage import layout
from tf_srkd.models import zoo as models
from tf_srkd.core import modes as modes_lib
from tf_srkd.core import staleness
from tf_srkd.run.identity import identity  # pylint: disable=unused-import  # re-exported

STAGES = ("teacher", "distill", "all")
BACKWARDS = modes_lib.BACKWARDS
LOSS_NORMALISERS = modes_lib.LOSS_NORMALISERS
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
#: TFLite quantizations `export/` writes; here so `--export` is checked before training.
QUANTIZATIONS = ("float32", "dynamic", "float16", "int8")


ConfigError = errors.ConfigError  # Raised by `validate`; importable from here too.


def _flag(default, help_text, **flag):
  """A `Config` field that is also a command-line flag of the same name.

  Args:
    default: the field's default.
    help_text: the flag's help.
    **flag: `choices` (an enum flag), `kind="rate"` (a float that may be written
      'inf'), `flag_default` (the flag's default when it differs from the field's).
  """
  return dataclasses.field(default=default, metadata=dict(help=help_text, **flag))


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything one run needs. Every field is a command-line flag of the same name
  (`tf_srkd.main` defines them from `flag_specs()`)."""

  dataset: str = _flag("mnist", "A TFDS image-classification builder, optionally with config "
                       "and version (mnist, cifar100, emnist/balanced, cifar100:3.0.2), or "
                       "folder:PATH (one sub-folder per class); docs/cli.md, Your own data.")
  teacher_model: str = _flag("lenet5", f"One of {sorted(models.MODELS)}, a keras.applications "
                             "name, a package.module:function factory or a .keras file.")
  student_model: str = _flag("lenet5_half", f"One of {sorted(models.MODELS)}, a "
                             "keras.applications name, a package.module:function factory or a "
                             ".keras file.")
  epochs: int = _flag(200, "Teacher epochs (and distillation epochs by default).")
  distill_epochs: Optional[int] = _flag(None, "Distillation epochs (default: --epochs).")
  batch_size: int = _flag(512, "Global batch size.")
  teacher_lr: float = _flag(1e-3, "Adam learning rate of the teacher.")
  distill_lr: float = _flag(1e-2, "Adam learning rate of the students.")
  adam_epsilon: float = _flag(1e-7, "Adam's epsilon, every stage (Keras' default; PyTorch's, "
                              "which the paper used, is 1e-8).")
  alpha: float = _flag(0.02, "Teacher self-regulation rate (float, or 'inf' for conventional "
                       "training).", kind="rate")
  distill_alpha: float = _flag(0.02, "Students' self-regulation rate (regulated and hybrid "
                               "modes).", kind="rate")
  temperature: float = _flag(20.0, "Distillation temperature tau.")
  kd_lambda: float = _flag(0.3, "Weight lambda of the hard-label cross-entropy.")
  kd_scale_temperature_squared: bool = _flag(
      True, "Scale the KD term by tau^2 (Hinton et al.; the paper is silent).")
  gate_temperature: float = _flag(1.0, "Softmax temperature of a student's own gate (1 by "
                                  "default; Algorithm 3 literally uses tau).")
  distill_loss_normaliser: str = _flag(
      "participants", "Students: divide the gated loss sum by the number of participants "
      "(mean over participants), the batch size (mean over the batch) or the participants' "
      "summed significance weights (weighted mean); the paper is silent (docs/choices.md). "
      "The teacher always uses the mean over participants.", choices=LOSS_NORMALISERS)
  modes: Tuple[str, ...] = _flag(("conventional", "significance", "regulated", "hybrid"),
                                 f"Distillation modes, a subset of {list(modes_lib.MODES)}.")
  seed: int = _flag(0, "Seed for initialisation and the per-epoch shuffles.")
  output_dir: str = _flag("runs/mnist", "Output directory (default runs/<dataset>-<UTC time>).",
                          flag_default=None)
  train_examples: int = _flag(0, "Use only the first K training examples (0: all).")
  teacher_dir: Optional[str] = _flag(None, "Reuse this run's (or teacher/ directory's) teacher "
                                     "and significance instead of training one.")
  stage: str = _flag("all", "Which stages to run.", choices=STAGES)
  backward: str = _flag("auto", "masked: backward on the whole batch with a 0/1 mask; compact: "
                        "backward on participants only; auto: per epoch from the previous "
                        "participation.", choices=BACKWARDS)
  augment: bool = _flag(False, "Random shifts (+flips for RGB); the teacher then runs live in "
                        "every student step instead of from cached logits.")
  download: bool = _flag(False, "Let TFDS download a missing dataset.")
  jit_compile: bool = _flag(False, "XLA-compile the train step (GPUs; slow on CPU).")
  eval_batch_size: int = _flag(2048, "Batch size for inference passes.")
  strategy: str = _flag("auto", "tf.distribute strategy.", choices=STRATEGIES)
  cpu_replicas: int = _flag(0, "Split the CPU into K logical devices (to exercise "
                            "MirroredStrategy without GPUs).")
  overwrite: bool = _flag(False, "Move an existing --output_dir made with other settings aside "
                          "instead of refusing.")
  deterministic: bool = _flag(False, "Enable TensorFlow op determinism (bit-identical reruns "
                              "and resumes; slower on GPUs).")
  skip_idle_epochs: bool = _flag(True, "Skip epochs in which provably no sample takes part "
                                 "(compact gate only).")
  export: Tuple[str, ...] = _flag((), "Export every student to TFLite with these quantizations "
                                  f"({','.join(QUANTIZATIONS)}).")
  mlflow: bool = _flag(True, "Track the run in MLflow.")
  mlflow_experiment: Optional[str] = _flag(None, "MLflow experiment (default: the dataset).")
  mlflow_tracking_uri: Optional[str] = _flag(None, "MLflow tracking URI (default: "
                                             "$MLFLOW_TRACKING_URI, else MLflow's own default).")
  verbose: int = _flag(2, "Keras fit verbosity: 0 silent, 1 a progress bar with ETA, 2 one line "
                       "per epoch (default: 1 when stdout is a terminal, else 2).",
                       flag_default=None)
  # -- gate policies (tf_srkd.core.gates) ------------------------------------------------
  gate: str = _flag(gates.DEFAULT, "The teacher's gate policy: "
                    + "; ".join(f"{p.name}: {p.summary}" for p in gates.POLICIES.values()) + ".",
                    choices=tuple(gates.POLICIES))
  distill_gate: str = _flag(gates.DEFAULT, "The gate policy of the self-regulating students "
                            "(regulated, hybrid); names as for --gate.",
                            choices=tuple(gates.POLICIES))
  infobatch_ratio: float = _flag(0.5, "InfoBatch's r: the fraction of below-mean-loss samples "
                                 "pruned each epoch, in [0, 1).")
  infobatch_delta: float = _flag(0.875, "InfoBatch's delta: prune in the first delta * epochs "
                                 "epochs, use all data after, in (0, 1].")
  sb_beta: float = _flag(1.0, "Selective Backprop's beta: keep probability = "
                         "percentile(loss)^beta, > 0.")
  keep_fraction: float = _flag(0.5, "The random gate's keep probability p, in (0, 1].")
  # -- models from any source ---------------------------------------------------
  teacher_weights: Optional[str] = _flag(None, "Weights file (model.load_weights) loaded into "
                                         "the teacher after building it: a pre-trained teacher.")
  student_weights: Optional[str] = _flag(None, "Weights file loaded into every student after "
                                         "building it.")
  teacher_finetune_epochs: int = _flag(
      0, "A pre-trained teacher (--teacher_model=<file>.keras or --teacher_weights) trains this "
      "many self-regulated epochs from its weights; their participation counts give the "
      "significance. 0: used as is, without significance (modes significance and hybrid are "
      "then refused).")
  # -- exact margin reuse ------------------------------------------------------
  reuse_margins: bool = _flag(True, "Compact gate: rows whose margin was computed with the "
                              "current weights skip the inference pass (bit-identical; "
                              "--noreuse_margins runs every row).")
  margin_refresh: str = _flag(
      "exact", "Compact gate: exact reuses a margin only while the weights are unchanged; "
      "bounded also lets a row that was correct with a margin >= eta(n) + --margin_band keep "
      "it for up to --margin_max_age epochs, without a forward pass and without taking part "
      "(docs/performance.md).", choices=staleness.REFRESH)
  margin_max_age: int = _flag(staleness.DEFAULT_MAX_AGE, "--margin_refresh=bounded: the most "
                              "epochs a kept margin may be old (0: none kept, the exact gate).")
  margin_band: float = _flag(staleness.DEFAULT_BAND, "--margin_refresh=bounded: how far above "
                             "eta(n) a kept margin must lie ('inf': none kept, the exact gate).",
                             kind="rate")
  margin_audit: bool = _flag(False, "--margin_refresh=bounded: also run the exact gate on every "
                             "row and log the share of decisions that differ (gate_misses, "
                             "gate_extra); costs a full inference pass per epoch.")
  steps_per_execution: int = _flag(
      0, "Train steps per call into the compiled step (Keras' steps_per_execution). 0: a "
      "whole epoch per call, the fewest Python round trips (per-batch callbacks and the "
      "progress bar then update once per epoch); K > 0: the largest divisor of the "
      "epoch's step count not above K, so that no call straddles two epochs. Under "
      "--strategy=mirrored/multi_worker: always 1.")

  # -- MLflow Model Registry --
  register_model: Optional[str] = _flag(
      None, "Register each student's MLflow model in the Model Registry as <NAME>-<mode>, "
      "with its TFLite files (--export) attached (needs --mlflow).")

  # -- any TFDS dataset or an image folder -----------------------------------------
  train_split: str = _flag("train", "TFDS split of the transfer set; slices and percentages "
                           "allowed ('train[:85%]'). Sample id i = its i-th example in file "
                           "order.")
  test_split: str = _flag("test", "TFDS split to test on ('train[85%:]' for datasets without "
                          "a test split).")
  image_size: str = _flag("", "H,W: resize every image (aspect-preserving scale and centre "
                          "crop, bilinear); required when the images vary in size.")
  channels: int = _flag(0, "Image folders: 1 (greyscale) or 3 (RGB); 0: RGB if any image has "
                        "colour, else greyscale.")
  test_folder: Optional[str] = _flag(None, "Image folders: the test tree (same class folders).")
  validation_fraction: float = _flag(0.0, "Image folders without --test_folder: hold out this "
                                     "fraction of the files (seeded by --seed) as test data.")
  max_in_memory_mb: float = _flag(
      2048.0, "Splits whose uint8 pixels exceed this many MiB are kept on disk and read by "
      "sample id (identical results, flat memory); 0 keeps every split on disk. 2048: every "
      "common small benchmark (MNIST 47, CIFAR-100 150, EMNIST-byclass 550 MiB) stays in RAM, "
      "where the in-memory path needs about twice the split.")
  # -- what the models take, and no model at chance shipped silently --------------
  teacher_input: str = _flag(
      "auto", "The pixel range the teacher takes: unit ([0, 1]), pixels (float 0..255, as "
      "Keras' image loaders give; the pipeline scales inside the model) or auto (unit for a "
      "model built here; a pre-trained teacher is scored on 1,000 training images under both "
      "and the better one is used if it is clearly above chance; at chance under both, a "
      "teacher used as is is refused).",
      choices=input_contract.INPUTS)
  student_input: str = _flag(
      "auto", "The pixel range the students take; as --teacher_input (a pre-trained student at "
      "chance under both is taken as unit).", choices=input_contract.INPUTS)
  precise_bn_batches: int = _flag(
      100, "Networks with BatchNormalization: after training, recompute the moving mean and "
      "variance over this many training batches with the final weights (precise BN), before "
      "evaluation, the teacher's logits and export. 0: keep the moving averages.")
  export_at_chance: bool = _flag(
      False, "Export (and --register_model) students whose test accuracy is not clearly above "
      "chance (left out by default).")

  @property
  def resolved_distill_epochs(self) -> int:
    return self.distill_epochs if self.distill_epochs is not None else self.epochs

  @property
  def experiment_name(self) -> str:
    return self.mlflow_experiment or self.dataset


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
  _validate_register_model(config)
  return config


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

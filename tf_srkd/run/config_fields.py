"""The run's settings: one frozen `Config` of frozen groups, one per concern.

`Config` holds the run-level settings (stage, output directory, seed, verbosity)
and six groups: `data`, `models`, `gating`, `training`, `tracking` and
`exporting`. Every leaf field is a command-line flag of the same name and carries
its flag's help and kind (`_flag`); `config_flags` turns the fields into flags
and flagfiles, `config` checks a `Config` before anything runs. A stage takes the
groups it reads, not the whole `Config`.

Flag names are unique across groups, so `Config.of(epochs=5, gate="random")` and
`config.replace(epochs=5)` take the flat flag names, and `config.settings()` gives
them back as one flat dict (flagfiles, MLflow params, the run identity).
"""

import dataclasses
import functools
from typing import Dict, Optional, Tuple

from tf_srkd.core import distill_terms
from tf_srkd.core import gates
from tf_srkd.core import modes as modes_lib
from tf_srkd.core import staleness
from tf_srkd.models import input_contract
from tf_srkd.models import zoo as models

STAGES = ("teacher", "distill", "all")
BACKWARDS = modes_lib.BACKWARDS
LOSS_NORMALISERS = modes_lib.LOSS_NORMALISERS
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
#: TFLite quantizations `export/` writes; here so `--export` is checked before training.
QUANTIZATIONS = ("float32", "dynamic", "float16", "int8")


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
class DataConfig:
  """What is trained and tested on: the dataset, its splits and how it is read."""

  dataset: str = _flag("mnist", "A TFDS image-classification builder, optionally with config "
                       "and version (mnist, cifar100, emnist/balanced, cifar100:3.0.2), or "
                       "folder:PATH (one sub-folder per class); docs/cli.md, Your own data.")
  train_examples: int = _flag(0, "Use only the first K training examples (0: all).")
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
  download: bool = _flag(False, "Let TFDS download a missing dataset.")
  max_in_memory_mb: float = _flag(
      2048.0, "Splits whose uint8 pixels exceed this many MiB are kept on disk and read by "
      "sample id (identical results, flat memory); 0 keeps every split on disk. 2048: every "
      "common small benchmark (MNIST 47, CIFAR-100 150, EMNIST-byclass 550 MiB) stays in RAM, "
      "where the in-memory path needs about twice the split.")
  augment: bool = _flag(False, "Random shifts (+flips for RGB); the teacher then runs live in "
                        "every student step instead of from cached logits, and no margin is "
                        "reused nor idle epoch skipped (each epoch sees other pixels).")


@dataclasses.dataclass(frozen=True)
class ModelsConfig:
  """Which teacher and students, from which source, taking which pixel range."""

  teacher_model: str = _flag("lenet5", f"One of {sorted(models.MODELS)}, a keras.applications "
                             "name, a package.module:function factory or a .keras file.")
  student_model: str = _flag("lenet5_half", f"One of {sorted(models.MODELS)}, a "
                             "keras.applications name, a package.module:function factory or a "
                             ".keras file.")
  teacher_weights: Optional[str] = _flag(None, "Weights file (model.load_weights) loaded into "
                                         "the teacher after building it: a pre-trained teacher.")
  student_weights: Optional[str] = _flag(None, "Weights file loaded into every student after "
                                         "building it.")
  teacher_finetune_epochs: int = _flag(
      0, "A pre-trained teacher (--teacher_model=<file>.keras or --teacher_weights) trains this "
      "many self-regulated epochs from its weights; their participation counts give the "
      "significance. 0: used as is, without significance (modes significance and hybrid are "
      "then refused).")
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
  teacher_dir: Optional[str] = _flag(None, "Reuse this run's (or teacher/ directory's) teacher "
                                     "and significance instead of training one.")


@dataclasses.dataclass(frozen=True)
class GateConfig:
  """Who takes part in each backward pass: the self-regulation rates, the gate
  policies and how margins are computed."""

  alpha: float = _flag(0.02, "Teacher self-regulation rate (float, or 'inf' for conventional "
                       "training).", kind="rate")
  distill_alpha: float = _flag(0.02, "Students' self-regulation rate (regulated and hybrid "
                               "modes).", kind="rate")
  gate: str = _flag(gates.DEFAULT, "The teacher's gate policy: "
                    + "; ".join(f"{p.name}: {p.summary}" for p in gates.POLICIES.values()) + ".",
                    choices=tuple(gates.POLICIES))
  distill_gate: str = _flag(gates.DEFAULT, "The gate policy of the self-regulating students "
                            "(regulated, hybrid); names as for --gate.",
                            choices=tuple(gates.POLICIES))
  gate_temperature: float = _flag(1.0, "Softmax temperature of a student's own gate (1 by "
                                  "default; Algorithm 3 literally uses tau).")
  backward: str = _flag("auto", "masked: backward on the whole batch with a 0/1 mask; compact: "
                        "backward on participants only; auto: per epoch from the previous "
                        "participation.", choices=BACKWARDS)
  infobatch_ratio: float = _flag(0.5, "InfoBatch's r: the fraction of below-mean-loss samples "
                                 "pruned each epoch, in [0, 1).")
  infobatch_delta: float = _flag(0.875, "InfoBatch's delta: prune in the first delta * epochs "
                                 "epochs, use all data after, in (0, 1].")
  sb_beta: float = _flag(1.0, "Selective Backprop's beta: keep probability = "
                         "percentile(loss)^beta, > 0.")
  keep_fraction: float = _flag(0.5, "The random gate's keep probability p, in (0, 1].")
  skip_idle_epochs: bool = _flag(True, "Skip epochs in which provably no sample takes part "
                                 "(compact gate only).")
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


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """How each stage trains: epochs, optimiser, the distillation objective and
  the runtime (strategy, replicas, compilation)."""

  modes: Tuple[str, ...] = _flag(("conventional", "significance", "regulated", "hybrid"),
                                 f"Distillation modes, a subset of {list(modes_lib.MODES)}.")
  epochs: int = _flag(200, "Teacher epochs (and distillation epochs by default).")
  distill_epochs: Optional[int] = _flag(None, "Distillation epochs (default: --epochs).")
  batch_size: int = _flag(512, "Global batch size.")
  teacher_lr: float = _flag(1e-3, "Adam learning rate of the teacher.")
  distill_lr: float = _flag(1e-2, "Adam learning rate of the students.")
  adam_epsilon: float = _flag(1e-7, "Adam's epsilon, every stage (Keras' default; PyTorch's, "
                              "which the paper used, is 1e-8).")
  temperature: float = _flag(20.0, "Distillation temperature tau.")
  kd_lambda: float = _flag(0.3, "Weight lambda of the hard-label cross-entropy.")
  kd_scale_temperature_squared: bool = _flag(
      True, "Scale the KD term by tau^2 (Hinton et al.; the paper is silent).")
  distillation_loss: Tuple[str, ...] = _flag(
      (distill_terms.PAPER_KD,), "The students' distillation loss; repeat the flag for a sum: "
      "logits (the paper's tau^2-scaled KL on the logits) or "
      "feature:TEACHER_LAYER,STUDENT_LAYER[,LOSS] (keras.distillation.FeatureDistillation, "
      f"LOSS one of {', '.join(distill_terms.FEATURE_LOSSES)}, default mse; channels that "
      "differ get a learned projection). Each term is computed per sample under the gate; "
      "their weighted sum replaces the KD term. Giving the flag replaces the default, so "
      "repeat --distillation_loss=logits to keep the paper's term; values from a flagfile "
      "and the command line add up.", kind="multi")
  distillation_loss_weights: Tuple[float, ...] = _flag(
      (), "One weight per --distillation_loss, in order (default 1 each).")
  distill_loss_normaliser: str = _flag(
      "participants", "Students: divide the gated loss sum by the number of participants "
      "(mean over participants), the batch size (mean over the batch) or the participants' "
      "summed significance weights (weighted mean); the paper is silent (docs/choices.md). "
      "The teacher always uses the mean over participants.", choices=LOSS_NORMALISERS)
  precise_bn_batches: int = _flag(
      100, "Networks with BatchNormalization: after training, recompute the moving mean and "
      "variance over this many training batches with the final weights (precise BN), before "
      "evaluation, the teacher's logits and export. 0: keep the moving averages.")
  eval_batch_size: int = _flag(2048, "Batch size for inference passes.")
  steps_per_execution: int = _flag(
      0, "Train steps per call into the compiled step (Keras' steps_per_execution). 0: a "
      "whole epoch per call, the fewest Python round trips (per-batch callbacks and the "
      "progress bar then update once per epoch); K > 0: the largest divisor of the "
      "epoch's step count not above K, so that no call straddles two epochs. Under "
      "--strategy=mirrored/multi_worker: always 1.")
  strategy: str = _flag("auto", "tf.distribute strategy.", choices=STRATEGIES)
  cpu_replicas: int = _flag(0, "Split the CPU into K logical devices (to exercise "
                            "MirroredStrategy without GPUs).")
  jit_compile: bool = _flag(False, "XLA-compile the train step (GPUs; slow on CPU).")
  deterministic: bool = _flag(False, "Enable TensorFlow op determinism (bit-identical reruns "
                              "and resumes; slower on GPUs).")

  @property
  def resolved_distill_epochs(self) -> int:
    """The students' epochs: `distill_epochs`, else `epochs`."""
    return self.distill_epochs if self.distill_epochs is not None else self.epochs


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
  """MLflow tracking and the Model Registry."""

  mlflow: bool = _flag(True, "Track the run in MLflow.")
  mlflow_experiment: Optional[str] = _flag(None, "MLflow experiment (default: the dataset).")
  mlflow_tracking_uri: Optional[str] = _flag(None, "MLflow tracking URI (default: "
                                             "$MLFLOW_TRACKING_URI, else MLflow's own default).")
  register_model: Optional[str] = _flag(
      None, "Register each student's MLflow model in the Model Registry as <NAME>-<mode>, "
      "with its TFLite files (--export) attached (needs --mlflow).")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """The students' TFLite export."""

  export: Tuple[str, ...] = _flag((), "Export every student to TFLite with these quantizations "
                                  f"({','.join(QUANTIZATIONS)}).")
  export_at_chance: bool = _flag(
      False, "Export (and --register_model) students whose test accuracy is not clearly above "
      "chance (left out by default).")
  qad_epochs: int = _flag(
      0, "With --export=int8: also fine-tune each student for K epochs with fake "
      "quantization (tensorflow-model-optimization) under its own distillation loss, "
      "significance and self-regulating gate, and export that as "
      "tflite/model_int8_qat.tflite (docs/export.md, quantization-aware distillation). "
      "0: post-training quantization only.")


def _group(cls):
  return dataclasses.field(default_factory=cls, metadata=dict(group=cls))


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything one run needs: the run-level settings and one group per concern.

  Build one from flat flag names with `Config.of(...)`; `tf_srkd.main` defines one
  flag per leaf field (`flag_specs()`).
  """

  stage: str = _flag("all", "Which stages to run.", choices=STAGES)
  output_dir: str = _flag("runs/mnist", "Output directory (default runs/<dataset>-<UTC time>).",
                          flag_default=None)
  overwrite: bool = _flag(False, "Move an existing --output_dir made with other settings aside "
                          "instead of refusing.")
  seed: int = _flag(0, "Seed for initialisation and the per-epoch shuffles.")
  verbose: int = _flag(2, "Keras fit verbosity: 0 silent, 1 a progress bar with ETA, 2 one line "
                       "per epoch (default: 1 when stdout is a terminal, else 2).",
                       flag_default=None)
  data: DataConfig = _group(DataConfig)
  models: ModelsConfig = _group(ModelsConfig)
  gating: GateConfig = _group(GateConfig)
  training: TrainingConfig = _group(TrainingConfig)
  tracking: TrackingConfig = _group(TrackingConfig)
  exporting: ExportConfig = _group(ExportConfig)

  @classmethod
  def of(cls, **settings) -> "Config":
    """The `Config` with these settings (flat flag names), the rest at their defaults.

    Raises:
      TypeError: a name that is no setting.
    """
    return cls().replace(**settings)

  def replace(self, **settings) -> "Config":
    """A copy with these settings (flat flag names) changed.

    Raises:
      TypeError: a name that is no setting.
    """
    run, by_group = {}, {}
    for name, value in settings.items():
      if name not in _GROUP_OF:
        raise TypeError(f"Config has no setting {name!r}")
      group = _GROUP_OF[name]
      (by_group.setdefault(group, {}) if group else run)[name] = value
    groups = {g: dataclasses.replace(getattr(self, g), **v) for g, v in by_group.items()}
    return dataclasses.replace(self, **run, **groups)

  def settings(self) -> Dict[str, object]:
    """Every setting by its flag name, in `flag_fields()` order."""
    return {field.name: getattr(getattr(self, group) if group else self, field.name)
            for group, field in flag_fields()}

  @property
  def experiment_name(self) -> str:
    """The MLflow experiment: `--mlflow_experiment`, else the dataset's name."""
    return self.tracking.mlflow_experiment or self.data.dataset


@functools.lru_cache(maxsize=None)
def flag_fields() -> Tuple[Tuple[Optional[str], dataclasses.Field], ...]:
  """(group attribute, or None for a run-level setting; its field) for every flag:
  the run-level settings first, then group by group."""
  out = []
  for field in dataclasses.fields(Config):
    group = field.metadata.get("group")
    if group is None:
      out.append((None, field))
    else:
      out.extend((field.name, leaf) for leaf in dataclasses.fields(group))
  return tuple(out)


#: The group attribute of every setting (None: run-level).
_GROUP_OF = {field.name: group for group, field in flag_fields()}

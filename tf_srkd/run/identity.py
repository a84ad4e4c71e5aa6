"""Which `Config` settings make up a run's identity, and its strict-JSON form.

A run directory records `identity(config)` in its `run_config.json`; a restart
resumes only when the current settings give the same identity. This module owns
the two tables behind that comparison: the fields that do not change what a stage
computes (a restart may change them freely), and the result-determining fields
added after runs were already written, left out at the value those runs used so
that the older run directories still match and resume. `tf_srkd.run.config`
re-exports `identity`.
"""

import math
from typing import Optional

from tf_srkd.core import gates


#: Fields that do not change what a stage computes: a restart may change them.
_NON_IDENTITY_FIELDS = frozenset({
    "stage", "overwrite", "verbose", "mlflow", "mlflow_experiment", "mlflow_tracking_uri",
    "export", "output_dir", "eval_batch_size", "download", "strategy", "cpu_replicas",
    "jit_compile", "teacher_dir", "modes", "deterministic",
    "max_in_memory_mb",  # In memory or on disk, the results are identical.
})
# Reusing exact margins changes how fast a stage runs, not what it computes.
_NON_IDENTITY_FIELDS = _NON_IDENTITY_FIELDS | {"reuse_margins"}
_NON_IDENTITY_FIELDS |= {"register_model"}  # Registering happens after every stage.
# Steps per compiled call change the Python round trips, not the steps.
_NON_IDENTITY_FIELDS |= {"steps_per_execution"}
# Whether an at-chance student is exported does not change any stage.
_NON_IDENTITY_FIELDS |= {"export_at_chance", "qad_epochs"}


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
_ADDED_IDENTITY_FIELDS = {"distill_loss_normaliser": "participants"}
# Gate policies (the defaults are the behaviour without them).
_ADDED_IDENTITY_FIELDS.update(gate=gates.DEFAULT, distill_gate=gates.DEFAULT, infobatch_ratio=0.5,
                              infobatch_delta=0.875, sb_beta=1.0, keep_fraction=0.5)
# Data settings (the defaults are the behaviour without them).
_ADDED_IDENTITY_FIELDS.update(train_split="train", test_split="test", image_size="", channels=0,
                              test_folder=None, validation_fraction=0.0)
# Models from any source.
_ADDED_IDENTITY_FIELDS.update(teacher_weights=None, student_weights=None,
                              teacher_finetune_epochs=0)
# Adam's epsilon (Keras' default, which runs without the flag used).
_ADDED_IDENTITY_FIELDS.update(adam_epsilon=1e-7)
# Input scaling and precise BN: at their defaults, every model built here computes what it
# did before them (precise BN changes only BatchNorm networks, none of the registry's).
_ADDED_IDENTITY_FIELDS.update(teacher_input="auto", student_input="auto", precise_bn_batches=100)
# Bounded-staleness margins: exact is the behaviour without them.
_ADDED_IDENTITY_FIELDS.update(margin_refresh="exact")
_NON_IDENTITY_FIELDS |= {"margin_audit"}  # An extra inference pass; the decisions are unchanged.
# keras.distillation losses: the paper's logit KD alone is the behaviour without them.
_ADDED_IDENTITY_FIELDS.update(distillation_loss=("logits",), distillation_loss_weights=())
#: Fields that matter only under `margin_refresh=bounded`.
_BOUNDED_ONLY_FIELDS = ("margin_max_age", "margin_band")


def identity(config: "tf_srkd.run.config.Config", teacher_digest: Optional[str] = None,
             model_files_digest: Optional[str] = None) -> dict:
  """The settings that determine a run's results, as strict-JSON values, for
  restart-compatibility checks.

  Args:
    config: the run's configuration.
    teacher_digest: the content hash of the `--teacher_dir` teacher's files
      (`checked_reads.digest`): the path alone would let another teacher at the same
      place, or at another one, reuse students distilled from the first. Absent
      (None) without `--teacher_dir`, so such runs keep their earlier identity.
    model_files_digest: the content hash of the `.keras` and weights files the
      model flags name (None without such files), for the same reason.
  """
  fields = {k: _json_value(v)
            for k, v in config.settings().items()
            if k not in _NON_IDENTITY_FIELDS
            and not (k in _ADDED_IDENTITY_FIELDS and v == _ADDED_IDENTITY_FIELDS[k])}
  if config.gating.margin_refresh == "exact":
    for name in _BOUNDED_ONLY_FIELDS:
      fields.pop(name, None)
  if all(w == 1.0 for w in config.training.distillation_loss_weights):  # 1 each is the default.
    fields.pop("distillation_loss_weights", None)
  if teacher_digest is not None:
    fields["teacher_sha256"] = teacher_digest
  if model_files_digest is not None:  # .keras / weights files of the model flags.
    fields["model_files_sha256"] = model_files_digest
  from tf_srkd.models import sources as model_sources  # pylint: disable=import-outside-toplevel

  if any(model_sources.kind_of(name) == "application"
         for name in (config.models.teacher_model, config.models.student_model)):
    # Applications fold their preprocessing in as Keras' own layers (other weights and
    # rounding than the earlier custom layer) and get precise BN: runs written before
    # are refused by name instead of failing on a checkpoint that no longer fits.
    fields["application_preprocessing"] = "keras_layers"
  return fields

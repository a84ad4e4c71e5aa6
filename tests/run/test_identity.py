"""A run's identity: the settings that decide its results, in strict JSON."""

import json

from tf_srkd.run import config as config_lib
from tf_srkd.run import identity


def _config(**overrides):
  return config_lib.Config.of(dataset="mnist", **overrides)


def test_the_identity_is_strict_json_with_infinite_rates_as_strings():
  fields = identity.identity(_config(alpha=float("inf"), modes=("hybrid",)))
  assert fields["alpha"] == "inf"
  json.dumps(fields, allow_nan=False)  # Raises on NaN or infinity.


def test_settings_that_do_not_change_results_are_not_in_it():
  base = identity.identity(_config())
  for change in (dict(verbose=0), dict(output_dir="/elsewhere"), dict(eval_batch_size=7),
                 dict(modes=("regulated",)), dict(max_in_memory_mb=1.0), dict(reuse_margins=False)):
    assert identity.identity(_config(**change)) == base, change


def test_settings_that_change_results_are():
  base = identity.identity(_config())
  for change in (dict(seed=1), dict(epochs=3), dict(alpha=0.5), dict(batch_size=32),
                 dict(gate="random"), dict(adam_epsilon=1e-3)):
    assert identity.identity(_config(**change)) != base, change


def test_fields_added_later_are_left_out_at_the_value_older_runs_used():
  fields = identity.identity(_config())
  assert "gate" not in fields and "distill_loss_normaliser" not in fields
  assert identity.identity(_config(gate="random"))["gate"] == "random"


def test_file_digests_join_the_identity():
  fields = identity.identity(_config(), teacher_digest="abc", model_files_digest="def")
  assert (fields["teacher_sha256"], fields["model_files_sha256"]) == ("abc", "def")
  assert "teacher_sha256" not in identity.identity(_config())


def test_the_staleness_bound_is_identity_only_when_bounded():
  base = identity.identity(_config())
  assert identity.identity(_config(margin_max_age=99, margin_band=0.5)) == base
  assert identity.identity(_config(margin_audit=True, margin_refresh="bounded")) == (
      identity.identity(_config(margin_refresh="bounded")))
  bounded = identity.identity(_config(margin_refresh="bounded"))
  assert bounded != base and bounded["margin_refresh"] == "bounded"
  assert identity.identity(_config(margin_refresh="bounded", margin_max_age=4)) != bounded
  assert identity.identity(_config(margin_refresh="bounded", margin_band=0.2)) != bounded

"""The package's foundation: the registry helper and the one bad-input exception."""

import dataclasses

import pytest

from tf_srkd import errors
from tf_srkd import registry


@dataclasses.dataclass(frozen=True)
class _Spec:
  name: str


def test_by_name_keeps_order_and_refuses_duplicates():
  table = registry.by_name(_Spec("b"), _Spec("a"))
  assert list(table) == ["b", "a"]
  with pytest.raises(ValueError, match="'a' is registered twice"):
    registry.by_name(_Spec("a"), _Spec("a"))


def test_lookup_names_the_kind_and_the_known_names():
  table = registry.by_name(_Spec("b"), _Spec("a"))
  assert registry.lookup(table, "a", "mode") == _Spec("a")
  with pytest.raises(KeyError, match=r"unknown mode 'c'; expected one of \['a', 'b'\]"):
    registry.lookup(table, "c", "mode")


def test_config_error_is_a_value_error_everywhere_it_is_raised():
  from tf_srkd.run import config as config_lib  # pylint: disable=import-outside-toplevel

  assert issubclass(errors.ConfigError, ValueError)
  assert config_lib.ConfigError is errors.ConfigError


def test_every_kind_of_failure_has_one_type_importable_where_it_is_raised():
  import importlib  # pylint: disable=import-outside-toplevel

  raised_in = {
      "ConfigError": "tf_srkd.run.config", "FlagfileError": "tf_srkd.cli.flagfiles",
      "DatasetError": "tf_srkd.data.specs", "DataError": "tf_srkd.data.arrays",
      "InputContractError": "tf_srkd.models.input_contract", "RunDirBusy": "tf_srkd.storage.run_lock",
      "StoreError": "tf_srkd.tracking.mlflow_store", "TrackingError": "tf_srkd.tracking.mlflow_tracking",
      "ReportError": "tf_srkd.reporting.records", "ExportError": "export.errors",
  }
  defined = {name for name, value in vars(errors).items()
             if isinstance(value, type) and issubclass(value, Exception)}
  assert defined == set(raised_in)
  for name, module in raised_in.items():
    assert getattr(importlib.import_module(module), name) is getattr(errors, name), name
    assert getattr(errors, name).__doc__, name

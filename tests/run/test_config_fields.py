"""`config_fields`: the one list of settings, whose defaults are themselves valid."""

import math

from tf_srkd.run import config as config_lib
from tf_srkd.run import config_fields


def test_config_is_one_class_re_exported():
  assert config_lib.Config is config_fields.Config
  assert config_lib.STAGES == config_fields.STAGES


def test_every_default_is_a_value_its_flag_accepts():
  for _, field in config_fields.flag_fields():
    meta = field.metadata
    assert meta["help"].strip(), field.name
    if meta.get("choices"):
      assert field.default in meta["choices"], field.name
    if meta.get("kind") == "multi":
      assert isinstance(field.default, tuple) and field.default, field.name
    if meta.get("kind") == "rate":
      assert field.default >= 0 or math.isinf(field.default), field.name


def test_the_defaults_pass_every_rule(tmp_path):
  config = config_fields.Config.of(output_dir=str(tmp_path / "out"))
  assert config_lib.validate(config) is config

"""Files read back from a run directory: every defect is one `ConfigError` naming the file."""

import json

import numpy as np
import pytest

from tf_srkd.errors import ConfigError
from tf_srkd.storage import checked_reads


def _npy(tmp_path, array, name="a.npy"):
  path = tmp_path / name
  np.save(path, array)
  return str(path)


def test_a_good_array_comes_back_unchanged(tmp_path):
  array = np.array([0.0, 0.5, 1.0], np.float32)
  got = checked_reads.load_array(_npy(tmp_path, array), kinds=checked_reads.FLOAT_KINDS,
                                 length=3, low=0, high=1)
  np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("array,kwargs,words", [
    (np.array([1, 2, 3]), dict(kinds="f", length=3), "expected floating-point"),
    (np.array([0.5, 0.5]), dict(kinds="f", length=3), "has shape (2,), expected (3,)"),
    (np.zeros((3, 1)), dict(kinds="f", length=None), "expected a 1-D array"),
    (np.array([0.0, np.nan]), dict(kinds="f", length=2), "NaN or infinite"),
    (np.array([0.0, 1.5]), dict(kinds="f", length=2, low=0, high=1), "expected within [0, 1]"),
    (np.array([-1, 2]), dict(kinds="iu", length=2, low=0), "values span [-1, 2]"),
])
def test_a_bad_array_is_refused_naming_the_file_and_the_defect(tmp_path, array, kwargs, words):
  path = _npy(tmp_path, array)
  with pytest.raises(ConfigError) as error:
    checked_reads.load_array(path, **kwargs)
  assert str(error.value).startswith(path) and words in str(error.value)


def test_pickles_and_garbage_are_never_loaded(tmp_path):
  pickled = _npy(tmp_path, np.array([{"a": 1}], dtype=object), "pickled.npy")
  with pytest.raises(ConfigError, match="pickled data"):
    checked_reads.load_array(pickled, kinds="f", length=None)
  garbage = tmp_path / "garbage.npy"
  garbage.write_bytes(b"\x93NUMPY truncated")
  with pytest.raises(ConfigError, match="garbage.npy: unreadable"):
    checked_reads.load_array(str(garbage), kinds="f", length=None)
  with pytest.raises(ConfigError, match="missing"):
    checked_reads.load_array(str(tmp_path / "absent.npy"), kinds="f", length=None)


def test_read_json_is_strict_and_typed(tmp_path):
  good = tmp_path / "good.json"
  good.write_text(json.dumps({"a": 1}))
  assert checked_reads.read_json(str(good)) == {"a": 1}
  nan = tmp_path / "nan.json"
  nan.write_text('{"a": NaN}')
  with pytest.raises(ConfigError, match="NaN is not strict JSON"):
    checked_reads.read_json(str(nan))
  listed = tmp_path / "list.json"
  listed.write_text("[1]")
  with pytest.raises(ConfigError, match="expected a JSON dict, found list"):
    checked_reads.read_json(str(listed))
  assert checked_reads.read_json(str(listed), list) == [1]
  with pytest.raises(ConfigError, match="missing"):
    checked_reads.read_json(str(tmp_path / "absent.json"))


def test_the_digest_sees_names_contents_and_order_and_skips_absent_files(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  a.write_bytes(b"xy")
  b.write_bytes(b"z")
  base = checked_reads.digest([str(a), str(b)])
  assert checked_reads.digest([str(a), str(b), str(tmp_path / "absent")]) == base
  assert checked_reads.digest([str(b), str(a)]) != base
  # The same bytes split differently between two files hash differently.
  a.write_bytes(b"x")
  b.write_bytes(b"yz")
  assert checked_reads.digest([str(a), str(b)]) != base

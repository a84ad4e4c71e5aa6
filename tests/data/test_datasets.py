"""Resolving --dataset: any TFDS builder from its info, image folders, splits, --image_size.

Every refusal is one ConfigError line naming the flag, dataset or file, raised
by `config.validate` before anything is written.
"""


import numpy as np
import pytest

from tests.support import own_data_helpers as helpers
from tf_srkd.run import config as config_lib
from tf_srkd.data import datasets
from tf_srkd.data import image_folders
from tf_srkd.data import tfds_specs


def refusal(tmp_path, **overrides):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(helpers.tiny_config(tmp_path, **overrides))
  assert not (tmp_path / "out").exists()
  message = str(e.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("text,expected", [
    ("", None), ("96,96", (96, 96)), ("32", (32, 32)), (" 24, 40 ", (24, 40))])
def test_image_size_parses(text, expected):
  assert datasets.parse_image_size(text) == expected


@pytest.mark.parametrize("text", ["0,5", "a,b", "1,2,3", "-4,4", "5000,5"])
def test_bad_image_size_names_the_flag(text):
  with pytest.raises(datasets.DatasetError, match=r"^--image_size="):
    datasets.parse_image_size(text)


def test_registered_datasets_keep_their_table_specs():
  for name, spec in datasets.DATASETS.items():
    assert datasets.resolve(name) is spec
  resized = datasets.resolve("mnist", image_size="20,22")
  assert resized.image_shape == (20, 22, 1) and resized.image_size == (20, 22)
  assert resized.class_names == datasets.DATASETS["mnist"].class_names


def test_tfds_builder_spec_comes_from_its_info(tmp_path):
  spec = config_lib.dataset_spec(config_lib.validate(helpers.tiny_config(tmp_path, dataset="cifar100:3.0.2")))
  assert (spec.image_shape, spec.num_classes, spec.builder) == ((32, 32, 3), 100, "cifar100:3.0.2")
  emnist = datasets.resolve("emnist/balanced")
  assert (emnist.image_shape, emnist.num_classes) == ((28, 28, 1), 47)


def test_sliced_splits_of_a_prepared_dataset_have_their_sizes():
  spec = datasets.resolve("mnist", train_split="train[:10%]", test_split="train[90%:]")
  assert (spec.train_size, spec.test_size) == (6000, 6000)


@pytest.mark.parametrize("overrides,expected", [
    ({"dataset": "cifr100"}, "--dataset=cifr100: unknown TFDS dataset; closest known: cifar100"),
    ({"dataset": "imdb_reviews"}, "--dataset=imdb_reviews: not an image-classification dataset: "
                                  "no 'image' feature"),
    ({"dataset": "tf_flowers"}, "pass --image_size=H,W"),
    ({"dataset": "mnist", "test_split": "tset"}, "--test_split=tset: not a split of mnist"),
    ({"dataset": "mnist", "train_split": "valid[:5]"}, "--train_split=valid[:5]: not a split"),
    ({"dataset": "mnist", "test_folder": "/tmp"}, "--test_folder=/tmp: only for"),
    ({"dataset": "mnist", "image_size": "7,x"}, "--image_size=7,x"),
    ({"dataset": "folder:/no/such/dir"}, "--dataset=folder:/no/such/dir: not a directory"),
])
def test_each_bad_dataset_is_one_line_naming_it(tmp_path, overrides, expected):
  assert expected in refusal(tmp_path, **overrides)


class _Splits(dict):
  """`info.splits` of a builder with only a train split."""


class _Info:
  splits = _Splits(train=type("S", (), {"num_examples": 10})())


def test_missing_test_split_shows_the_fix():
  with pytest.raises(datasets.DatasetError) as e:
    tfds_specs.split_size(_Info(), "tf_flowers", "test_split", "test")
  assert str(e.value) == ("--dataset=tf_flowers: has no 'test' split (it has: train); hold part "
                          "of a split out, e.g. --train_split='train[:85%]' "
                          "--test_split='train[85%:]'")


def test_label_must_be_a_class_label():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(8, 8, 3)),
                                         "label": tfds.features.Tensor(shape=(), dtype=np.int64)})
  with pytest.raises(datasets.DatasetError, match=r"^--dataset=x: its 'label' feature is a "
                                                   "Tensor, not a ClassLabel"):
    tfds_specs.check_features("x", features)
  good = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(8, 8, 1)),
                                     "label": tfds.features.ClassLabel(names=["a", "b"])})
  assert tfds_specs.check_features("x", good) == ((8, 8, 1), ("a", "b"))


# -- image folders ------------------------------------------------------------------


def test_folder_spec_sorted_classes_files_and_channel_rule(tmp_path):
  root = helpers.make_folder(tmp_path / "photos")
  spec = datasets.resolve(f"folder:{root}", image_size="16,16", validation_fraction=0.25, seed=3)
  assert spec.class_names == ("cat", "dog", "emu")
  assert spec.image_shape == (16, 16, 3)  # Some colour: RGB.
  assert (spec.train_size, spec.test_size) == (14, 4)
  index = image_folders.scan(root)
  assert list(index.files) == sorted(index.files)
  train, train_labels = image_folders.split_files(spec, "train")
  test, _ = image_folders.split_files(spec, "test")
  assert sorted(set(train) | set(test)) == list(index.files) and not set(train) & set(test)
  assert train == sorted(train) and list(train_labels) == [index.labels[index.files.index(f)]
                                                           for f in train]
  grey = datasets.resolve(f"folder:{root}", image_size="16,16", validation_fraction=0.25,
                          seed=3, channels=1)
  assert grey.image_shape == (16, 16, 1)
  other_seed = datasets.resolve(f"folder:{root}", image_size="16,16", validation_fraction=0.25,
                                seed=4)
  assert image_folders.split_files(other_seed, "test")[0] != test


def test_folder_refusals_name_the_flag_or_file(tmp_path):
  root = helpers.make_folder(tmp_path / "photos", per_class=2)
  name = f"folder:{root}"
  assert "pass --image_size=H,W" in refusal(tmp_path, dataset=name, validation_fraction=0.5)
  assert "needs test data" in refusal(tmp_path, dataset=name, image_size="16,16")
  assert "--channels=2" in refusal(tmp_path, dataset=name, image_size="16,16", channels=2,
                                   validation_fraction=0.5)
  one = helpers.make_folder(tmp_path / "one", classes=("only",))
  assert "expected at least 2" in refusal(tmp_path, dataset=f"folder:{one}", image_size="8,8",
                                          validation_fraction=0.5)
  other = helpers.make_folder(tmp_path / "other", classes=("cat", "cow"), per_class=1)
  assert "the training folder has" in refusal(tmp_path, dataset=name, image_size="8,8",
                                              test_folder=other)
  bad = tmp_path / "bad"
  helpers.make_folder(bad, per_class=2)
  (bad / "dog" / "notes.txt").write_text("not an image")
  message = refusal(tmp_path, dataset=f"folder:{bad}", image_size="8,8", validation_fraction=0.5)
  assert message.startswith(str(bad / "dog" / "notes.txt")) and "not an image" in message


def test_a_truncated_image_is_named_when_read(tmp_path):
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel

  root = tmp_path / "trunc"
  helpers.make_folder(root, per_class=2, sizes=((16, 16),))
  victim = root / "dog" / "img_01.png"
  victim.write_bytes(victim.read_bytes()[:60])  # The header survives, the pixels do not.
  spec = datasets.resolve(f"folder:{root}", validation_fraction=0.5)
  with pytest.raises(data.DataError) as e:
    for role in ("train", "test"):
      data.load_split(spec, role)
  assert str(e.value).startswith(str(victim))


def test_resize_keeps_the_aspect_by_centre_crop():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from tf_srkd.data import sources  # pylint: disable=import-outside-toplevel

  spec = datasets.resized(datasets.DatasetSpec("x", (None, None, 1), ("a", "b"), 1, 1), (4, 4))
  image = np.zeros((8, 16, 1), np.uint8)
  image[:, 4:12] = 200  # The centre square; the side bands are cropped away.
  out = sources.resizer(spec)(tf.constant(image)).numpy()
  assert out.dtype == np.uint8 and out.shape == (4, 4, 1)
  np.testing.assert_array_equal(out, np.full((4, 4, 1), 200, np.uint8))


@pytest.mark.parametrize("name,expected", [
    ("mnist", "mnist"), ("emnist/balanced", "emnist-balanced"), ("cifar100:3.0.2", "cifar100-3.0.2"),
    ("folder:/data/my photos/", "folder-my-photos")])
def test_dataset_slug_for_default_run_directories(name, expected):
  assert datasets.slug(name) == expected

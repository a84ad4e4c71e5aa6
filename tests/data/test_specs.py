"""What a dataset is to the pipeline: the registered table, names and image sizes."""

import pytest

from tf_srkd.data import specs


def test_the_shipped_datasets_are_registered_with_their_shapes():
  mnist = specs.get_dataset_spec("mnist")
  assert (mnist.image_shape, mnist.num_classes) == ((28, 28, 1), 10)
  assert specs.get_dataset_spec("cifar10").image_shape == (32, 32, 3)
  with pytest.raises(KeyError, match="unknown dataset 'nope'; expected one of"):
    specs.get_dataset_spec("nope")


@pytest.mark.parametrize("name,expected", [
    ("mnist", "mnist"), ("emnist/balanced", "emnist-balanced"),
    ("folder:/a/photos/", "folder-photos"), ("///", "dataset")])
def test_slug_is_one_file_name_component(name, expected):
  assert specs.slug(name) == expected


@pytest.mark.parametrize("text,expected", [("", None), ("96", (96, 96)), ("64,32", (64, 32)),
                                           ("64x32", (64, 32))])
def test_image_size_parses(text, expected):
  assert specs.parse_image_size(text) == expected


@pytest.mark.parametrize("text", ["a,b", "0,5", "1,2,3", "5000"])
def test_a_bad_image_size_names_the_flag(text):
  with pytest.raises(specs.DatasetError, match=f"--image_size={text}: expected H,W"):
    specs.parse_image_size(text)


def test_resized_changes_only_the_image_shape():
  mnist = specs.get_dataset_spec("mnist")
  small = specs.resized(mnist, (14, 12))
  assert small.image_shape == (14, 12, 1) and small.num_classes == mnist.num_classes
  assert specs.resized(mnist, None) is mnist

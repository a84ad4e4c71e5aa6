"""A `DatasetSpec` for any TFDS image-classification builder, from its `info`.

The builder must have an `image` feature (uint8, known channel count) and a
`label` feature that is a `ClassLabel`; shape, class names and split sizes come
from `tfds.builder(name).info`, never from a table. Split strings are TFDS's
own (`train`, `train[:85%]`, `train[:1000]+validation`). When the builder's
split metadata is unknown (not prepared yet, or under `tfds.testing.mock_data`)
the sizes stay None and are learnt when the split is read.
"""

import difflib

import numpy as np

from tf_srkd.data import specs as datasets
from tf_srkd.data.specs import DatasetError

#: Example of the fix shown when a dataset has no `test` split.
_SPLIT_FIX = "--train_split='train[:85%]' --test_split='train[85%:]'"


def _closest(name: str) -> str:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  base = name.split(":")[0].split("/")[0]
  known = sorted(set(tfds.list_builders()) | set(datasets.DATASETS))
  matches = difflib.get_close_matches(base, known, n=5, cutoff=0.6)
  return ("closest known: " + ", ".join(matches)) if matches else (
      "see `tfds.list_builders()`, or use folder:PATH for a folder of images")


def builder(name: str, download: bool = False):
  """`tfds.builder(name)`, an unknown name refused with the closest known names.

  Raises:
    DatasetError: unknown builder, config or version.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  try:
    result = tfds.builder(name)
  except Exception as e:  # pylint: disable=broad-except  (DatasetNotFoundError, ValueError, ...)
    first = " ".join(str(e).split())[:160]
    if "not found" in str(e).lower() or type(e).__name__ == "DatasetNotFoundError":
      raise DatasetError(f"--dataset={name}: unknown TFDS dataset; {_closest(name)}") from e
    raise DatasetError(f"--dataset={name}: {first}") from e
  if download and not result.info.splits:
    result.download_and_prepare()
  return result


def split_size(info, name: str, flag: str, split: str):
  """Examples in `split` per the builder's metadata (None when unknown).

  Raises:
    DatasetError: the split (or a part of it) does not exist; for a missing
      default `test` split the message shows the fix.
  """
  if not info.splits:
    return None
  try:
    return int(info.splits[split].num_examples)
  except Exception as e:  # pylint: disable=broad-except  (KeyError, ValueError, AssertionError)
    available = ", ".join(sorted(info.splits))
    if flag == "test_split" and split == "test":
      raise DatasetError(f"--dataset={name}: has no 'test' split (it has: {available}); hold "
                         f"part of a split out, e.g. {_SPLIT_FIX}") from e
    raise DatasetError(f"--{flag}={split}: not a split of {name} (it has: {available}; "
                       "TFDS slices such as 'train[:85%]' are allowed)") from e


def check_features(name: str, features):
  """(image shape as stored, class names) of an image-classification feature dict.

  Raises:
    DatasetError: no `image` or `label` feature, a label that is not a
      `ClassLabel`, or images that are not uint8 with a known channel count.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  keys = sorted(getattr(features, "keys", lambda: [])())
  for key in ("image", "label"):
    if key not in keys:
      raise DatasetError(f"--dataset={name}: not an image-classification dataset: no '{key}' "
                         f"feature (it has: {', '.join(keys) or 'none'})")
  image, label = features["image"], features["label"]
  if not isinstance(label, tfds.features.ClassLabel):
    raise DatasetError(f"--dataset={name}: its 'label' feature is a {type(label).__name__}, "
                       "not a ClassLabel (class names and count unknown)")
  if not isinstance(image, tfds.features.Image):
    raise DatasetError(f"--dataset={name}: its 'image' feature is a {type(image).__name__}, "
                       "not an Image")
  shape = tuple(image.shape)
  if len(shape) != 3 or shape[-1] not in (1, 3):
    raise DatasetError(f"--dataset={name}: images of shape {shape}; expected height, width "
                       "and 1 or 3 channels")
  dtype = getattr(image, "np_dtype", None)
  if dtype is not None and np.dtype(dtype) != np.uint8:
    raise DatasetError(f"--dataset={name}: images are {dtype}, expected uint8")
  if label.num_classes is None or label.num_classes < 2:
    raise DatasetError(f"--dataset={name}: its label has {label.num_classes} classes, "
                       "expected at least 2")
  return shape, tuple(label.names)


def tfds_spec(name: str, train_split: str, test_split: str, image_size, *,
              download: bool = False) -> datasets.DatasetSpec:
  """The spec of TFDS builder `name` (`name[/config][:version]`) at these splits.

  Args:
    name: the builder string.
    train_split, test_split: TFDS split strings.
    image_size: (H, W) to resize to, or None.
    download: prepare the dataset first when its metadata is missing.

  Raises:
    DatasetError: see `builder`, `check_features`, `split_size`; images of
      varying size without `--image_size`.
  """
  info = builder(name, download).info
  shape, class_names = check_features(name, info.features)
  if image_size is None and None in shape[:2]:
    raise DatasetError(f"--dataset={name}: images vary in size {shape}; pass --image_size=H,W "
                       "to resize them")
  spec = datasets.DatasetSpec(
      name=name, image_shape=shape, class_names=class_names,
      train_size=split_size(info, name, "train_split", train_split),
      test_size=split_size(info, name, "test_split", test_split), source="tfds",
      train_split=train_split, test_split=test_split, location=name)
  return datasets.resized(spec, image_size)

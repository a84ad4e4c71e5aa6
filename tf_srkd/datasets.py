"""The datasets a run can use, resolved by name into one `DatasetSpec`.

`--dataset` takes
  * one of the registered names below (mnist, fashion_mnist, cifar10): a fixed
    table, so the default runs need no TFDS metadata and keep their behaviour;
  * any TFDS image-classification builder, optionally with a config and a
    version (`emnist/balanced`, `cifar100:3.0.2`): shape, classes and split
    sizes come from the builder's `info` (`tf_srkd.tfds_specs`);
  * `folder:PATH`, a tree with one sub-folder per class (`tf_srkd.image_folders`).

This module imports no TensorFlow: the registered datasets at their default
splits resolve from the table alone, and the other sources import theirs lazily.
"""

import dataclasses
import functools
import os
import re
from typing import Optional, Tuple

from tf_srkd import registry

#: The `--dataset` prefix of an image folder.
FOLDER_PREFIX = "folder:"


class DatasetError(ValueError):
  """A dataset that cannot be used as configured; the message names the flag or file."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline needs to know about an image-classification dataset.

  Attributes:
    name: the `--dataset` value (registry name, TFDS builder or `folder:PATH`).
    image_shape: (height, width, channels) of one uint8 image as the models
      see it: after `--image_size` resizing, if any.
    class_names: human-readable class names, index = label.
    train_size: examples in the resolved train split (None: not known before
      the split is read, e.g. a TFDS dataset that is not prepared yet).
    test_size: examples in the resolved test split (None: not known).
    source: "tfds" or "folder".
    train_split: the TFDS split string (or folder role) of the transfer set.
    test_split: the TFDS split string of the test set.
    image_size: (height, width) to resize to, or None (images used as stored).
    location: the TFDS builder string, or the image folder's path.
    test_location: a folder source's `--test_folder`, else None.
    validation_fraction: a folder source's held-out fraction (no test folder).
    seed: the seed of that hold-out.
  """

  name: str
  image_shape: tuple
  class_names: tuple
  train_size: Optional[int]
  test_size: Optional[int]
  source: str = "tfds"
  train_split: str = "train"
  test_split: str = "test"
  image_size: Optional[Tuple[int, int]] = None
  location: Optional[str] = None
  test_location: Optional[str] = None
  validation_fraction: float = 0.0
  seed: int = 0

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def builder(self) -> str:
    """The TFDS builder string (`name[/config][:version]`)."""
    return self.location or self.name


DATASETS = registry.by_name(
    DatasetSpec(
        name="mnist",
        image_shape=(28, 28, 1),
        class_names=tuple(str(d) for d in range(10)),
        train_size=60000,
        test_size=10000,
    ),
    DatasetSpec(
        name="fashion_mnist",
        image_shape=(28, 28, 1),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        train_size=60000,
        test_size=10000,
    ),
    DatasetSpec(
        name="cifar10",
        image_shape=(32, 32, 3),
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog",
                     "frog", "horse", "ship", "truck"),
        train_size=50000,
        test_size=10000,
    ),
)


def get_dataset_spec(name: str) -> DatasetSpec:
  """Returns the registered spec for `name`.

  Raises:
    KeyError: if `name` is not registered; the message lists the known names.
  """
  return registry.lookup(DATASETS, name, "dataset")


def slug(name: str) -> str:
  """`--dataset` as one file-name component (default run directories): `folder:/a/photos`
  -> `folder-photos`, `emnist/balanced` -> `emnist-balanced`."""
  if name.startswith(FOLDER_PREFIX):
    name = "folder-" + os.path.basename(os.path.normpath(name[len(FOLDER_PREFIX):]))
  return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "dataset"


def parse_image_size(text: str) -> Optional[Tuple[int, int]]:
  """`--image_size`: "" (no resizing) or "H,W" (or a single "S" for S,S).

  Raises:
    DatasetError: anything else.
  """
  text = (text or "").strip()
  if not text:
    return None
  parts = [p.strip() for p in text.replace("x", ",").split(",")]
  try:
    sizes = [int(p) for p in parts]
  except ValueError:
    sizes = []
  if len(sizes) == 1:
    sizes = sizes * 2
  if len(sizes) != 2 or min(sizes) < 1 or max(sizes) > 4096:
    raise DatasetError(f"--image_size={text}: expected H,W (two integers in 1..4096, e.g. 96,96)")
  return tuple(sizes)


def resized(spec: DatasetSpec, image_size: Optional[Tuple[int, int]]) -> DatasetSpec:
  """`spec` with its images resized to `image_size` (None: unchanged)."""
  if image_size is None:
    return spec
  return dataclasses.replace(spec, image_shape=(*image_size, spec.image_shape[-1]),
                             image_size=tuple(image_size))


@functools.lru_cache(maxsize=32)
def resolve(name: str, *, train_split: str = "train", test_split: str = "test",
            image_size: str = "", channels: int = 0, test_folder: Optional[str] = None,
            validation_fraction: float = 0.0, seed: int = 0,
            download: bool = False) -> DatasetSpec:
  """The spec of `--dataset=name` under the run's data settings (cached per settings).

  Args:
    name: a registered name, a TFDS builder string, or `folder:PATH`.
    train_split, test_split: TFDS split strings (slices and percentages allowed).
    image_size: `--image_size` ("" or "H,W").
    channels: a folder's channel count (0: 3 if any image has colour, else 1).
    test_folder: a folder source's test tree.
    validation_fraction: a folder source's held-out fraction when no test tree.
    seed: the seed of that hold-out.
    download: whether TFDS may download and prepare a missing dataset.

  Raises:
    DatasetError: naming the flag, dataset or file that cannot be used.
  """
  size = parse_image_size(image_size)
  if name.startswith(FOLDER_PREFIX):
    from tf_srkd import image_folders  # pylint: disable=import-outside-toplevel
    return image_folders.folder_spec(name, size, channels=channels, test_folder=test_folder,
                                     validation_fraction=validation_fraction, seed=seed)
  for flag, value in (("test_folder", test_folder), ("validation_fraction", validation_fraction)):
    if value:
      raise DatasetError(f"--{flag}={value}: only for --dataset={FOLDER_PREFIX}PATH")
  if name in DATASETS and (train_split, test_split) == ("train", "test"):
    return resized(DATASETS[name], size)
  from tf_srkd import tfds_specs  # pylint: disable=import-outside-toplevel
  return tfds_specs.tfds_spec(name, train_split, test_split, size, download=download)


def resolve_settings(settings: dict, dataset: Optional[str] = None) -> DatasetSpec:
  """`resolve` from a run's recorded settings (`run_config.json`, flag values).

  Settings a run did not record keep their defaults.
  """
  def get(key, default):
    value = settings.get(key)
    return default if value in (None, "None") else value  # MLflow params are strings.

  return resolve(dataset or settings["dataset"], train_split=get("train_split", "train"),
                 test_split=get("test_split", "test"), image_size=get("image_size", ""),
                 channels=int(get("channels", 0)), test_folder=get("test_folder", None),
                 validation_fraction=float(get("validation_fraction", 0.0)),
                 seed=int(get("seed", 0)))

"""What a dataset is to the pipeline: `DatasetSpec`, its error, and the registered table.

The lowest layer of the data side: `datasets.resolve` (by name), `image_folders`
and `tfds_specs` (the other sources) all build on it, and it imports none of them.
It imports no TensorFlow.
"""

import dataclasses
import os
import re
from typing import Optional, Tuple

from tf_srkd import registry
from tf_srkd.errors import DatasetError  # pylint: disable=unused-import  (raised here; see errors)

#: The `--dataset` prefix of an image folder.
FOLDER_PREFIX = "folder:"


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

"""The datasets a run can use, resolved by name into one `DatasetSpec`.

`--dataset` takes
  * one of the registered names below (mnist, fashion_mnist, cifar10): a fixed
    table, so the default runs need no TFDS metadata and keep their behaviour;
  * any TFDS image-classification builder, optionally with a config and a
    version (`emnist/balanced`, `cifar100:3.0.2`): shape, classes and split
    sizes come from the builder's `info` (`tf_srkd.data.tfds_specs`);
  * `folder:PATH`, a tree with one sub-folder per class (`tf_srkd.data.image_folders`).

This module imports no TensorFlow: the registered datasets at their default
splits resolve from the table alone, and the other sources import theirs lazily.
"""

import functools
from typing import Optional

from tf_srkd.data import specs as dataset_specs
# The spec type, its error and the table live one layer down (`specs`), where
# the sources below `resolve` find them; they stay importable from here.
from tf_srkd.data.specs import DATASETS  # pylint: disable=unused-import
from tf_srkd.data.specs import FOLDER_PREFIX
from tf_srkd.data.specs import DatasetError
from tf_srkd.data.specs import DatasetSpec
from tf_srkd.data.specs import get_dataset_spec  # pylint: disable=unused-import
from tf_srkd.data.specs import parse_image_size
from tf_srkd.data.specs import resized
from tf_srkd.data.specs import slug  # pylint: disable=unused-import


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
    from tf_srkd.data import image_folders  # pylint: disable=import-outside-toplevel
    return image_folders.folder_spec(name, size, channels=channels, test_folder=test_folder,
                                     validation_fraction=validation_fraction, seed=seed)
  for flag, value in (("test_folder", test_folder), ("validation_fraction", validation_fraction)):
    if value:
      raise DatasetError(f"--{flag}={value}: only for --dataset={FOLDER_PREFIX}PATH")
  if name in DATASETS and (train_split, test_split) == ("train", "test"):
    return resized(DATASETS[name], size)
  from tf_srkd.data import tfds_specs  # pylint: disable=import-outside-toplevel
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

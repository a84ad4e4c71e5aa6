"""`--dataset=folder:PATH`: a tree with one sub-folder per class, as a `DatasetSpec`.

The layout is the one `keras.utils.image_dataset_from_directory` reads:
PATH/<class>/.../<image>. Classes are the sub-folder names sorted; files are
listed recursively and sorted by their path relative to the class folder, so
sample id i (the i-th training file in that order) is the same on every run and
machine. Hidden entries (names starting with '.') and files directly in PATH
are ignored; every other file must be a JPEG, PNG, BMP or GIF image, or the
folder is refused naming the file (never a silent skip).

Channels: with `--channels=0` (default) images are RGB if any image of the
train or test folder has colour, else greyscale; greyscale images are then
repeated to RGB, colour ones converted to luma (ITU-R 601), alpha dropped.

Test data: `--test_folder=PATH` (same classes), else a seeded hold-out of
`--validation_fraction` of the files (the held-out files leave the train list,
which keeps its sorted order). One of the two is required.

Reading only headers here (Pillow), the scan is cheap; decoding is TensorFlow's
(`tf_srkd.data.arrays`).
"""

import dataclasses
import functools
import os
from typing import Optional, Tuple

import numpy as np

from tf_srkd.data import specs as datasets
from tf_srkd.data.specs import DatasetError

#: Pillow formats TensorFlow's `decode_image` reads.
FORMATS = ("JPEG", "PNG", "BMP", "GIF")
#: Pillow modes without colour.
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  """One scanned tree: class names, files in sample order, their labels and pixel traits."""

  class_names: Tuple[str, ...]
  files: Tuple[str, ...]
  labels: Tuple[int, ...]
  sizes: frozenset  # {(height, width)}
  has_colour: bool


def _inspect(path: str):
  """((height, width), has_colour) of one image file, from its header.

  Raises:
    DatasetError: naming the file: unreadable, not an image, or another format.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel

  try:
    with Image.open(path) as image:
      image_format, mode, (width, height) = image.format, image.mode, image.size
  except Exception as e:  # pylint: disable=broad-except  (UnidentifiedImageError, OSError)
    raise DatasetError(f"{path}: unreadable or not an image ({type(e).__name__}); a class "
                       f"folder may hold only {'/'.join(FORMATS)} files") from e
  if image_format not in FORMATS:
    raise DatasetError(f"{path}: a {image_format} image; expected one of {'/'.join(FORMATS)}")
  return (height, width), mode not in _GREY_MODES


@functools.lru_cache(maxsize=8)
def scan(root: str, flag: str = "dataset", class_names: Optional[tuple] = None) -> FolderIndex:
  """Lists and checks the images under `root` (one sub-folder per class).

  Args:
    root: the tree.
    flag: the flag that named it, for messages.
    class_names: the classes a test tree must have (those of the train tree).

  Raises:
    DatasetError: not a directory, fewer than 2 classes, an empty class, a
      file that is not an image, other classes than the train tree's.
  """
  shown = f"--{flag}={datasets.FOLDER_PREFIX if flag == 'dataset' else ''}{root}"
  if not os.path.isdir(root):
    raise DatasetError(f"{shown}: not a directory")
  found = tuple(sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")))
  if class_names is not None and found != tuple(class_names):
    raise DatasetError(f"{shown}: has classes {list(found)}, the training folder has "
                       f"{list(class_names)}")
  if len(found) < 2:
    raise DatasetError(f"{shown}: found {len(found)} class folder(s) {list(found)}; expected at "
                       "least 2 (one sub-folder per class)")
  files, labels, sizes, colour = [], [], set(), False
  for label, name in enumerate(found):
    class_files = []
    for directory, subdirs, names in os.walk(os.path.join(root, name)):
      subdirs[:] = [d for d in subdirs if not d.startswith(".")]
      class_files += [os.path.join(directory, n) for n in names if not n.startswith(".")]
    if not class_files:
      raise DatasetError(f"{shown}: class folder {name!r} holds no images")
    # Sorted by the path relative to the class folder: the same on every machine.
    for path in sorted(class_files, key=lambda p: os.path.relpath(p, root).split(os.sep)):
      size, has_colour = _inspect(path)
      sizes.add(size)
      colour = colour or has_colour
      files.append(path)
      labels.append(label)
  return FolderIndex(found, tuple(files), tuple(labels), frozenset(sizes), colour)


def held_out(num_files: int, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of the files a seeded `--validation_fraction` holds out.

  At least one file is held out and at least one kept.
  """
  count = min(max(1, int(round(fraction * num_files))), num_files - 1)
  rng = np.random.default_rng(seed)
  return np.sort(rng.permutation(num_files)[:count])


def split_files(spec: datasets.DatasetSpec, role: str):
  """(files, labels) of the `role` ("train" or "test") split of a folder spec, in id order."""
  index = scan(spec.location)
  if spec.test_location:
    if role == "test":
      test = scan(spec.test_location, "test_folder", index.class_names)
      return list(test.files), np.asarray(test.labels, np.int32)
    return list(index.files), np.asarray(index.labels, np.int32)
  out = held_out(len(index.files), spec.validation_fraction, spec.seed)
  keep = np.setdiff1d(np.arange(len(index.files)), out) if role == "train" else out
  return [index.files[i] for i in keep], np.asarray(index.labels, np.int32)[keep]


def folder_spec(name: str, image_size, *, channels: int = 0, test_folder: Optional[str] = None,
                validation_fraction: float = 0.0, seed: int = 0) -> datasets.DatasetSpec:
  """The spec of `--dataset=folder:PATH`.

  Raises:
    DatasetError: see `scan`; no test data; a bad `--channels` or
      `--validation_fraction`; images of several sizes without `--image_size`.
  """
  root = name[len(datasets.FOLDER_PREFIX):]
  if not root:
    raise DatasetError(f"--dataset={name}: expected folder:PATH")
  if not os.path.isdir(root):
    raise DatasetError(f"--dataset={name}: not a directory")
  if channels not in (0, 1, 3):
    raise DatasetError(f"--channels={channels}: expected 0 (automatic), 1 or 3")
  if not 0 <= validation_fraction < 1:
    raise DatasetError(f"--validation_fraction={validation_fraction}: expected a number in [0, 1)")
  if bool(test_folder) == bool(validation_fraction):
    raise DatasetError(f"--dataset={name}: needs test data: pass either --test_folder=PATH or "
                       "--validation_fraction (e.g. 0.15), not both")
  index = scan(root)
  sizes, colour = set(index.sizes), index.has_colour
  test_size = None
  if test_folder:
    test = scan(test_folder, "test_folder", index.class_names)
    sizes |= test.sizes
    colour = colour or test.has_colour
    test_size = len(test.files)
  if image_size is None and len(sizes) > 1:
    shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:4])
    raise DatasetError(f"--dataset={name}: images come in {len(sizes)} sizes ({shown}"
                       f"{', ...' if len(sizes) > 4 else ''}); pass --image_size=H,W to resize")
  height, width = next(iter(sizes))
  count = len(index.files)
  if not test_folder:
    if count < 2:
      raise DatasetError(f"--dataset={name}: {count} image(s); too few to hold some out")
    test_size = len(held_out(count, validation_fraction, seed))
  spec = datasets.DatasetSpec(
      name=name, image_shape=(height, width, channels or (3 if colour else 1)),
      class_names=index.class_names, train_size=count - (0 if test_folder else test_size),
      test_size=test_size, source="folder", location=root, test_location=test_folder,
      validation_fraction=validation_fraction, seed=seed if validation_fraction else 0)
  return datasets.resized(spec, image_size)

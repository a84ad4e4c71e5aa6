"""One split of a dataset as a tf.data pipeline of (uint8 image, int32 label), in file order.

Both sources read in a fixed order (TFDS with `shuffle_files=False`; a folder in
`image_folders`' sorted order), so element i is sample id i of the split. An
`--image_size` resize runs per image, before batching (images may vary in size):

  resize: aspect-preserving, then centre crop. The image is scaled (bilinear,
  antialiased when shrinking) until it covers H x W, and the central H x W
  window is kept (`keras.layers.Resizing(crop_to_aspect_ratio=True)`); the
  result is rounded back to uint8, so memory, the cached splits and exported
  models all take resized raw pixels.
"""

import os

import tensorflow as tf

from tf_srkd.data import datasets

#: How `--image_size` resizes, for docs/cli.md and the export sidecar.
RESIZE_METHOD = "aspect-preserving scale to cover, centre crop; bilinear, antialiased"


def tfds_error(spec: datasets.DatasetSpec, split: str, error: Exception) -> str:
  """The one-line message for a TFDS split that could not be loaded."""
  where = os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
  text = str(error).splitlines()[0] if str(error) else ""
  return (f"--dataset={spec.name}: could not load split {split!r} from the TFDS data_dir "
          f"{where!r} (set TFDS_DATA_DIR to a prepared data_dir, or pass --download on a "
          f"machine with internet): {type(error).__name__}: {text}")


def resizer(spec: datasets.DatasetSpec):
  """`fn(uint8 image [h, w, c]) -> uint8 image [H, W, c]`, or None without `--image_size`."""
  if spec.image_size is None:
    return None
  import keras  # pylint: disable=import-outside-toplevel

  height, width = spec.image_size
  layer = keras.layers.Resizing(height, width, interpolation="bilinear",
                                crop_to_aspect_ratio=True, antialias=True)

  def resize(image):
    out = layer(tf.cast(image, tf.float32))
    return tf.ensure_shape(tf.saturate_cast(tf.round(out), tf.uint8),
                           [height, width, spec.image_shape[-1]])

  return resize


def _to_channels(image, channels: int):
  """A decoded image (1-4 channels) with exactly `channels` (1 or 3); alpha is dropped."""
  image = image[..., :tf.where(tf.shape(image)[-1] >= 3, 3, 1)]
  if channels == 3:
    image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.image.grayscale_to_rgb(image),
                    lambda: image)
  else:
    image = tf.cond(tf.shape(image)[-1] == 3, lambda: tf.image.rgb_to_grayscale(image),
                    lambda: image)
  return tf.ensure_shape(image, [None, None, channels])


def decode_file(path, channels: int):
  """One JPEG/PNG/BMP/GIF file (first frame) as uint8 [h, w, channels]."""
  image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False, dtype=tf.uint8)
  return _to_channels(image, channels)


def folder_files(spec: datasets.DatasetSpec, role: str, limit: int = 0):
  """(files, labels) of a folder split in id order, the first `limit` (0: all)."""
  from tf_srkd.data import image_folders  # pylint: disable=import-outside-toplevel

  files, labels = image_folders.split_files(spec, role)
  if limit:
    files, labels = files[:limit], labels[:limit]
  return files, labels


def split_dataset(spec: datasets.DatasetSpec, role: str, limit: int = 0,
                  download: bool = False) -> tf.data.Dataset:
  """The `role` ("train" or "test") split as unbatched (uint8 image, int32 label), in id order.

  Args:
    spec: the resolved dataset.
    role: "train" (`spec.train_split`) or "test" (`spec.test_split`); any
      other value is used as a TFDS split string itself.
    limit: keep only the first `limit` examples (0: all).
    download: let TFDS download and prepare a missing dataset.

  Raises:
    data.DataError (via `tf_srkd.data.arrays`): the TFDS split cannot be loaded.
  """
  resize = resizer(spec)
  channels = spec.image_shape[-1]
  if spec.source == "folder":
    files, labels = folder_files(spec, role, limit)
    dataset = tf.data.Dataset.from_tensor_slices((files, labels)).map(
        lambda path, label: (decode_file(path, channels), label),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    split = {"train": spec.train_split, "test": spec.test_split}.get(role, role)
    # Features by name rather than `as_supervised`: not every builder declares
    # (image, label) as its supervised keys.
    # No auto-cache: TFDS caches a whole split in memory when the dataset is under
    # 250 MiB (CIFAR-10 is), ~3.3 KB per encoded example on top of our own copy. Every
    # split is read exactly once here, so the cache saves nothing and would make the
    # streaming path's memory grow with the split (bench/timing/streaming.py).
    dataset = tfds.load(spec.builder, split=split, shuffle_files=False, download=download,
                        read_config=tfds.ReadConfig(try_autocache=False))
    dataset = dataset.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))
    if limit:
      dataset = dataset.take(limit)
  if resize is not None:
    dataset = dataset.map(lambda image, label: (resize(image), label),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return dataset

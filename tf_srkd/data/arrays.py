"""A split -> in-memory arrays with sample ids -> per-epoch shuffled batches.

Sample id i is the i-th example of the resolved train split read in file order
(TFDS with `shuffle_files=False`, a folder in sorted order; `tf_srkd.data.sources`),
attached before any shuffling. Images stay uint8 in
memory; `preprocess` (scaling to [0, 1]) runs when a batch is gathered, so the
models themselves see floats and exported models can wrap the same function to
take raw pixels.

The epoch order is a pure function of (seed, epoch) (a stateless shuffle), so a
run resumed at epoch k sees exactly the batches an uninterrupted run would.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tf_srkd.data import datasets
from tf_srkd.data import sources
from tf_srkd.errors import DataError  # pylint: disable=unused-import  (raised here; see errors)


@dataclasses.dataclass(frozen=True)
class SplitArrays:
  """One split held in memory.

  Attributes:
    images: uint8 [N, H, W, C] raw pixels.
    labels: int32 [N].
  """

  images: np.ndarray
  labels: np.ndarray

  @property
  def size(self) -> int:
    return int(self.labels.shape[0])


def preprocess(images):
  """Raw uint8 pixels -> float32 in [0, 1]; the only normalisation the models see."""
  return tf.cast(images, tf.float32) / 255.0


def load_split(spec: datasets.DatasetSpec, split: str, limit: int = 0,
               download: bool = False) -> SplitArrays:
  """Loads a split into memory in file order (sample id i = row i).

  Args:
    spec: the resolved dataset (`datasets.resolve`).
    split: "train" (the spec's `train_split`) or "test" (its `test_split`).
    limit: if > 0, keep only the first `limit` examples.
    download: let TFDS download and prepare a dataset that is missing.

  Returns:
    The split as arrays.

  Raises:
    DataError: if the dataset is not available (offline and not prepared), a
      file cannot be decoded (named), or it has fewer than `limit` examples.
  """
  shown = split_name(spec, split)
  dataset = open_split(spec, split, limit, download)
  try:
    # Large batches rather than `batch_size=-1`, which aborts under tfds.testing.mock_data.
    chunks = list(dataset.batch(8192).as_numpy_iterator())
  except tf.errors.OpError as e:
    raise DataError(decode_failure(spec, split, limit, e)) from e
  if not chunks:
    raise DataError(f"--dataset={spec.name}: split {shown!r} is empty")
  images = np.concatenate([c[0] for c in chunks]).astype(np.uint8, copy=False)
  labels = np.concatenate([c[1] for c in chunks])
  if images.ndim == 3:
    images = images[..., None]
  labels = np.asarray(labels, dtype=np.int32)
  if limit and labels.shape[0] < limit:
    raise DataError(f"--train_examples={limit}: the {shown!r} split of {spec.name} has only "
                    f"{labels.shape[0]} examples")
  if limit:  # TFDS honours `take(limit)`; mock data may not.
    images, labels = images[:limit], labels[:limit]
  return SplitArrays(images=images, labels=labels)


def split_name(spec: datasets.DatasetSpec, role: str) -> str:
  """The split string a role ("train", "test") stands for, for messages."""
  return {"train": spec.train_split, "test": spec.test_split}.get(role, role)


def open_split(spec: datasets.DatasetSpec, role: str, limit: int = 0,
               download: bool = False) -> tf.data.Dataset:
  """`sources.split_dataset`, with every failure to open it as one `DataError` line."""
  try:
    return sources.split_dataset(spec, role, limit, download)
  except datasets.DatasetError as e:
    raise DataError(str(e)) from e
  except Exception as e:  # TFDS raises a variety of types for "not prepared".
    raise DataError(sources.tfds_error(spec, split_name(spec, role), e)) from e


def decode_failure(spec, split, limit, error) -> str:
  """The message for a split that failed to decode: the first bad file when it is a folder."""
  if spec.source == "folder":
    for path in sources.folder_files(spec, split, limit)[0]:
      try:
        sources.decode_file(path, spec.image_shape[-1])
      except tf.errors.OpError:
        return f"{path}: cannot be decoded as an image (corrupt or truncated)"
  text = " ".join(str(error).split())[:200]
  return f"--dataset={spec.name}: reading the {split!r} split failed: {text}"


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Number of batches per epoch; the last, partial batch is kept so every sample
  is seen (and can take part) exactly once per epoch."""
  return -(-num_examples // batch_size)


def epoch_permutation(num_examples: int, seed: int, epoch):
  """The order of sample ids in `epoch`: a stateless function of (seed, epoch)."""
  return tf.random.experimental.stateless_shuffle(
      tf.range(num_examples, dtype=tf.int32),
      seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)]))


def train_dataset(split: SplitArrays, batch_size: int, seed: int, start_epoch: int,
                  end_epoch: int, extras=None, augment_fn=None) -> tf.data.Dataset:
  """Batches for epochs [start_epoch, end_epoch), reshuffled every epoch.

  Each element is `(features, label)` with features a dict holding `image`
  (float32, preprocessed), `id` (int32) and one entry per `extras` array
  (e.g. cached teacher logits, significance), all gathered by sample id.

  Args:
    split: the training split in memory.
    batch_size: global batch size.
    seed: shuffling seed.
    start_epoch: first epoch to produce (a resumed run starts later).
    end_epoch: one past the last epoch.
    extras: optional dict name -> array of leading dimension N.
    augment_fn: optional `fn(float_images, ids, epoch) -> float_images`.

  Returns:
    A dataset of `steps_per_epoch(N, batch_size) * (end_epoch - start_epoch)` batches.
  """
  n = split.size
  images = _gatherer(split.images)
  labels = tf.constant(split.labels)
  extras = {k: _gatherer(v) for k, v in (extras or {}).items()}

  def gather(epoch, ids):
    features = {"image": preprocess(images(ids)), "id": ids}
    if augment_fn is not None:
      features["image"] = augment_fn(features["image"], ids, epoch)
    for name, values in extras.items():
      features[name] = values(ids)
    return features, tf.gather(labels, ids)

  epochs = tf.data.Dataset.range(start_epoch, end_epoch)
  ids = epochs.flat_map(
      lambda e: tf.data.Dataset.from_tensor_slices(epoch_permutation(n, seed, e))
      .batch(batch_size).map(lambda batch_ids: (e, batch_ids)))
  options = tf.data.Options()
  options.deterministic = True
  # The source is an id range, not files: split each global batch across workers.
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return (ids.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE).with_options(options))


def is_stored(values) -> bool:
  """Whether `values` lives on disk (`streaming.StoredArray`) rather than in memory."""
  return hasattr(values, "read_rows")


def take_rows(values, ids) -> np.ndarray:
  """`values[ids]` in memory, for an array in memory or on disk (`streaming.StoredArray`).

  From disk only those rows are read, in ascending id order (forward through the
  file, rather than seeking back and forth), then put back in the order of `ids`.
  """
  if not is_stored(values):
    return values[ids]
  ids = np.asarray(ids, np.int64)
  order = np.argsort(ids, kind="stable")
  rows = values.read_rows(ids[order])
  out = np.empty_like(rows)
  out[order] = rows
  return out


def read_range(values, start: int, stop: int) -> np.ndarray:
  """Rows [start, stop) in memory, of an array in memory or on disk (one read)."""
  return values.read_range(start, stop) if is_stored(values) else values[start:stop]


def _gatherer(values):
  """`fn(ids) -> rows of values`: a gather from a constant in memory, or reads by id from
  an array on disk (`streaming.StoredArray`)."""
  if not is_stored(values):
    constant = tf.constant(values)
    return lambda ids: tf.gather(constant, ids)
  dtype = tf.as_dtype(values.dtype)

  def read(ids):
    rows = tf.numpy_function(values.read_rows, [ids], dtype, stateful=False)
    return tf.ensure_shape(rows, [None, *values.row_shape])

  return read


def _in_order(images, batch_size: int) -> tf.data.Dataset:
  """Batches of raw images in order, from memory or from disk."""
  if not is_stored(images):
    return tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
  n, dtype = len(images), tf.as_dtype(images.dtype)

  def read(start):
    rows = tf.numpy_function(images.read_range, [start, tf.minimum(start + batch_size, n)],
                             dtype, stateful=False)
    return tf.ensure_shape(rows, [None, *images.row_shape])

  return tf.data.Dataset.range(0, n, batch_size).map(read)


def image_batches(images: np.ndarray, batch_size: int) -> tf.data.Dataset:
  """Preprocessed image batches in order, for inference (evaluation, logit caching)."""
  return (tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
          .map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def predict_logits(network, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Inference-mode outputs of `network` for raw uint8 images, in order.

  Every batch has `batch_size` rows: the last one is zero-padded and its rows
  are dropped from the result (inference is row by row). One batch shape means
  one traced predict function per model; a short last batch traced a second
  one, and a run's five models then made TensorFlow warn about retracing.
  """
  rank = len(images.shape)

  def pad(batch):
    return tf.pad(batch, [[0, batch_size - tf.shape(batch)[0]]] + [[0, 0]] * (rank - 1))

  batches = (_in_order(images, batch_size).map(pad)
             .map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
  return np.asarray(network.predict(batches, verbose=0), dtype=np.float32)[:len(images)]


def random_shift_augment(max_shift: int, flip: bool, seed: int):
  """A light, id-seeded augmentation: random translation (+ horizontal flip).

  Returns:
    `fn(images, ids, epoch) -> images`, a pure function of (seed, epoch, id), so
    resumed runs see the same augmented pixels.
  """

  def augment(images, ids, epoch):
    def one(args):
      image, sample_id = args
      s = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64),
                    tf.cast(sample_id, tf.int64)])
      h, w = tf.shape(image)[0], tf.shape(image)[1]
      padded = tf.pad(image, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]])
      out = tf.image.stateless_random_crop(padded, tf.shape(image), seed=s)
      if flip:
        out = tf.image.stateless_random_flip_left_right(out, seed=s + 1)
      return tf.ensure_shape(tf.reshape(out, [h, w, tf.shape(image)[2]]), image.shape)

    return tf.map_fn(one, (images, ids), fn_output_signature=images.dtype)

  return augment

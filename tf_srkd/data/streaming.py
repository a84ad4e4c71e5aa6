"""Splits larger than `--max_in_memory_mb`: kept on disk, read by sample id.

A split whose uint8 pixels exceed the limit is read once, in file order, by
`sources.split_dataset` (so row i is sample id i) and appended to a `.npy`
file; the teacher's logits over the transfer set go to a second `.npy`. Both
are read back row by row with `os.pread` (`StoredArray`), never mapped whole,
so the process' resident memory stays flat as the split grows.

Batches are gathered by id in the same stateless per-epoch permutation as the
in-memory path (`data.epoch_permutation`): the train steps, gates and
participation counts are bit-identical to an in-memory run, resumed epochs
replay exactly, and under a multi-worker strategy each worker reads only the
ids of its share of every global batch (ids stay global). A shuffle buffer
over the in-order stream was the alternative; it would give every run
different batches than the in-memory path (docs/choices.md).

The files live in a per-process temporary directory (under $TMPDIR), removed
when the process ends; nothing is written to the run's directory.

What stays in memory, per training example (the rest of the peak does not depend
on the split's size):
  labels            int32, NumPy + the graph constant `arrays.train_dataset` gathers from  8 B
  participation     int32 counts, per model trained (`training.SelfRegulatedModel`)       4 B
  margin cache      margin, prediction, version, stamp; current + previous (`margin_cache`) 32 B
  epoch permutation int32 ids, before and after the stateless shuffle                      8 B
                                                                                 total ~ 52 B
plus, once a teacher is trained, its significance (float32, 4 B; float64 while it is
computed) and, for a stored test split, its logits at evaluation (4 B per class per
test example). A CIFAR-10 image is
3 072 B, so 40 000 more examples add ~1.7 MiB, not the ~117 MiB of their pixels.
TFDS's auto-cache (a whole dataset under 250 MiB held in memory as it is read)
is switched off in `sources.split_dataset`: it kept ~3.3 KB per CIFAR-10 example.
"""

import atexit
import functools
import itertools
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from tf_srkd.data import arrays as data
from tf_srkd.data import datasets

#: The default of `--max_in_memory_mb` (see `DataConfig`).
DEFAULT_MAX_IN_MEMORY_MB = 2048


class StoredArray:
  """A C-ordered `.npy` array on disk, read by rows (`read_rows`, `window`).

  Rows are read with `os.pread` from one file descriptor (safe from several
  threads), so only what is read is in memory.
  """

  def __init__(self, path: str, start: int = 0, stop: int = None):
    header = np.load(path, mmap_mode="r")  # Reads the header only; no page is touched.
    self.path, self.dtype = path, header.dtype
    self.row_shape = tuple(header.shape[1:])
    self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * header.dtype.itemsize
    self._offset = header.offset
    self.start, self.stop = start, header.shape[0] if stop is None else stop
    del header
    self._fd = os.open(path, os.O_RDONLY)

  def __del__(self):
    if getattr(self, "_fd", None) is not None:
      os.close(self._fd)
      self._fd = None

  def __len__(self):
    return self.stop - self.start

  @property
  def shape(self):
    return (len(self),) + self.row_shape

  def window(self, start: int, stop: int) -> "StoredArray":
    """Rows [start, stop) of this array as an array of their own."""
    return StoredArray(self.path, self.start + start, self.start + stop)

  def read_range(self, start, stop) -> np.ndarray:
    """Rows [start, stop), one read."""
    start, stop = int(start), int(stop)
    raw = os.pread(self._fd, (stop - start) * self.row_bytes,
                   self._offset + (self.start + start) * self.row_bytes)
    return np.frombuffer(raw, self.dtype).reshape((stop - start,) + self.row_shape)

  def read_rows(self, ids) -> np.ndarray:
    """The rows with these ids, in the given order."""
    out = np.empty((len(ids),) + self.row_shape, self.dtype)
    for k, i in enumerate(np.asarray(ids, np.int64)):
      out[k] = np.frombuffer(os.pread(self._fd, self.row_bytes,
                                      self._offset + (self.start + int(i)) * self.row_bytes),
                             self.dtype).reshape(self.row_shape)
    return out

  def __array__(self, dtype=None, copy=None):
    """The whole array in memory (small arrays only: tests, checks)."""
    del copy
    values = self.read_range(0, len(self))
    return values if dtype is None else values.astype(dtype)


class StoredRows:
  """Rows `ids` of an array on disk, read from it by id: a subset of a stored split
  without a copy of its pixels (8 bytes per row in memory).

  Row i is row `ids[i]` of `base`. It reads like a `StoredArray` (`read_rows`,
  `read_range`, `window`), so batches, inference and logging treat it as one.
  """

  def __init__(self, base, ids):
    self.base, self.ids = base, np.asarray(ids, np.int64)
    self.dtype, self.row_shape = base.dtype, base.row_shape

  def __len__(self):
    return len(self.ids)

  @property
  def shape(self):
    return (len(self),) + self.row_shape

  def window(self, start: int, stop: int) -> "StoredRows":
    """Rows [start, stop) of this array as an array of their own."""
    return StoredRows(self.base, self.ids[start:stop])

  def read_range(self, start, stop) -> np.ndarray:
    """Rows [start, stop)."""
    return self.base.read_rows(self.ids[int(start):int(stop)])

  def read_rows(self, ids) -> np.ndarray:
    """The rows with these ids (of this array), in the given order."""
    return self.base.read_rows(self.ids[np.asarray(ids, np.int64)])

  def __array__(self, dtype=None, copy=None):
    """The whole array in memory (small arrays only: tests, checks)."""
    del copy
    values = self.read_range(0, len(self))
    return values if dtype is None else values.astype(dtype)


def take(values, ids, max_in_memory_mb: float = DEFAULT_MAX_IN_MEMORY_MB):
  """Rows `ids` of a split's array (images, logits), in the order of `ids`.

  An array in memory gives `values[ids]`. From an array on disk, rows that fit
  in `max_in_memory_mb` are read into memory (only those rows,
  `data.take_rows`); more (a large subset of a large split; 0: any) stay on
  disk as `StoredRows`, read by id when used. Either way the values, and so
  the batches made from them, are the same.
  """
  if not data.is_stored(values):
    return values[ids]
  row_bytes = int(np.prod(values.row_shape, dtype=np.int64)) * np.dtype(values.dtype).itemsize
  if max_in_memory_mb > 0 and len(ids) * row_bytes / 2**20 <= max_in_memory_mb:
    return data.take_rows(values, ids)
  return StoredRows(values, ids)


@functools.lru_cache(maxsize=1)
def scratch_dir() -> str:
  """This process' directory for streamed splits and logits (removed at exit)."""
  path = tempfile.mkdtemp(prefix="tf_srkd_stream_")
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


_FILE_NUMBERS = itertools.count()


def _scratch_path(stem: str) -> str:
  """A new file in `scratch_dir()`: never one a live `StoredArray` still reads."""
  return os.path.join(scratch_dir(), f"{stem}_{next(_FILE_NUMBERS)}.npy")


class _NpyWriter:
  """Appends rows to a `.npy` file whose shape is known up front (no memory map)."""

  def __init__(self, path, shape, dtype):
    self.path, self.shape, self.written = path, tuple(shape), 0
    self._file = open(path, "wb")  # pylint: disable=consider-using-with
    np.lib.format.write_array_header_1_0(self._file, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
        "shape": self.shape})
    self._dtype = np.dtype(dtype)

  def append(self, rows):
    rows = np.ascontiguousarray(rows, self._dtype)
    self._file.write(rows.tobytes())
    self.written += rows.shape[0]

  def close(self):
    self._file.close()


def split_megabytes(spec: datasets.DatasetSpec, role: str, limit: int = 0):
  """The uint8 pixels of a split in MiB (None: its size is not known before reading)."""
  size = spec.train_size if role == "train" else spec.test_size
  if limit:
    size = min(limit, size) if size is not None else limit
  if size is None or None in spec.image_shape:
    return None
  return size * int(np.prod(spec.image_shape)) / 2**20


def load(spec: datasets.DatasetSpec, role: str, limit: int = 0, download: bool = False,
         max_in_memory_mb: float = DEFAULT_MAX_IN_MEMORY_MB) -> data.SplitArrays:
  """A split in memory (`arrays.load_split`) or, above `max_in_memory_mb`, on disk.

  A split whose size is not known before reading (a TFDS dataset without split
  metadata) is loaded into memory. `max_in_memory_mb` 0 streams every split.

  Returns:
    `data.SplitArrays` whose `images` is an ndarray or a `StoredArray`
    (labels are always in memory: 4 bytes per sample).

  Raises:
    arrays.DataError: as `arrays.load_split`.
  """
  megabytes = split_megabytes(spec, role, limit)
  if megabytes is None or megabytes <= max_in_memory_mb and max_in_memory_mb > 0:
    return data.load_split(spec, role, limit, download)
  return _store(spec, role, limit, download)


def _store(spec, role, limit, download) -> data.SplitArrays:
  """Reads a split in order into a `.npy` on disk; its labels into memory."""
  size = spec.train_size if role == "train" else spec.test_size
  count = min(limit, size) if limit else size
  shown = data.split_name(spec, role)
  dataset = data.open_split(spec, role, limit, download)
  path = _scratch_path(f"{role}_images")
  writer = _NpyWriter(path, (count, *spec.image_shape), np.uint8)
  labels = []
  try:
    for images, batch_labels in dataset.batch(1024).as_numpy_iterator():
      if writer.written + len(batch_labels) > count:
        raise data.DataError(f"--dataset={spec.name}: split {shown!r} has more than the {count} "
                             "examples its metadata lists")
      writer.append(images.reshape((-1, *spec.image_shape)))
      labels.append(np.asarray(batch_labels, np.int32))
  except tf.errors.OpError as e:
    raise data.DataError(data.decode_failure(spec, role, limit, e)) from e
  finally:
    writer.close()
  if writer.written != count:
    raise data.DataError(f"--dataset={spec.name}: split {shown!r} has {writer.written} examples, "
                         f"expected {count}")
  return data.SplitArrays(images=StoredArray(path), labels=np.concatenate(labels))


def predict_to_disk(network, images, batch_size: int, name: str) -> StoredArray:
  """`data.predict_logits` of a stored split, written to a `.npy` on disk chunk by chunk.

  Chunks are whole multiples of `batch_size`, so every batch (and so every
  logit) is the one a single in-memory pass computes.
  """
  n = len(images)
  classes = int(network.outputs[0].shape[-1])
  writer = _NpyWriter(_scratch_path(name), (n, classes), np.float32)
  step = batch_size * 64
  try:
    for start in range(0, n, step):
      window = images.window(start, min(start + step, n)) if data.is_stored(
          images) else images[start:start + step]
      writer.append(data.predict_logits(network, window, batch_size))
  finally:
    writer.close()
  return StoredArray(writer.path)

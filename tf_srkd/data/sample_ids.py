"""Sample ids for the Keras API: every training row carries its position in the set.

Participation counts and significance are indexed by sample id, so each row of
`fit`'s data must carry one: `with_sample_ids` attaches them to an unbatched
`tf.data` dataset, and `with_ids_for_fit` to the NumPy arrays or tensors given to
`fit` (a row's id is its index; Keras' shuffling of arrays keeps it with the row).
"""

import numpy as np
import tensorflow as tf


def with_sample_ids(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Attaches a stable sample id to every element of an *unbatched* dataset.

  Call it before shuffling and batching: the id is the element's position in
  `dataset`, and participation counts (and significance) are indexed by it, so
  the order of `dataset` itself must be the same every epoch.

  Args:
    dataset: elements `(x, y)` or `(x, y, sample_weight)`: one image (float,
      the scale your model expects), its integer label and optionally a weight.

  Returns:
    A dataset of `({"image": x, "id": i[, "sample_weight": w]}, y)`.
  """

  spec = dataset.element_spec
  if not isinstance(spec, tuple) or len(spec) not in (2, 3):
    raise ValueError("with_sample_ids: expected (x, y) or (x, y, sample_weight) elements, e.g. "
                     "tf.data.Dataset.from_tensor_slices((images, labels))")
  label_shape = getattr(spec[1], "shape", None)
  if label_shape is not None and label_shape.rank and label_shape[0] is None:
    raise ValueError("with_sample_ids: the dataset looks batched (its labels have shape "
                     f"{label_shape}); call with_sample_ids on the unbatched dataset, then "
                     ".shuffle(...).batch(...): each element must be one sample")

  def attach(i, element):
    features = {"image": element[0], "id": tf.cast(i, tf.int32)}
    if len(element) == 3:
      features["sample_weight"] = tf.cast(element[2], tf.float32)
    return features, element[1]

  return dataset.enumerate().map(attach, num_parallel_calls=tf.data.AUTOTUNE)


def with_ids_for_fit(arguments: dict, num_examples: int) -> dict:
  """`fit`'s arguments with a sample id on every row.

  A dataset must already carry them (`with_sample_ids`). NumPy arrays or tensors get
  `{"image": x, "id": row}` features (and the rows of `validation_split` become
  `validation_data`, as Keras would split them), so Keras' own shuffling of arrays
  keeps each id with its row.

  Raises:
    ValueError: a dataset without ids, or a row count other than `num_examples`.
  """
  x = arguments.get("x")
  if isinstance(x, tf.data.Dataset):
    spec = x.element_spec
    features = spec[0] if isinstance(spec, tuple) else spec
    if not (isinstance(features, dict) and "id" in features):
      raise ValueError("fit: the dataset's elements carry no sample ids; build it as "
                       "tf_srkd.with_sample_ids(unbatched).shuffle(n).batch(b), or pass "
                       "NumPy arrays fit(x, y)")
    arguments.setdefault("shuffle", False)  # A dataset shuffles itself; Keras warns otherwise.
    return arguments
  if x is None or isinstance(x, dict) or not hasattr(x, "shape"):
    return arguments  # Keras' own error for what it does not take either.
  y, weights = arguments.get("y"), arguments.pop("sample_weight", None)
  if y is None:
    raise ValueError("fit: arrays x need their labels y (fit(x, y, ...))")
  if arguments.get("class_weight") is not None:
    raise ValueError("fit: class_weight is not supported; pass sample_weight=class_weights[y] "
                     "(it multiplies the gate)")
  split = arguments.pop("validation_split", 0.0) or 0.0
  rows = int(x.shape[0])
  if split and arguments.get("validation_data") is None:
    at = int(rows * (1.0 - split))  # Keras' rule: the last rows validate.
    if at <= 0 or at >= rows:
      raise ValueError(f"fit: validation_split={split} of {rows} rows leaves "
                       f"{at} for training and {rows - at} for validation; both need rows")
    arguments["validation_data"] = ((x[at:], y[at:]) if weights is None
                                    else (x[at:], y[at:], weights[at:]))
    x, y = x[:at], y[:at]
    weights = None if weights is None else weights[:at]
    rows = at
  if rows != num_examples:
    after = f" (after validation_split={split})" if split else ""
    raise ValueError(f"fit: {rows} training rows{after} but num_examples={num_examples}; "
                     f"a sample's id is its row, so create the model with num_examples={rows}")
  features = {"image": x, "id": np.arange(rows, dtype=np.int32)}
  if weights is not None:
    features["sample_weight"] = np.asarray(weights, np.float32)
  arguments["x"], arguments["y"] = features, y
  return arguments

"""Training batches cut from one per-epoch gather of the in-memory split.

`arrays.train_dataset` gathers every batch's images, labels and per-sample
extras (teacher logits, significance) by sample id: four small gathers per
step. Here each epoch gathers its whole permutation once into contiguous
arrays, and a batch is a slice of them, as a plain `fit` on in-memory tensors
does. The batches are the same, bit for bit and in the same order (same
`data.epoch_permutation`, same `data.preprocess`, same augmentation), so the
two pipelines are interchangeable; this one is what `stages.fit_stage` uses
(the per-batch gathers cost conventional distillation ~5 % of an
epoch). The per-epoch arrays of the next epoch are built while the last
batches of the current one train (prefetch).
"""

import tensorflow as tf

from tf_srkd.data import arrays as data


def train_dataset(split: data.SplitArrays, batch_size: int, seed: int, start_epoch: int,
                  end_epoch: int, extras=None, augment_fn=None) -> tf.data.Dataset:
  """Batches for epochs [start_epoch, end_epoch), as `arrays.train_dataset` makes them.

  Args:
    split: the training split, in memory (not `data.is_stored`).
    batch_size: global batch size.
    seed: shuffling seed.
    start_epoch: first epoch to produce (a resumed run starts later).
    end_epoch: one past the last epoch.
    extras: optional dict name -> array of leading dimension N, in memory.
    augment_fn: optional `fn(float_images, ids, epoch) -> float_images`.

  Returns:
    A dataset of `data.steps_per_epoch(N, batch_size) * (end_epoch - start_epoch)`
    `(features, label)` batches.
  """
  n = split.size
  steps = data.steps_per_epoch(n, batch_size)
  sources = {"image": tf.constant(split.images), "label": tf.constant(split.labels)}
  sources.update({k: tf.constant(v) for k, v in (extras or {}).items()})

  def epoch_batches(epoch):
    ids = data.epoch_permutation(n, seed, epoch)
    arrays = {name: tf.gather(values, ids) for name, values in sources.items()}
    arrays["id"] = ids

    def batch(step):
      step = tf.cast(step, tf.int32)
      rows = {name: values[step * batch_size:(step + 1) * batch_size]
              for name, values in arrays.items()}
      labels = rows.pop("label")
      rows["image"] = data.preprocess(rows["image"])
      if augment_fn is not None:
        rows["image"] = augment_fn(rows["image"], rows["id"], epoch)
      return rows, labels

    return tf.data.Dataset.range(steps).map(batch)

  options = tf.data.Options()
  options.deterministic = True
  # The source is an id range, not files: split each global batch across workers.
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return (tf.data.Dataset.range(start_epoch, end_epoch).flat_map(epoch_batches)
          .prefetch(tf.data.AUTOTUNE).with_options(options))

"""Train your own Keras classifier with self-regulation, then read its participation.

    TFDS_DATA_DIR=../shared/tfds python examples/train_self_regulated.py --examples=2000

The model is any Keras model from images to logits; the dataset any unbatched
`(x, y)` (or `(x, y, sample_weight)`) `tf.data` dataset in a fixed order.
`--cpu_replicas=2` trains under a `MirroredStrategy` over two logical CPUs.
"""

import argparse

import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=2000, help="first K MNIST training images")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--alpha", type=float, default=0.5)
  parser.add_argument("--cpu_replicas", type=int, default=0,
                      help="split the CPU into K logical devices (before TensorFlow starts)")
  parser.add_argument("--mirrored", action="store_true", help="train under a MirroredStrategy")
  parser.add_argument("--save_counts", help="write the participation counts here (.npy)")
  args = parser.parse_args()

  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if args.cpu_replicas:  # Must happen before TensorFlow initialises its devices.
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * args.cpu_replicas)
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  import tf_srkd  # pylint: disable=import-outside-toplevel

  # Your data: any unbatched (image, label) dataset in a fixed order.
  raw = tfds.load("mnist", split=f"train[:{args.examples}]", as_supervised=True)
  dataset = raw.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y))
  labels = np.array([int(y) for _, y in raw.as_numpy_iterator()])

  # Ids are attached before shuffling: counts are indexed by them.
  train = tf_srkd.with_sample_ids(dataset).shuffle(args.examples, seed=0).batch(100)

  strategy = (tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.cpu_replicas)])
              if args.mirrored else tf.distribute.get_strategy())
  keras.utils.set_random_seed(0)
  with strategy.scope():
    network = keras.Sequential([  # Your model: images in, logits out.
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 5, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model = tf_srkd.SelfRegulated(network, num_examples=len(labels), alpha=args.alpha)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
  model.fit(train, epochs=args.epochs, verbose=2)

  counts = model.participation_counts()
  significance = tf_srkd.significance(counts, labels, 10)
  print(f"zeta = {tf_srkd.sample_efficiency(counts, args.epochs):.2%}; "
        f"mean significance {significance.mean():.3f}")
  if args.save_counts:
    np.save(args.save_counts, counts)


if __name__ == "__main__":
  main()

"""Distill a small student from your own teacher in any of the four modes.

    TFDS_DATA_DIR=../shared/tfds python examples/distill_from_your_teacher.py --mode=hybrid

The teacher trains with self-regulation first (its participation counts give
each sample's significance, which `significance` and `hybrid` need); any Keras
logits model will do as teacher or student.
"""

import argparse

import numpy as np


def conv_net(filters, input_shape=(28, 28, 1), classes=10):
  import keras  # pylint: disable=import-outside-toplevel
  return keras.Sequential([
      keras.Input(input_shape),
      keras.layers.Conv2D(filters, 5, activation="relu"),
      keras.layers.MaxPooling2D(),
      keras.layers.Flatten(),
      keras.layers.Dense(classes),
  ])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=2000)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--mode", default="hybrid",
                      choices=["conventional", "significance", "regulated", "hybrid"])
  args = parser.parse_args()

  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  import tf_srkd  # pylint: disable=import-outside-toplevel

  def load(split):
    raw = tfds.load("mnist", split=split, as_supervised=True)
    return raw.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y))

  dataset = load(f"train[:{args.examples}]")
  labels = np.array([int(y) for _, y in dataset.as_numpy_iterator()])
  train = tf_srkd.with_sample_ids(dataset).shuffle(args.examples, seed=0).batch(100)
  keras.utils.set_random_seed(0)

  # 1. Your teacher, trained with self-regulation (or one you trained already:
  #    then a few self-regulated epochs from its weights give the counts).
  teacher = tf_srkd.SelfRegulated(conv_net(16), len(labels), alpha=0.5)
  teacher.compile(optimizer=keras.optimizers.Adam(1e-3))
  teacher.fit(train, epochs=args.epochs, verbose=2)
  significance = tf_srkd.significance(teacher.participation_counts(), labels, 10)

  # 2. The student, in the chosen mode.
  student = tf_srkd.Distiller(teacher.network, conv_net(4), len(labels), mode=args.mode,
                              significance=significance, alpha=0.5)
  student.compile(optimizer=keras.optimizers.Adam(1e-2))
  student.fit(train, epochs=args.epochs, verbose=2)

  test = load("test[:1000]").batch(500)
  student.network.compile(metrics=["accuracy"],
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  _, accuracy = student.network.evaluate(test, verbose=0)
  counts = student.participation_counts()
  print(f"{args.mode} student: test accuracy {accuracy:.4f}, "
        f"zeta {tf_srkd.sample_efficiency(counts, args.epochs):.2%}")


if __name__ == "__main__":
  main()

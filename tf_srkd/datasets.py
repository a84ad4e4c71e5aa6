"""Registry of the datasets the package knows, as plain data (no TensorFlow import)."""

import dataclasses

from tf_srkd import registry


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline needs to know about a TFDS image-classification dataset.

  Attributes:
    name: registry name, also the TFDS builder name.
    image_shape: (height, width, channels) of one raw uint8 image.
    class_names: human-readable class names, index = label.
    train_size: number of examples in the TFDS `train` split.
    test_size: number of examples in the TFDS `test` split.
  """

  name: str
  image_shape: tuple
  class_names: tuple
  train_size: int
  test_size: int

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


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

"""Registry of classifier architectures, written once for Keras 3 and tf_keras.

Every builder takes the Keras *module* (``keras`` or ``tf_keras``) as its first
argument and uses only ``module.Sequential`` and ``module.layers``, so the same
definition renders an identical model in either framework (the QAT export path
needs a ``tf_keras`` twin of the Keras 3 student). Models output logits and take
float images already scaled to [0, 1]; scaling lives in the input pipeline and,
for exported models, in the exported graph.
"""

import dataclasses
from typing import Callable

from tf_srkd import registry

#: Parameter counts reported in the paper (Table II), for the +-5 % check.
PAPER_PARAM_COUNTS = {
    "lenet5": 62_000,
    "lenet5_half": 36_000,
    "alexnet": 1_660_000,
    "alexnet_half": 400_000,
}


def _lenet5(k, input_shape, num_classes, width):
  """LeNet-5 (LeCun et al. 1998) with `width` times the convolution filters.

  The "half" student of the paper halves the convolution filters (6->3, 16->8)
  and keeps the fully connected 120-84 head: that gives ~36K parameters, the
  paper's count, where halving every layer would give ~16K.
  """
  layers = k.layers
  return k.Sequential(
      [
          k.Input(shape=input_shape, name="image"),
          layers.Conv2D(int(6 * width), 5, padding="same", activation="relu", name="conv1"),
          layers.MaxPooling2D(2, name="pool1"),
          layers.Conv2D(int(16 * width), 5, padding="valid", activation="relu", name="conv2"),
          layers.MaxPooling2D(2, name="pool2"),
          layers.Flatten(name="flatten"),
          layers.Dense(120, activation="relu", name="fc1"),
          layers.Dense(84, activation="relu", name="fc2"),
          layers.Dense(num_classes, name="logits"),
      ],
      name="lenet5" if width == 1 else "lenet5_half",
  )


def _alexnet(k, input_shape, num_classes, width):
  """The CIFAR-10 AlexNet used by Zero-Shot KD (Nayak et al. 2019) and this paper.

  Five convolutions (48-128-192-192-128 filters), three 3x3/2 max-pools and a
  512-256 head with dropout: ~1.66M parameters. The "half" student halves every
  layer's width (~0.42M).
  """
  layers = k.layers
  filters = [int(f * width) for f in (48, 128, 192, 192, 128)]
  units = [int(u * width) for u in (512, 256)]
  return k.Sequential(
      [
          k.Input(shape=input_shape, name="image"),
          layers.Conv2D(filters[0], 5, padding="same", activation="relu", name="conv1"),
          layers.MaxPooling2D(3, strides=2, name="pool1"),
          layers.Conv2D(filters[1], 5, padding="same", activation="relu", name="conv2"),
          layers.MaxPooling2D(3, strides=2, name="pool2"),
          layers.Conv2D(filters[2], 3, padding="same", activation="relu", name="conv3"),
          layers.Conv2D(filters[3], 3, padding="same", activation="relu", name="conv4"),
          layers.Conv2D(filters[4], 3, padding="same", activation="relu", name="conv5"),
          layers.MaxPooling2D(3, strides=2, name="pool3"),
          layers.Flatten(name="flatten"),
          layers.Dropout(0.5, name="drop1"),
          layers.Dense(units[0], activation="relu", name="fc1"),
          layers.Dropout(0.5, name="drop2"),
          layers.Dense(units[1], activation="relu", name="fc2"),
          layers.Dense(num_classes, name="logits"),
      ],
      name="alexnet" if width == 1 else "alexnet_half",
  )


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registered architecture.

  Attributes:
    name: registry name.
    builder: `builder(keras_module, input_shape, num_classes) -> model`.
    has_stochastic_layers: True when training-mode and inference-mode outputs
      differ (dropout), which matters for gates decided in inference mode.
  """

  name: str
  builder: Callable
  has_stochastic_layers: bool


MODELS = registry.by_name(
    ModelSpec("lenet5", lambda k, s, c: _lenet5(k, s, c, 1.0), False),
    ModelSpec("lenet5_half", lambda k, s, c: _lenet5(k, s, c, 0.5), False),
    ModelSpec("alexnet", lambda k, s, c: _alexnet(k, s, c, 1.0), True),
    ModelSpec("alexnet_half", lambda k, s, c: _alexnet(k, s, c, 0.5), True),
)


def get_model_spec(name: str) -> ModelSpec:
  """Returns the registered architecture `name`.

  Raises:
    KeyError: if `name` is not registered; the message lists the known names.
  """
  return registry.lookup(MODELS, name, "model")


def build_model(name: str, input_shape, num_classes: int, keras_module=None):
  """Builds the classifier `name`, returning logits.

  Args:
    name: a key of `MODELS`.
    input_shape: (height, width, channels).
    num_classes: number of output logits.
    keras_module: `keras` (default) or `tf_keras`.

  Returns:
    An uncompiled `Sequential` model.
  """
  if keras_module is None:
    import keras as keras_module  # pylint: disable=import-outside-toplevel
  return get_model_spec(name).builder(keras_module, tuple(input_shape), int(num_classes))

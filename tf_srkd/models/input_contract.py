"""Which pixel range a model takes, and the one adapter that feeds it that range.

The pipeline hands every model float images in [0, 1] (`data.preprocess`). Keras'
own image loaders (`keras.utils.image_dataset_from_directory`) and
`keras.applications` work in float pixels 0..255, so a teacher trained the way
Keras' guides train one often divides by 255 itself (a `Rescaling(1/255)` layer).
`--teacher_input` / `--student_input` say what a model takes:

  * ``unit``: [0, 1] (every model built here: the registry, factories, and the
    applications, whose own preprocessing is folded in over [0, 1]);
  * ``pixels``: float pixels 0..255; the model is wrapped in a `Rescaling(255)`
    layer, so the rest of the pipeline, the saved `.keras` file and the exported
    `.tflite` (which takes raw uint8 pixels) all stay correct with no other change;
  * ``auto``: ``unit`` for a model built here (nothing is wrapped);
    for a pre-trained model (a `.keras` file or a weights file), measured: its
    accuracy on a fixed, seeded sample of training images under both scalings,
    the clearly better one kept (`choose`).
"""

import dataclasses
from typing import Optional

import numpy as np

from tf_srkd.core import chance
from tf_srkd.errors import InputContractError  # pylint: disable=unused-import  (raised here; see errors)

INPUTS = ("auto", "unit", "pixels")
#: Training images each scaling is scored on when `auto` measures a pre-trained model.
DETECTION_IMAGES = 1000
#: The name of the adapter layer (`wrap`), so a saved model shows what it does.
ADAPTER_NAME = "pixels_from_unit"


@dataclasses.dataclass(frozen=True)
class Measurement:
  """What `auto` measured for one pre-trained model.

  Attributes:
    unit_accuracy: accuracy on the sample fed [0, 1] images.
    pixels_accuracy: accuracy fed 0..255 pixels.
    images: the sample's size.
    choice: "unit" or "pixels", or None when neither is clearly above chance.
  """

  unit_accuracy: float
  pixels_accuracy: float
  images: int
  choice: Optional[str]


def choose(unit_accuracy: float, pixels_accuracy: float, images: int,
           num_classes: int) -> Optional[str]:
  """The scaling a pre-trained model was trained on, from its two accuracies.

  The higher accuracy wins if it is clearly above chance (`chance.clearly_above_chance`);
  a tie goes to ``unit``. None: neither is, so the model cannot be told apart from an
  untrained one.
  """
  best, accuracy = (("pixels", pixels_accuracy) if pixels_accuracy > unit_accuracy
                    else ("unit", unit_accuracy))
  if not chance.can_tell(images, num_classes):  # Too few images to refuse anything.
    return best
  return best if chance.clearly_above_chance(accuracy, images, num_classes) else None


def detection_ids(num_examples: int, seed: int, count: int = DETECTION_IMAGES) -> np.ndarray:
  """A fixed, seeded sample of training ids (sorted), at most `count` of them."""
  rng = np.random.default_rng([seed, 0x5ca1e])
  ids = rng.choice(num_examples, size=min(count, num_examples), replace=False)
  return np.sort(ids)


def wrap(network, scaling: str, input_shape=None):
  """`network` taking [0, 1] images: as is for ``unit``, behind `Rescaling(255)` for
  ``pixels`` (`input_shape`: the images' (H, W, C); default: the network's input)."""
  if scaling == "unit":
    return network
  if scaling != "pixels":
    raise ValueError(f"expected 'unit' or 'pixels', got {scaling!r}")
  import keras  # pylint: disable=import-outside-toplevel

  shape = input_shape if input_shape is not None else network.inputs[0].shape[1:]
  inputs = keras.Input(shape=tuple(shape), name="image")
  outputs = network(keras.layers.Rescaling(255.0, name=ADAPTER_NAME)(inputs))
  return keras.Model(inputs, outputs, name=network.name)


def scaling_of(network) -> str:
  """"pixels" when `network` carries the `wrap` adapter, else "unit"."""
  names = [layer.name for layer in getattr(network, "layers", [])]
  return "pixels" if ADAPTER_NAME in names else "unit"


def measure(network, images_uint8: np.ndarray, labels: np.ndarray, num_classes: int,
            batch_size: int) -> Measurement:
  """Scores `network` on uint8 images fed as [0, 1] and as 0..255 (`choose`).

  Calls the network directly in inference mode, batch by batch: `predict` would trace
  a function per scaling for a model measured once.
  """
  correct = {"unit": 0, "pixels": 0}
  for start in range(0, len(labels), batch_size):
    pixels = np.asarray(images_uint8[start:start + batch_size], np.float32)
    truth = labels[start:start + batch_size]
    for scaling, x in (("unit", pixels / 255.0), ("pixels", pixels)):
      logits = np.asarray(network(x, training=False))
      correct[scaling] += int(np.sum(np.argmax(logits, axis=-1) == truth))
  n = int(len(labels))
  unit, pixels = correct["unit"] / n, correct["pixels"] / n
  return Measurement(unit, pixels, n, choose(unit, pixels, n, num_classes))


def describe(flag: str, source: str, m: Measurement) -> str:
  """The one console line for a measured choice."""
  return (f"--{flag}=auto: {source} scores {m.unit_accuracy:.4f} on [0, 1] inputs and "
          f"{m.pixels_accuracy:.4f} on 0..255 pixels ({m.images} training images); "
          f"using {m.choice}")


def refusal(flag: str, source: str, m: Measurement, num_classes: int) -> str:
  """The one-line refusal for a pre-trained teacher at chance under both scalings."""
  return (f"{source}: not clearly above chance (1/{num_classes}) under either input scaling: "
          f"accuracy {m.unit_accuracy:.4f} on [0, 1] inputs, {m.pixels_accuracy:.4f} on 0..255 "
          f"pixels ({m.images} training images); is it trained, and for this dataset's "
          f"labels? (--{flag}=unit or pixels skips this check)")

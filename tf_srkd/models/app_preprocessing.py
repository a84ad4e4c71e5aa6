"""A `keras.applications` model's own preprocessing, as a layer over [0, 1] images.

Every application documents the pixels it expects through its module's
`preprocess_input` (``caffe``: BGR minus the ImageNet mean, ``tf``: [-1, 1],
``torch``: ImageNet mean/std, or identity for models that rescale inside, such
as MobileNetV3 and EfficientNet). The pipeline feeds [0, 1] images, so the
model starts with `preprocess_input(255 x)`: `folded_layer` measures that very
function on probe pixels (the application's rule is used, not re-typed here) and
rebuilds it from Keras' own layers, so a saved model loads anywhere with plain
`keras.saving.load_model`. `FoldedPreprocessing`, which calls `preprocess_input`
itself, remains for a rule that is not affine and for models saved before; it is
registered with Keras' serialization, so those load in safe mode once this module
is imported (`loading.load_model` and `export.source` import it).
"""

from typing import Optional

import keras
import numpy as np


def module_of(application: str) -> Optional[object]:
  """The public `keras.applications.<module>` that defines `application`, or None."""
  constructor = getattr(keras.applications, application, None)
  if not callable(constructor):
    return None
  # The defining module's public twin (keras.applications.mobilenet_v3 exports
  # preprocess_input but not the constructors themselves).
  module = getattr(keras.applications, constructor.__module__.rsplit(".", 1)[-1], None)
  return module if hasattr(module, "preprocess_input") else None


@keras.saving.register_keras_serializable(package="tf_srkd")
class FoldedPreprocessing(keras.layers.Layer):
  """Maps [0, 1] images to what `application` expects: `preprocess_input(255 x)`."""

  def __init__(self, application, **kwargs):
    super().__init__(**kwargs)
    module = module_of(application)
    if module is None:
      raise ValueError(f"not a keras.applications model: {application!r}")
    self.application = application
    self._preprocess = module.preprocess_input

  def call(self, inputs):
    return self._preprocess(inputs * 255.0)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "application": self.application}


def _affine_map(application: str, channels: int):
  """(A [c, c], b [c]) with preprocess_input(255 x) = A x + b per pixel, or None when the
  application's preprocessing is not such a map (or fails for `channels`)."""
  module = module_of(application)
  probes = np.concatenate([np.zeros((1, channels)), np.eye(channels)]).astype(np.float32)
  rng = np.random.default_rng(0)
  check = rng.random((4, channels)).astype(np.float32)
  try:
    out = np.asarray(module.preprocess_input(255.0 * probes.reshape(1, -1, 1, channels)
                                             .copy()), np.float64).reshape(-1, channels)
    got = np.asarray(module.preprocess_input(255.0 * check.reshape(1, -1, 1, channels).copy()),
                     np.float64).reshape(-1, channels)
  except Exception:  # pylint: disable=broad-except  (a 1-channel image for a 3-channel rule)
    return None
  offset = out[0]
  matrix = (out[1:] - offset).T  # Column c: the response to channel c at full scale.
  if not np.allclose(check @ matrix.T + offset, got, rtol=1e-5, atol=1e-4):
    return None
  return matrix, offset


def folded_layer(application: str, channels: int, name: str = "preprocess"):
  """The application's preprocessing over [0, 1] images as one built-in Keras layer.

  `preprocess_input(255 x)` is an affine map of each pixel for every application
  (scaling, mean/std, a BGR flip): it is measured on probe pixels and rebuilt as a
  `Rescaling` (per-channel scale and offset) or, when it mixes channels (BGR), a frozen
  1x1 `Conv2D`. A saved model then loads with `keras.saving.load_model` in safe mode
  with nothing of this package imported. A rule that is not affine keeps the
  registered `FoldedPreprocessing` layer.
  """
  fitted = _affine_map(application, channels)
  if fitted is None:
    return FoldedPreprocessing(application, name=name)
  matrix, offset = fitted
  if np.allclose(matrix, np.diag(np.diag(matrix))):
    scale, bias = np.diag(matrix), offset
    if np.allclose(scale, scale[0]) and np.allclose(bias, bias[0]):
      return keras.layers.Rescaling(float(scale[0]), float(bias[0]), name=name)
    return keras.layers.Rescaling(scale.astype(np.float32).tolist(),
                                  bias.astype(np.float32).tolist(), name=name)
  layer = keras.layers.Conv2D(
      channels, 1, name=name, trainable=False,
      kernel_initializer=keras.initializers.Constant(matrix.T.reshape(1, 1, channels, channels)),
      bias_initializer=keras.initializers.Constant(offset))
  return layer

"""A `keras.applications` model's own preprocessing, as a layer over [0, 1] images.

Every application documents the pixels it expects through its module's
`preprocess_input` (``caffe``: BGR minus the ImageNet mean, ``tf``: [-1, 1],
``torch``: ImageNet mean/std, or identity for models that rescale inside, such
as MobileNetV3 and EfficientNet). The pipeline feeds [0, 1] images, so
`FoldedPreprocessing` multiplies by 255 and calls that very `preprocess_input`:
the application's rule is used, not re-typed here. The layer is registered
with Keras' serialization (config: the application's name), so a saved student
loads in safe mode as long as this module is imported (`validation.load_model`
and `export.source` import it).
"""

from typing import Optional

import keras


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

"""Fake quantization of a tf_keras twin with tensorflow-model-optimization.

Every layer is annotated for tfmot's default 8-bit scheme (weights per channel,
activations per tensor, BatchNorm folded into the convolution before it), except
the weightless layers tfmot's registry does not know (`OUTPUT_QUANTIZED`:
`Rescaling`, `Multiply`, `Subtract`): they get `OutputQuantizeConfig`, a
fake-quant of their output with moving-average ranges, the way tfmot treats
`Add` and `ReLU`, and TFLite has int8 kernels for each. The
twin (`export.twin`) turns arithmetic with constants and the hard-sigmoid /
hard-swish activations into such layers, which is what lets a MobileNetV3 be
quantized at all (tfmot cannot clone the `TFOpLambda` layers tf_keras would
have made of them).

Callers import tfmot first (`export.qat.import_tfmot`); this module takes it as
an argument so that importing it imports nothing heavy.
"""

#: Weightless layers that tfmot 0.8's default registry refuses; their outputs get a
#: fake-quant of their own.
OUTPUT_QUANTIZED = ("Rescaling", "Multiply", "Subtract")


def output_quantize_config_class(tfmot):
  """The `QuantizeConfig` that fake-quantizes a weightless layer's output (8 bits, per
  tensor, asymmetric), defined against the given tfmot module."""
  keras_q = tfmot.quantization.keras

  class OutputQuantizeConfig(keras_q.QuantizeConfig):
    """No weight or activation quantizers; one moving-average quantizer on the output."""

    def get_weights_and_quantizers(self, layer):
      return []

    def get_activations_and_quantizers(self, layer):
      return []

    def set_quantize_weights(self, layer, quantize_weights):
      pass

    def set_quantize_activations(self, layer, quantize_activations):
      pass

    def get_output_quantizers(self, layer):
      return [keras_q.quantizers.MovingAverageQuantizer(
          num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
      return {}

  return OutputQuantizeConfig


def quantize(twin, tfmot, tf_keras):
  """The fake-quantized (QAT) model of the tf_keras `twin`, its weights kept.

  Raises:
    RuntimeError: from tfmot, naming a layer it cannot quantize.
  """
  keras_q = tfmot.quantization.keras
  config_class = output_quantize_config_class(tfmot)

  def annotate(layer):
    if type(layer).__name__ in OUTPUT_QUANTIZED:
      return keras_q.quantize_annotate_layer(layer, quantize_config=config_class())
    return keras_q.quantize_annotate_layer(layer)

  # clone_function wraps the twin's own layer objects, so their weights carry over.
  annotated = tf_keras.models.clone_model(twin, clone_function=annotate)
  with keras_q.quantize_scope({"OutputQuantizeConfig": config_class}):
    return keras_q.quantize_apply(annotated)

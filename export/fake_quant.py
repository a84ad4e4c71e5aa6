"""Fake quantization of a tf_keras twin with tensorflow-model-optimization.

Every layer is annotated for tfmot's default 8-bit scheme (weights per channel,
activations per tensor, BatchNorm folded into the convolution before it), except
the weightless layers tfmot's registry does not know (`OUTPUT_QUANTIZED`:
`Rescaling`, `Multiply`, `Subtract` and the twin's `HardSwish`): they get
`OutputQuantizeConfig`, a
fake-quant of their output with moving-average ranges, the way tfmot treats
`Add` and `ReLU`, and TFLite has int8 kernels for each. The
twin (`export.twin`) turns arithmetic with constants and the hard-sigmoid /
hard-swish activations into such layers, which is what lets a MobileNetV3 be
quantized at all (tfmot cannot clone the `TFOpLambda` layers tf_keras would
have made of them).

A short fine-tuning starts from calibrated activation ranges (`calibrate_ranges`):
tfmot's own start at [-6, 6] and adapt at 0.1 % a step.

Callers import tfmot first (`export.qat.import_tfmot`); this module takes it as
an argument so that importing it imports nothing heavy.
"""

import numpy as np

from export import twin as twin_lib

#: Weightless layers that tfmot 0.8's default registry refuses; their outputs get a
#: fake-quant of their own. `HardSwish` has none inside it, so TFLite's converter can
#: fuse it into one integer op.
OUTPUT_QUANTIZED = ("Rescaling", "Multiply", "Subtract", "HardSwish")


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
  with keras_q.quantize_scope({"OutputQuantizeConfig": config_class,
                               "HardSwish": twin_lib.hard_swish_class(tf_keras)}):
    return keras_q.quantize_apply(annotated)


#: The tfmot variables that follow an activation's range by exponential moving average.
_EMA_RANGE_VARIABLES = ("output_min", "output_max", "post_activation_min", "post_activation_max")


def ema_decay(tfmot):
  """The EMA decay of tfmot's moving-average quantizers, read from its `quant_ops`.

  tfmot has no public accessor; this is the one place that reads its internals, and it
  fails loudly when they move (tests/export/test_qad.py runs it).
  """
  import inspect  # pylint: disable=import-outside-toplevel

  from tensorflow_model_optimization.python.core.quantization.keras import quant_ops  # pylint: disable=import-outside-toplevel,g-direct-tensorflow-import

  del tfmot  # Imported already: the caller's handle proves it.
  parameter = inspect.signature(quant_ops.MovingAvgQuantize).parameters.get("ema_decay")
  if parameter is None or not 0 < float(parameter.default) < 1:
    raise RuntimeError("tensorflow-model-optimization's MovingAvgQuantize has no ema_decay "
                       "default in (0, 1); export.fake_quant needs updating")
  return float(parameter.default)


def calibrate_ranges(qmodel, batches, tfmot) -> int:
  """Starts every activation range at the mean of its per-batch range over `batches`.

  tfmot's activation ranges start at [-6, 6] and move by 0.1 % per training step
  (EMA decay 0.999): a fine-tuning of a few hundred steps ends with ranges still
  mostly at their initial values, which clips large activations and coarsens small
  ones (measured: a MobileNetV3Small lost a third of its accuracy that way). Each
  training-mode forward here moves a range r to d r + (1 - d) b; b, the batch's
  range, is read back from that step and averaged. BatchNorm statistics move as in
  any training-mode forward. Returns the number of ranges set.
  """
  decay = ema_decay(tfmot)
  tracked = [v for v in qmodel.non_trainable_weights
             if v.name.split("/")[-1].split(":")[0] in _EMA_RANGE_VARIABLES]
  sums = [np.zeros(v.shape, np.float64) for v in tracked]
  count = 0
  for images in batches:
    before = [v.numpy().astype(np.float64) for v in tracked]
    qmodel(images, training=True)
    for total, v, old in zip(sums, tracked, before):
      total += (v.numpy().astype(np.float64) - decay * old) / (1.0 - decay)
    count += 1
  if count:
    for total, v in zip(sums, tracked):
      v.assign((total / count).astype(v.dtype.as_numpy_dtype))
  return len(tracked) if count else 0

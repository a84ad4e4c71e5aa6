"""keras.applications MobileNets with BatchNorm momentum 0.9, for short CPU runs, and the
tiny models of the mobile scripts' `--quick` checks.

`bench/reproduction/mobile.py` trains for a few epochs on a CPU. Keras' MobileNetV3 builds its
BatchNorm layers with momentum 0.999, tuned for ImageNet-length runs: after the
~400-2000 steps of that protocol the moving statistics are still mostly their
initial values, and the models score chance (0.10 on CIFAR-10) in inference mode
while their training accuracy climbs (measured: MobileNetV3Large, 6 epochs on
10,000 images, train 0.45, test 0.10). Momentum 0.9 makes inference-mode
statistics usable after a few dozen steps; the architecture (hard-swish,
squeeze-excite, depthwise convolutions), the folded preprocessing and the export
path are exactly those of `--student_model=MobileNetV3Small`.

Used through the `package.module:function` model source (bench/ is put on
PYTHONPATH by `whole_runs.run_main`):
  --teacher_model=mobile_models:mobilenet_v3_large --student_model=mobile_models:mobilenet_v3_small
"""

import keras

from tf_srkd.models import sources as model_sources

BN_MOMENTUM = 0.9


def _with_bn_momentum(model, momentum=BN_MOMENTUM):
  """Sets every BatchNormalization's momentum, nested models included (before any trace)."""
  pending = list(model.layers)
  while pending:
    layer = pending.pop()
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.momentum = momentum
    pending.extend(getattr(layer, "layers", ()))
  return model


def mobilenet_v3_small(input_shape, num_classes):
  """`MobileNetV3Small` as `--student_model` builds it, BatchNorm momentum 0.9."""
  return _with_bn_momentum(model_sources.build("MobileNetV3Small", input_shape, num_classes))


def mobilenet_v3_large(input_shape, num_classes):
  """`MobileNetV3Large` as `--teacher_model` builds it, BatchNorm momentum 0.9."""
  return _with_bn_momentum(model_sources.build("MobileNetV3Large", input_shape, num_classes))


def tiny_bn_cnn(input_shape, num_classes):
  """A few-thousand-parameter CNN with Keras' application BatchNorm momentum (0.999), for
  the seconds-scale `--quick` checks of the BN scripts (their code paths, not their figures)."""
  inputs = keras.Input(shape=input_shape, name="image")
  x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
  x = keras.layers.BatchNormalization(momentum=0.999)(x)
  x = keras.layers.Activation("relu")(x)
  x = keras.layers.GlobalAveragePooling2D(name="pool")(x)  # Named: a feature-term layer.
  return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name="tiny_bn")


def tiny_hard_swish_cnn(input_shape, num_classes):
  """`tiny_bn_cnn` with MobileNetV3's activation (`Activation("hard_swish")`, as
  keras.applications builds it): the mobile script's `--quick` student, whose int8 file
  must show TFLite's HARD_SWISH op as a MobileNetV3Small's does, in seconds."""
  inputs = keras.Input(shape=input_shape, name="image")
  x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
  x = keras.layers.BatchNormalization(momentum=0.999)(x)
  x = keras.layers.Activation("hard_swish")(x)
  x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x),
                     name="tiny_hard_swish")

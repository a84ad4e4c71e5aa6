"""Model factories for the `package.module:function` model source (tests only)."""

import keras


def tiny_cnn(input_shape, num_classes):
  """A small logits classifier with BatchNorm and hard-swish (a MobileNetV3 block in miniature)."""
  inputs = keras.Input(shape=input_shape, name="image")
  x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
  x = keras.layers.BatchNormalization()(x)
  x = keras.layers.Activation("hard_swish")(x)
  # Squeeze-excite, as MobileNetV3 builds it.
  s = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
  s = keras.layers.Conv2D(4, 1, activation="relu")(s)
  s = keras.layers.Conv2D(8, 1, activation="hard_sigmoid")(s)
  x = keras.layers.Multiply()([x, s])
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name="tiny_cnn")


def mobilenet_v3_block(input_shape, num_classes):
  """MobileNetV3's pieces as keras.applications builds them, once each: Rescaling,
  Conv-BN-hard-swish, and a squeeze-excite whose hard sigmoid is `ReLU(6)(x + 3) * (1/6)`
  (arithmetic on tensors, not a layer)."""
  inputs = keras.Input(shape=input_shape, name="image")
  x = keras.layers.Rescaling(1 / 255)(inputs)
  x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
  x = keras.layers.BatchNormalization()(x)
  x = keras.layers.Activation("hard_swish")(x)
  s = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
  s = keras.layers.ReLU()(keras.layers.Conv2D(4, 1, padding="same")(s))
  s = keras.layers.Conv2D(8, 1, padding="same")(s)
  s = keras.layers.ReLU(6.0)(s + 3.0) * (1.0 / 6.0)
  x = keras.layers.Multiply()([x, s])
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x),
                     name="mobilenet_v3_block")


def wrong_classes(input_shape, num_classes):
  """Ignores the class count (for the error test)."""
  return tiny_cnn(input_shape, num_classes + 1)


def not_a_model(input_shape, num_classes):
  del input_shape, num_classes
  return "not a model"


def dead_squeeze_cnn(input_shape, num_classes):
  """`tiny_cnn` whose squeeze-excite ReLU never fires (bias -100): its int8
  calibration range collapses to zero, which XNNPACK refuses to prepare."""
  inputs = keras.Input(shape=input_shape, name="image")
  x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
  x = keras.layers.Activation("hard_swish")(x)
  s = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
  s = keras.layers.Conv2D(4, 1, activation="relu",
                          bias_initializer=keras.initializers.Constant(-100.0))(s)
  s = keras.layers.Conv2D(8, 1, activation="hard_sigmoid")(s)
  x = keras.layers.Multiply()([x, s])
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x),
                     name="dead_squeeze_cnn")

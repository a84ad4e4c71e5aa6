"""LeNet-5 models that standardise their input (for the input-scaling screen).

Factories for the ``package.module:function`` model source: the paper's LeNet-5
and LeNet-5-half behind a fixed per-channel standardisation layer, so that the
pipeline's [0, 1] images reach the convolutions as (x - mean) / std, with
MNIST's training-set mean and standard deviation (0.1307 and 0.3081). Used as

  PYTHONPATH=bench python bench/reproduction/fidelity.py --dataset=mnist --seeds=0 --distill_epochs=50 \\
      --label=screen_std --teacher_flags=--teacher_model=standardised_models:lenet5 \\
      --no_write -- --student_model=standardised_models:lenet5_half
"""

import keras

from tf_srkd.models import zoo as models

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # Of the training images in [0, 1].


def _standardised(name, input_shape, num_classes):
  mean, std = MNIST_MEAN, MNIST_STD
  inputs = keras.Input(shape=input_shape, name="image")
  x = keras.layers.Normalization(mean=mean, variance=std * std, name="standardise")(inputs)
  logits = models.build_model(name, input_shape, num_classes)(x)
  return keras.Model(inputs, logits, name=f"{name}_standardised")


def lenet5(input_shape, num_classes):
  """LeNet-5 on MNIST-standardised input."""
  return _standardised("lenet5", input_shape, num_classes)


def lenet5_half(input_shape, num_classes):
  """LeNet-5-half on MNIST-standardised input."""
  return _standardised("lenet5_half", input_shape, num_classes)

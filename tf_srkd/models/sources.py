"""Where a teacher or student comes from: a name, an application, a factory or a file.

`--teacher_model` / `--student_model` accept four kinds of source:

  * ``registry``: a name of `models.MODELS` (``lenet5``, ``alexnet_half``, ...);
  * ``application``: a `keras.applications` constructor (``MobileNetV3Small``,
    ``ResNet50``, ...), built with ``weights=None`` for the dataset's input shape
    and classes, logits out (``classifier_activation=None``), with the
    application's own preprocessing folded in (`app_preprocessing`) so that the
    model takes the pipeline's [0, 1] images; images smaller than the
    application's minimum size are zero-padded up to it inside the model;
  * ``factory``: ``package.module:function``, called as
    ``function(input_shape, num_classes)`` and returning a logits model;
  * ``file``: a saved ``.keras`` model (a pre-trained teacher), loaded in Keras'
    safe mode and checked against the dataset (`loading.load_model`).

`kind_of` decides the kind from the text alone (no TensorFlow import), so that
`config.validate` can refuse a malformed name early; `build` makes the model
and raises `ConfigError` with one line naming the flag for everything that can
go wrong (unknown application, a factory that does not import or returns the
wrong shape, a file refused by safe mode, a weights file that does not fit).
"""

import importlib
import os
import re
from typing import Optional

from tf_srkd.models import zoo as models
from tf_srkd.errors import ConfigError

KINDS = ("registry", "application", "factory", "file")
_FACTORY = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_APPLICATION = re.compile(r"[A-Z]\w*")
_MIN_SIZE = re.compile(r"at least (\d+)x(\d+)")


def kind_of(name: str) -> Optional[str]:
  """The kind of source `name` spells (see the module doc), or None."""
  if name in models.MODELS:
    return "registry"
  if name.endswith(".keras"):
    return "file"
  if _FACTORY.fullmatch(name):
    return "factory"
  if _APPLICATION.fullmatch(name):
    return "application"
  return None


def describe_choices() -> str:
  return (f"one of {', '.join(sorted(models.MODELS))}, a keras.applications name (e.g. "
          "MobileNetV3Small), a package.module:function factory or a .keras file")


def check_name(flag: str, name: str):
  """The TensorFlow-free check of a model flag.

  Raises:
    ConfigError: `name` is no kind of source, or names a `.keras` file that is absent.
  """
  kind = kind_of(name)
  if kind is None:
    raise ConfigError(f"--{flag}={name}: unknown; expected {describe_choices()}")
  if kind == "file" and not os.path.isfile(name):
    raise ConfigError(f"--{flag}={name}: no such .keras file")


def is_pretrained(name: str, weights: Optional[str]) -> bool:
  """Whether the model starts from trained weights (a .keras file or a weights file)."""
  return kind_of(name) == "file" or bool(weights)


def files_of(name: str, weights: Optional[str]):
  """The files a model source reads (for the run's identity digest)."""
  return [p for p in ((name if kind_of(name) == "file" else None), weights) if p]


def _application(flag, name, input_shape, num_classes):
  """A `keras.applications` model for [0, 1] images of `input_shape`, logits out."""
  import keras  # pylint: disable=import-outside-toplevel

  from tf_srkd.models import app_preprocessing  # pylint: disable=import-outside-toplevel

  constructor = getattr(keras.applications, name, None)
  if not callable(constructor) or app_preprocessing.module_of(name) is None:
    raise ConfigError(f"--{flag}={name}: unknown; expected {describe_choices()}")
  size = tuple(input_shape[:2])
  channels = input_shape[-1]

  def make(shape):
    return constructor(input_shape=shape, weights=None, classes=num_classes,
                       classifier_activation=None)

  try:
    base = make((*size, channels))
  except ValueError as e:
    match = _MIN_SIZE.search(str(e))
    if not match:
      raise ConfigError(f"--{flag}={name}: cannot be built for images of shape "
                        f"{tuple(input_shape)} ({' '.join(str(e).split())[:160]})") from e
    # Smaller than the application allows: upscale inside the model.
    size = (max(size[0], int(match.group(1))), max(size[1], int(match.group(2))))
    base = make((*size, channels))
  inputs = keras.Input(shape=tuple(input_shape), name="image")
  x = inputs
  if size != tuple(input_shape[:2]):
    # Zero padding, not `Resizing`: a Resizing layer in front of MobileNetV3
    # gave different logits on repeated calls of the same model (TF 2.21, CPU).
    pad_h, pad_w = size[0] - input_shape[0], size[1] - input_shape[1]
    x = keras.layers.ZeroPadding2D(((pad_h // 2, pad_h - pad_h // 2),
                                    (pad_w // 2, pad_w - pad_w // 2)), name="pad_to_min_size")(x)
  x = app_preprocessing.folded_layer(name, channels)(x)
  return keras.Model(inputs, base(x), name=name.lower())


def _factory(flag, name, input_shape, num_classes):
  module_name, function_name = name.split(":")
  try:
    function = getattr(importlib.import_module(module_name), function_name)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f"--{flag}={name}: cannot import the factory ({e})") from e
  try:
    return function(tuple(input_shape), int(num_classes))
  except Exception as e:  # pylint: disable=broad-except  (user code raises anything)
    raise ConfigError(f"--{flag}={name}: the factory failed ({type(e).__name__}: "
                      f"{' '.join(str(e).split())[:160]})") from e


def _check_model(flag, name, model, input_shape, num_classes):
  """One input of the dataset's shape, one output of `num_classes` logits."""
  import keras  # pylint: disable=import-outside-toplevel

  if not isinstance(model, keras.Model):
    raise ConfigError(f"--{flag}={name}: expected a keras.Model, got {type(model).__name__}")
  inputs, outputs = getattr(model, "inputs", None) or [], getattr(model, "outputs", None) or []
  if len(inputs) != 1 or tuple(inputs[0].shape[1:]) != tuple(input_shape):
    shapes = [tuple(t.shape[1:]) for t in inputs]
    raise ConfigError(f"--{flag}={name}: takes inputs {shapes}, the dataset's images are "
                      f"{tuple(input_shape)}")
  if len(outputs) != 1 or tuple(outputs[0].shape[1:]) != (num_classes,):
    shapes = [tuple(t.shape[1:]) for t in outputs]
    raise ConfigError(f"--{flag}={name}: outputs {shapes}, the dataset has {num_classes} "
                      "classes (expected one logits output)")


def build(name: str, input_shape, num_classes: int, weights: Optional[str] = None,
          flag: str = "model"):
  """Builds (or loads) the classifier `name` for the dataset, logits out.

  Call under the strategy's scope when the model is to be trained there.

  Args:
    name: a source of any kind (see the module doc).
    input_shape: the dataset's (height, width, channels).
    num_classes: the dataset's class count.
    weights: optional weights file (`model.load_weights`) loaded after building.
    flag: the flag named in error messages.

  Returns:
    A `keras.Model` taking [0, 1] images of `input_shape`, giving `num_classes` logits.

  Raises:
    ConfigError: one line naming `--flag` (or the file) and the problem.
  """
  check_name(flag, name)
  kind = kind_of(name)
  if kind == "registry":
    model = models.build_model(name, input_shape, num_classes)
  elif kind == "file":
    from tf_srkd.models import loading  # pylint: disable=import-outside-toplevel

    try:
      model = loading.load_model(name, input_shape, num_classes)
    except ConfigError as e:
      raise ConfigError(f"--{flag}={e}") from e
  elif kind == "factory":
    model = _factory(flag, name, input_shape, num_classes)
  else:
    model = _application(flag, name, input_shape, num_classes)
  _check_model(flag, name, model, input_shape, num_classes)
  if weights:
    weights_flag = flag.replace("_model", "_weights")
    if not os.path.isfile(weights):
      raise ConfigError(f"--{weights_flag}={weights}: no such file")
    try:
      model.load_weights(weights)
    except Exception as e:  # pylint: disable=broad-except  (Keras/h5py raise anything)
      raise ConfigError(f"--{weights_flag}={weights}: does not fit --{flag}={name} "
                        f"({' '.join(str(e).split())[:160]})") from e
  return model


def has_batch_norm(network) -> bool:
  """Whether any (nested) layer of `network` is a BatchNormalization."""
  import keras  # pylint: disable=import-outside-toplevel

  return any(isinstance(layer, keras.layers.BatchNormalization)
             for layer in network._flatten_layers(include_self=False))  # pylint: disable=protected-access


def backward_for(backward: str, network) -> str:
  """The backward a model trains with: `auto` means `masked` for BatchNorm networks.

  With `compact`, BatchNorm's batch statistics (and its moving averages) come
  from the participating rows only, often 1 to 20 late in training; `masked`
  keeps every row of the batch in the forward pass, so BN sees whole batches.
  An explicit `--backward=compact` is honoured.
  """
  if backward == "auto" and has_batch_norm(network):
    return "masked"
  return backward

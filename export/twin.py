"""A Keras 3 model rebuilt as a flat tf_keras model with the same weights, for tfmot.

tensorflow-model-optimization 0.8 quantizes tf_keras models only, refuses a
model nested in another (a `keras.applications` student is an `Input ->
preprocess -> MobileNetV3Small` wrapper) and cannot clone the `TFOpLambda`
layers that `x + 3.0` becomes in tf_keras (tensorflow/model-optimization #980,
#1145). So the twin is drawn from the Keras 3 model's public functional config
(`get_config()`), node by node, into one flat graph of built-in tf_keras layers:

  * a Keras layer becomes the tf_keras layer of the same class and config
    (the Keras 3 serialization keys tf_keras does not know are dropped);
  * a nested functional model is inlined, its input bound to its caller's tensor;
  * an affine map of a feature map, `Rescaling` or arithmetic with a constant
    (`x + 3.0`, `x * (1 / 6)`), becomes a frozen 1x1 `DepthwiseConv2D` with the
    scale as kernel and the offset as bias: one TFLite op, so the int8 model has
    a quantized tensor on each side of it (`Rescaling`'s multiply-then-add left a
    float tensor between two ops);
  * arithmetic of two tensors becomes the `Add` / `Subtract` / `Multiply` layer;
  * `hard_sigmoid` / `hard_silu` (`hard_swish`) activations, which tf_keras lacks
    or defines differently: `hard_sigmoid` becomes `relu6(x + 3) / 6` from those
    pieces, and hard-swish one `HardSwish` layer computing `x * relu6(x + 3) * (1/6)`,
    the form TFLite's converter fuses into its single integer `HARD_SWISH` op (its
    pieces, each with a quantized output, would stay four ops).

Layer names are kept, so the weights are copied by name; `check_twin` then
measures the two models' outputs on real images. Anything else in the graph
stops with an `ExportError` naming the node.
"""

import functools
import inspect

import numpy as np

from export.errors import ExportError

#: Largest |twin - model| accepted on [0, 1] images: the rebuilt activations round
#: differently from Keras 3's fused ones (1e-7 relative on MobileNetV3Small).
TOLERANCE = 1e-4

_BINARY = {"Add": "Add", "Subtract": "Subtract", "Multiply": "Multiply"}
_HARD = ("hard_sigmoid", "hard_silu", "hard_swish")
_BASE_LAYER_KEYS = ("name", "trainable", "dtype")


@functools.lru_cache(maxsize=None)
def hard_swish_class(tf_keras):
  """The weightless tf_keras layer `x * relu6(x + 3) * (1/6)` (one class per tf_keras)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  class HardSwish(tf_keras.layers.Layer):
    """hard-swish in the operand order TFLite's converter matches as `HARD_SWISH`."""

    def call(self, inputs):  # pylint: disable=arguments-differ
      return inputs * tf.nn.relu6(inputs + 3.0) * (1.0 / 6.0)

  return HardSwish


def _is_tensor(value):
  return isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"


def _plain(value):
  """A Keras 3 serialized value as tf_keras reads it: objects as {class_name, config},
  dtype policies as their dtype name."""
  if isinstance(value, dict):
    if value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
      return value["config"]["name"]
    if "class_name" in value and "config" in value:
      return {"class_name": value["class_name"], "config": _plain(value["config"])}
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  return value


def _layer_config(cls, config):
  """`config` restricted to what tf_keras' `cls.__init__` accepts. Initializers are left
  at tf_keras' defaults: the weights are copied afterwards, and Keras 3 initializer
  configs carry arguments tf_keras' do not."""
  accepted = set(inspect.signature(cls.__init__).parameters) | set(_BASE_LAYER_KEYS)
  return {k: _plain(v) for k, v in config.items()
          if k in accepted and not k.endswith("_initializer")}


class _Builder:
  """Draws one Keras 3 functional config into tf_keras tensors."""

  def __init__(self, tf_keras):
    self.tf_keras = tf_keras
    self.names = set()
    self.frozen = {}  # Layers the twin adds: name -> their constant weights.

  def unique(self, name):
    base, i = name, 0
    while name in self.names:
      i += 1
      name = f"{base}_{i}"
    self.names.add(name)
    return name

  def model(self, config, inputs):
    """Output tensors of the functional or Sequential model `config` applied to `inputs`."""
    if "input_layers" in config:
      return self.graph(config, inputs)
    x = inputs[0]
    for layer in config["layers"]:
      if layer["class_name"] != "InputLayer":
        x = self.call({**layer, "name": layer["config"]["name"]}, [x])
    return [x]

  def graph(self, config, inputs):
    """Output tensors of the functional `config` with its input layers bound to `inputs`."""
    tensors = {}
    input_refs = config["input_layers"]
    input_refs = [input_refs] if isinstance(input_refs[0], str) else input_refs
    for ref, tensor in zip(input_refs, inputs):
      tensors[(ref[0], 0, 0)] = tensor
    for layer in config["layers"]:
      if layer["class_name"] == "InputLayer":
        continue
      # Keras numbers a nested model's call nodes from 1 (node 0 is its own graph).
      first = 1 if "layers" in layer["config"] else 0
      for node_index, node in enumerate(layer["inbound_nodes"], start=first):
        args = [self.resolve(a, tensors) for a in node["args"]]
        outputs = self.call(layer, args)
        for i, out in enumerate(outputs if isinstance(outputs, (list, tuple)) else [outputs]):
          tensors[(layer["name"], node_index, i)] = out
    output_refs = config["output_layers"]
    output_refs = [output_refs] if isinstance(output_refs[0], str) else output_refs
    return [tensors[tuple(ref)] for ref in output_refs]

  def resolve(self, arg, tensors):
    if _is_tensor(arg):
      return tensors[tuple(arg["config"]["keras_history"])]
    if isinstance(arg, list):
      return [self.resolve(a, tensors) for a in arg]
    return arg

  def call(self, layer, args):
    name, cls_name, config = layer["name"], layer["class_name"], layer["config"]
    if "layers" in config:  # A nested model: inlined.
      outputs = self.model(config, args[0] if isinstance(args[0], list) else args)
      return outputs if len(outputs) > 1 else outputs[0]
    if layer.get("module", "keras.layers").startswith("keras.src.ops"):
      return self.operation(name, cls_name, args)
    if cls_name == "Activation" and config.get("activation") in _HARD:
      return self.hard(name, config["activation"], args[0])
    if cls_name == "Rescaling":
      self.names.add(name)
      return self.affine(name, args[0], config["scale"], config["offset"])
    cls = getattr(self.tf_keras.layers, cls_name, None)
    if cls is None or not layer.get("module", "keras.layers").startswith("keras"):
      raise ExportError(f"layer {name} ({cls_name}): not a built-in Keras layer, so it has no "
                        "tf_keras twin for quantization-aware training")
    for key in ("activation",):
      if config.get(key) in _HARD:
        raise ExportError(f"layer {name}: activation={config[key]!r} inside {cls_name} has no "
                          "tf_keras twin; use a separate Activation layer")
    self.names.add(name)
    return cls(**_layer_config(cls, config))(*args)

  def operation(self, name, op, args):
    """A `keras.ops` node: arithmetic with a constant or of two tensors."""
    layers = self.tf_keras.layers
    tensors = [a for a in args if not isinstance(a, (int, float))]
    constants = [float(a) for a in args if isinstance(a, (int, float))]
    if len(tensors) == 2 and op in _BINARY:
      return getattr(layers, _BINARY[op])(name=self.unique(name))(tensors)
    if len(tensors) == 1 and len(constants) == 1:
      c, tensor_first = constants[0], not isinstance(args[0], (int, float))
      x = tensors[0]
      if op == "Add":
        return self.affine(name, x, 1.0, c)
      if op == "Subtract":
        return self.affine(name, x, *((1.0, -c) if tensor_first else (-1.0, c)))
      if op == "Multiply":
        return self.affine(name, x, c, 0.0)
      if op in ("Divide", "TrueDivide") and tensor_first:
        return self.affine(name, x, 1.0 / c, 0.0)
    raise ExportError(f"operation {name} ({op} of {len(tensors)} tensor(s) and "
                      f"{len(constants)} constant(s)) has no tf_keras twin")

  def affine(self, name, x, scale, offset):
    """x * scale + offset per channel: a frozen 1x1 depthwise convolution on a feature
    map, `Rescaling` on anything else."""
    layers = self.tf_keras.layers
    if len(x.shape) != 4:
      return layers.Rescaling(scale, offset, name=self.unique(name))(x)
    channels = int(x.shape[-1])
    kernel = np.broadcast_to(np.asarray(scale, np.float32), [channels]).reshape(1, 1, channels, 1)
    bias = np.broadcast_to(np.asarray(offset, np.float32), [channels])
    layer = layers.DepthwiseConv2D(1, use_bias=True, trainable=False, name=self.unique(name))
    out = layer(x)
    layer.set_weights([kernel.copy(), bias.copy()])
    self.frozen[layer.name] = layer
    return out

  def hard(self, name, activation, x):
    """hard-swish: one `HardSwish` layer. hard_sigmoid(x) = relu6(x + 3) / 6 from pieces:
    TFLite has no hard-sigmoid op, ReLU6 is one, and a ReLU capped at 1 would be two, with
    a float tensor between them."""
    layers = self.tf_keras.layers
    if activation != "hard_sigmoid":
      return hard_swish_class(self.tf_keras)(name=self.unique(name))(x)
    self.names.add(name)
    gate = self.affine(f"{name}/plus_3", x, 1.0, 3.0)
    gate = layers.ReLU(max_value=6.0, name=self.unique(f"{name}/relu6"))(gate)
    return self.affine(f"{name}/over_6", gate, 1.0 / 6.0, 0.0)


def weighted_layers(model):
  """{name: layer} of every layer with weights, nested models flattened (Keras 3)."""
  found, pending = {}, list(model.layers)
  while pending:
    layer = pending.pop(0)
    sub = getattr(layer, "layers", None)
    if sub:
      pending.extend(sub)
    elif layer.weights:
      found[layer.name] = layer
  return found


def build_twin(model, tf_keras):
  """The flat tf_keras twin of the Keras 3 functional `model`, its weights copied.

  Raises:
    ExportError: a node without a twin, or layers whose weights do not line up.
  """
  config = model.get_config()
  if "layers" not in config:
    raise ExportError(f"{model.name}: only functional or Sequential Keras models have a "
                      "tf_keras twin (a subclassed model has no graph to copy)")
  shape = tuple(model.inputs[0].shape[1:])
  inputs = tf_keras.Input(shape, name=model.inputs[0].name.split(":")[0] or "image")
  builder = _Builder(tf_keras)
  outputs = builder.model(config, [inputs])
  twin = tf_keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs, name=model.name)
  source = weighted_layers(model)
  target = {layer.name: layer for layer in twin.layers
            if layer.weights and layer.name not in builder.frozen}
  if sorted(source) != sorted(target):
    missing = sorted(set(source) ^ set(target))[:6]
    raise ExportError(f"{model.name}: the tf_keras twin's weighted layers differ from the "
                      f"model's ({missing})")
  for name, layer in source.items():
    weights = [np.asarray(w) for w in layer.get_weights()]
    expected = [tuple(w.shape) for w in target[name].get_weights()]
    if [w.shape for w in weights] != expected:
      raise ExportError(f"layer {name}: weight shapes {[w.shape for w in weights]}, the tf_keras "
                        f"twin's {expected}")
    target[name].set_weights(weights)
  return twin


def check_twin(model, twin, images, exact=False):
  """max |model(images) - twin(images)| in inference mode; ExportError above `TOLERANCE`
  (or above 0 when `exact`)."""
  a = np.asarray(model(images, training=False))
  b = np.asarray(twin(images, training=False))
  diff = float(np.max(np.abs(a - b)))
  limit = 0.0 if exact else TOLERANCE * max(1.0, float(np.max(np.abs(a))))
  if not diff <= limit:
    raise ExportError(f"the tf_keras twin of {model.name} differs from it by {diff} "
                      f"(at most {limit} accepted)")
  return diff

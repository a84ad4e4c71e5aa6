"""keras.distillation losses as per-sample terms, so the gate and significance weigh them.

`keras.distillation.Distiller` reduces each `DistillationLoss` to one number per
batch. Self-regulation needs one number per *sample*: the gate keeps a sample
in or out, significance scales it, and the loss is normalised over the
participants. A term's per-sample value here is the loss's own
`compute_loss` on that sample alone (a batch of one, vectorised over the batch
with `tf.vectorized_map`), so any loss that averages over the batch, which
Keras' `LogitsDistillation` and `FeatureDistillation` and their Keras losses
do, gives per-sample values whose batch mean is its batch value. A loss that
couples the samples of a batch (relational KD) has no per-sample value; it gets
its value on each sample alone.

Which outputs a loss reads follows Keras' Distiller: with a `teacher_layer_name`
the named layers' outputs of both models (a missing `student_layer_name` reads
the student's logits), otherwise the two models' logits. The string "logits"
names the paper's term, KL(softmax(z_T/tau) || softmax(z_S/tau)) * tau**2
(`losses.kd_divergence`), the default.

Feature maps whose shapes differ only in their last (channel) axis are matched
through a learned linear projection of the student's features, FitNets' hint
regressor (a 1x1 convolution on maps, a dense layer on vectors), trained with
the student and not part of it (it is not saved with the student). Keras'
`FeatureDistillation` documents no projection of its own (its example suggests
`cosine_similarity` "for different feature sizes", which still needs equal
shapes), so maps that differ elsewhere are refused with both shapes.
"""

import dataclasses
import difflib
from typing import Optional, Sequence, Tuple

#: The paper's tau**2-scaled logit KD, by name.
PAPER_KD = "logits"
#: The key of a model's output among its taps (Keras' Distiller uses the same name).
OUTPUT = "final_output"
#: The Keras losses `--distillation_loss=feature:T,S,LOSS` may name (default mse).
FEATURE_LOSSES = ("mse", "mae", "cosine_similarity", "huber", "log_cosh")


def parse_flag(text: str) -> Tuple[str, ...]:
  """One `--distillation_loss` value, checked without TensorFlow.

  Returns:
    ("logits",) or ("feature", teacher_layer, student_layer, loss).

  Raises:
    ValueError: naming the value and the expected forms.
  """
  kind, _, rest = text.partition(":")
  if kind == PAPER_KD and not rest:
    return (PAPER_KD,)
  parts = rest.split(",")
  if kind == "feature" and len(parts) in (2, 3) and all(parts[:2]):
    loss = parts[2] if len(parts) == 3 else "mse"
    if loss in FEATURE_LOSSES:
      return ("feature", parts[0], parts[1], loss)
    raise ValueError(f"--distillation_loss={text}: unknown feature loss {loss!r}; expected one "
                     f"of {', '.join(FEATURE_LOSSES)}")
  raise ValueError(f"--distillation_loss={text}: expected {PAPER_KD} or "
                   "feature:TEACHER_LAYER,STUDENT_LAYER[,LOSS]")


def from_flags(texts, weights=()):
  """(losses, weights) for `Distiller(distillation_losses=..., distillation_loss_weights=...)`
  from `--distillation_loss` values, or (None, None) for the paper's logit KD alone,
  which keeps its own code path, bit for bit."""
  if tuple(texts) == (PAPER_KD,) and tuple(weights) in ((), (1.0,)):
    return None, None
  return [loss_of(parse_flag(text)) for text in texts], (list(weights) or None)


def loss_of(parsed: Tuple[str, ...]):
  """The loss object of a `parse_flag` result: `PAPER_KD` or a FeatureDistillation."""
  if parsed[0] == PAPER_KD:
    return PAPER_KD
  import keras  # pylint: disable=import-outside-toplevel

  _, teacher_layer, student_layer, loss = parsed
  return keras.distillation.FeatureDistillation(loss=loss, teacher_layer_name=teacher_layer,
                                                student_layer_name=student_layer)


@dataclasses.dataclass(frozen=True)
class Term:
  """One weighted distillation loss.

  Attributes:
    loss: `PAPER_KD` or a `keras.distillation.DistillationLoss`.
    weight: its factor in the sum of the distillation terms.
  """

  loss: object
  weight: float = 1.0

  @property
  def teacher_layer(self) -> Optional[str]:
    return None if self.loss == PAPER_KD else getattr(self.loss, "teacher_layer_name", None)

  @property
  def student_layer(self) -> Optional[str]:
    """The student layer the loss reads; None: the logits (as Keras reads it)."""
    if self.teacher_layer is None:
      return None
    return getattr(self.loss, "student_layer_name", None)

  @property
  def key(self) -> str:
    """Names the term's pair of layers (its projection's key)."""
    return f"{self.teacher_layer}->{self.student_layer or 'logits'}"

  def describe(self) -> str:
    if self.loss == PAPER_KD:
      return PAPER_KD
    layers = (f"({self.teacher_layer} -> {self.student_layer or 'logits'})"
              if self.teacher_layer else "")
    return f"{type(self.loss).__name__}{layers}"


def terms_of(distillation_losses, weights=None) -> Tuple[Term, ...]:
  """The terms of `Distiller(distillation_losses=..., distillation_loss_weights=...)`.

  Args:
    distillation_losses: one loss or a list: `PAPER_KD` ("logits") or
      `keras.distillation.DistillationLoss` objects (`LogitsDistillation`,
      `FeatureDistillation`, your own subclasses).
    weights: one number per loss (default: 1 each), as Keras' Distiller takes.

  Raises:
    ValueError: an empty list, a weight count that differs, a weight that is not a
      finite number >= 0, or an object that is not a distillation loss.
  """
  import keras  # pylint: disable=import-outside-toplevel

  if not isinstance(distillation_losses, (list, tuple)):
    distillation_losses = [distillation_losses]
  if not distillation_losses:
    raise ValueError("distillation_losses: give at least one loss (e.g. \"logits\")")
  weights = [1.0] * len(distillation_losses) if weights is None else list(weights)
  if len(weights) != len(distillation_losses):
    raise ValueError(f"distillation_loss_weights: {len(weights)} weights for "
                     f"{len(distillation_losses)} losses")
  terms = []
  for loss, weight in zip(distillation_losses, weights):
    if loss != PAPER_KD and not isinstance(loss, keras.distillation.DistillationLoss):
      raise ValueError(f"distillation_losses: {loss!r} is neither {PAPER_KD!r} nor a "
                       "keras.distillation.DistillationLoss")
    weight = float(weight)
    if not weight >= 0 or weight == float("inf"):
      raise ValueError(f"distillation_loss_weights: {weight} is not a finite number >= 0")
    terms.append(Term(loss, weight))
  return tuple(terms)


def per_sample(loss, teacher_outputs, student_outputs):
  """float32 [batch]: `loss.compute_loss` of each sample alone.

  Args:
    loss: a `keras.distillation.DistillationLoss`.
    teacher_outputs, student_outputs: [batch, ...] tensors it compares.
  """

  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def one(pair):
    teacher, student = pair
    value = loss.compute_loss(teacher[None], student[None])
    return tf.reshape(tf.cast(value, tf.float32), [])

  return tf.vectorized_map(one, (teacher_outputs, student_outputs), fallback_to_while_loop=True)


def find_layer(model, name):
  """`model`'s layer `name`, searched in its nested models too; None when absent. A
  nested layer may also be named by its path, `outer/inner`, as `layer_names` lists it."""
  head, _, rest = name.partition("/")
  if rest:
    outer = next((l for l in model.layers if l.name == head and hasattr(l, "layers")), None)
    if outer is not None:
      found = find_layer(outer, rest)
      if found is not None:
        return found
  for layer in model.layers:
    if layer.name == name:
      return layer
  for layer in model.layers:
    if hasattr(layer, "layers"):
      found = find_layer(layer, name)
      if found is not None:
        return found
  return None


def _within(outer, name):
  """`name` as the nested model `outer` knows it: `outer/inner` -> `inner`."""
  prefix = outer.name + "/"
  return name[len(prefix):] if name.startswith(prefix) else name


def layer_names(model, prefix=""):
  """Every layer name of `model`, nested ones as `outer/inner`."""
  names = []
  for layer in model.layers:
    names.append(prefix + layer.name)
    if hasattr(layer, "layers"):
      names += layer_names(layer, f"{prefix}{layer.name}/")
  return names


def layer_output_shape(model, name, role) -> tuple:
  """The output shape of `model`'s layer `name` (nested models searched too), without
  the batch axis.

  Raises:
    ValueError: no such layer (naming the model's layers), or a model without
      symbolic outputs (subclassed), which layer names cannot reach.
  """
  if getattr(model, "inputs", None) is None:
    raise ValueError(f"a feature loss reads the {role}'s layer {name!r}, but the {role} has no "
                     "symbolic inputs (a subclassed model, or a Sequential built without "
                     "keras.Input); use a Functional model or a Sequential that starts with "
                     "keras.Input, or a loss on the logits")
  layer = find_layer(model, name)
  if layer is None:
    raise ValueError(missing_layer_message(model, name, role))
  return tuple(layer.output.shape[1:])


def missing_layer_message(model, name, role) -> str:
  """One line for a layer `name` that `model` lacks: the closest names first, since a
  pretrained network lists hundreds and a typo's fix is otherwise lost in them; then
  every name, so the line stays complete for grep."""
  names = layer_names(model)
  close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
  if not close:  # A bare inner name of a nested model: its `outer/inner` paths.
    close = [n for n in names if n.rsplit("/", 1)[-1].startswith(name)][:3]
  hint = f"; did you mean {' or '.join(repr(n) for n in close)}?" if close else "."
  return (f"the {role} has no layer {name!r}{hint} Its {len(names)} layers: "
          f"{', '.join(names)}")


def tap_model(model, names: Sequence[str], name: str):
  """A model giving {OUTPUT: its logits, layer: output, ...} of `model` in one forward,
  sharing its weights; None when no layer is read.

  Layers of nested models (a pretrained network behind an input adapter) are
  reached by calling `model`'s layers in order, the nested model replaced by its
  own taps; that is `model` only when its layers form a chain, which is checked on
  a random batch (a model with branches around the nested one is refused).
  """
  if not names:
    return None
  import keras  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  own = {layer.name for layer in model.layers}
  if all(n in own for n in names):
    logits = model.layers[-1].output if isinstance(model, keras.Sequential) else model.output
    outputs = {OUTPUT: logits}
    outputs.update({n: model.get_layer(n).output for n in names})
    return keras.Model(inputs=model.inputs, outputs=outputs, name=name)
  inputs = keras.Input(shape=tuple(model.inputs[0].shape[1:]))
  x, taps = inputs, {}
  for layer in model.layers:
    if isinstance(layer, keras.layers.InputLayer):
      continue
    inner = [n for n in names if n not in own and hasattr(layer, "layers")
             and find_layer(layer, _within(layer, n)) is not None]
    if inner:
      outputs = tap_model(layer, [_within(layer, n) for n in inner], f"{name}_{layer.name}")(x)
      x = outputs.pop(OUTPUT)
      taps.update({n: outputs[_within(layer, n)] for n in inner})
    else:
      x = layer(x)
    if layer.name in names:
      taps[layer.name] = x
  tapped = keras.Model(inputs=inputs, outputs={OUTPUT: x, **taps}, name=name)
  probe = np.random.default_rng(0).random((2,) + tuple(inputs.shape[1:])).astype("float32")
  if not np.allclose(np.asarray(tapped(probe, training=False)[OUTPUT]),
                     np.asarray(model(probe, training=False)), rtol=1e-4, atol=1e-5):
    raise ValueError(f"{model.name}: the layers {', '.join(names)} sit in a nested model that "
                     "is not a simple chain of layers; name layers of the outer model")
  return tapped


def projections(terms, teacher, student, build=True) -> dict:
  """{term.key: projection} for the layer-reading terms whose features differ in
  their channel axis (`projection_for`); with `build=False` only checks.

  Raises:
    ValueError: a layer either model lacks (naming its layers), or shapes no
      projection can match (naming both).
  """
  found = {}
  for term in terms:
    if not term.teacher_layer or term.key in found:
      continue
    teacher_shape = layer_output_shape(teacher, term.teacher_layer, "teacher")
    if term.student_layer:
      student_shape = layer_output_shape(student, term.student_layer, "student")
    elif getattr(student, "outputs", None) is None:
      raise ValueError(f"{term.describe()} compares the teacher's layer with the student's "
                       "logits, but the student has no symbolic outputs (a subclassed model, "
                       "or a Sequential built without keras.Input); use a Functional model or "
                       "a Sequential that starts with keras.Input")
    else:
      student_shape = tuple(student.outputs[0].shape[1:])
    projection = projection_for(teacher_shape, student_shape, term.describe(), build)
    if projection is not None:
      found[term.key] = projection
  return found


def projection_for(teacher_shape, student_shape, describe, build=True):
  """A linear map of the student's features onto the teacher's shape (True with
  `build=False`), or None when the shapes already agree.

  Raises:
    ValueError: shapes that differ in more than their last axis.
  """
  if tuple(teacher_shape) == tuple(student_shape):
    return None
  if (len(teacher_shape) != len(student_shape) or teacher_shape[:-1] != student_shape[:-1]
      or teacher_shape[-1] is None):
    raise ValueError(f"{describe}: the teacher's features have shape {tuple(teacher_shape)} "
                     f"and the student's {tuple(student_shape)}; a learned projection matches "
                     "the last (channel) axis only, so pick layers whose other axes agree")
  if not build:
    return True
  import keras  # pylint: disable=import-outside-toplevel

  projection = keras.layers.Dense(int(teacher_shape[-1]), use_bias=False)
  projection.build((None,) + tuple(student_shape))
  return projection

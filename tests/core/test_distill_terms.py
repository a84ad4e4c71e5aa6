"""keras.distillation losses under the gate: per-sample values, Keras' own loss value with
the gate open, the gate and significance applied per sample, and projections."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_srkd
from tf_srkd.core import distill_terms

N = 48


def _data():
  rng = np.random.default_rng(0)
  x = rng.random((N, 8, 8, 1), np.float32)
  y = (x[:, :4].mean(axis=(1, 2, 3)) > 0.5).astype(np.int32)
  return x, y


def _net(width, seed, name):
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((8, 8, 1))
  features = keras.layers.Conv2D(width, 3, activation="relu", name="features")(inputs)
  flat = keras.layers.Flatten()(features)
  hidden = keras.layers.Dense(6, activation="relu", name="hidden")(flat)
  return keras.Model(inputs, keras.layers.Dense(2, name="logits")(hidden), name=name)


def _feature_loss():
  return keras.distillation.FeatureDistillation(loss="mse", teacher_layer_name="features",
                                                student_layer_name="features")


def _fit_one_step(mode, losses, weights=None, significance=None, student_width=4,
                  optimizer=None, kd_lambda=0.0):
  x, y = _data()
  teacher, student = _net(4, 1, "teacher"), _net(student_width, 2, "student")
  model = tf_srkd.Distiller(teacher, student, N, mode=mode, significance=significance,
                            kd_lambda=kd_lambda, distillation_losses=losses,
                            distillation_loss_weights=weights)
  model.compile(optimizer=optimizer or keras.optimizers.SGD(0.0))
  logs = model.fit(x, y, batch_size=N, epochs=1, shuffle=False, verbose=0).history
  return model, logs, teacher, student


def _assert_gate_open_matches_keras_distiller(losses, weights):
  """With the gate open, our KD term equals keras.distillation.Distiller's loss value on
  the same batch, for the same loss objects and weights."""
  x, y = _data()
  reference = keras.distillation.Distiller(_net(4, 1, "teacher"), _net(4, 2, "student"),
                                           distillation_losses=losses,
                                           distillation_loss_weights=weights,
                                           student_loss_weight=0.0)
  reference.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
  expected = float(reference.compute_loss(x=x, y=y, training=True))
  _, logs, _, _ = _fit_one_step("conventional", losses, weights)
  np.testing.assert_allclose(logs["kd_loss"][0], expected, rtol=1e-5)


def test_terms_are_checked_like_keras_distiller_checks_them():
  assert distill_terms.terms_of("logits") == (distill_terms.Term("logits", 1.0),)
  with pytest.raises(ValueError, match="2 weights for 1 losses"):
    distill_terms.terms_of(["logits"], [1.0, 2.0])
  with pytest.raises(ValueError, match="not a finite number"):
    distill_terms.terms_of(["logits"], [-1.0])
  with pytest.raises(ValueError, match="neither 'logits' nor"):
    distill_terms.terms_of([keras.losses.MeanSquaredError()])
  with pytest.raises(ValueError, match="at least one"):
    distill_terms.terms_of([])


def test_per_sample_values_average_to_the_batch_value():
  rng = np.random.default_rng(1)
  teacher = rng.normal(size=(5, 3, 3, 4)).astype(np.float32)
  student = rng.normal(size=(5, 3, 3, 4)).astype(np.float32)
  loss = keras.distillation.FeatureDistillation(loss="mse")
  values = distill_terms.per_sample(loss, tf.constant(teacher), tf.constant(student)).numpy()
  np.testing.assert_allclose(values, ((teacher - student) ** 2).mean(axis=(1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(values.mean(), float(loss.compute_loss(teacher, student)),
                             rtol=1e-5)
  logits = keras.distillation.LogitsDistillation(temperature=4.0)
  t, s = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
  np.testing.assert_allclose(distill_terms.per_sample(logits, t, s).numpy().mean(),
                             float(logits.compute_loss(t, s)), rtol=1e-5)


@pytest.mark.parametrize("kl", ["by name", "instance"])
def test_feature_and_logit_losses_reproduce_keras_distiller_with_the_gate_open(kl):
  # By name Keras takes its plain function (no softmax, no tau**2); an instance takes
  # Hinton's branch: both must come out as Keras computes them.
  logits = (keras.distillation.LogitsDistillation(temperature=3.0) if kl == "by name" else
            keras.distillation.LogitsDistillation(temperature=3.0,
                                                  loss=keras.losses.KLDivergence()))
  losses = [logits, _feature_loss()]
  weights = [1.0, 0.5]
  _assert_gate_open_matches_keras_distiller(losses, weights)


def test_the_gate_and_significance_multiply_each_sample_of_a_feature_loss():
  x, y = _data()
  significance = np.linspace(0.0, 1.0, N).astype(np.float32)
  model, logs, teacher, student = _fit_one_step("hybrid", [_feature_loss()],
                                                significance=significance)
  # Epoch 0: eta = 0, so exactly the misclassified samples take part.
  logits = student.predict(x, verbose=0)
  gate = (logits.argmax(-1) != y).astype(np.float32)
  assert 0 < gate.sum() < N
  taps = lambda m: keras.Model(m.inputs, m.get_layer("features").output).predict(x, verbose=0)
  per_sample = ((taps(teacher) - taps(student)) ** 2).mean(axis=(1, 2, 3))
  expected = (gate * significance * per_sample).sum() / gate.sum()
  np.testing.assert_allclose(logs["kd_loss"][0], expected, rtol=1e-5)
  np.testing.assert_array_equal(model.participation_counts(), gate.astype(np.int32))


class ProbabilityGap(keras.distillation.DistillationLoss):
  """A user's own loss: the L1 distance of the two softened class distributions,
  averaged over the batch, as a Keras user would write one for keras.distillation."""

  def __init__(self, temperature=2.0):
    self.temperature = temperature

  def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
    gap = keras.ops.abs(keras.ops.softmax(teacher_outputs / self.temperature)
                        - keras.ops.softmax(student_outputs / self.temperature))
    return keras.ops.mean(keras.ops.sum(gap, axis=-1))


def _softmax(z):
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def test_a_users_own_distillation_loss_runs_under_the_gate_unchanged():
  x, y = _data()
  losses, weights = [ProbabilityGap(), _feature_loss()], [2.0, 0.5]
  # The gate open: Keras' own Distiller's loss value, same objects, same weights.
  _assert_gate_open_matches_keras_distiller(losses, weights)
  # Gated and significance-weighted: the same loss, recomputed per sample in NumPy.
  significance = np.linspace(0.1, 1.0, N).astype(np.float32)
  model, logs, teacher, student = _fit_one_step("hybrid", [ProbabilityGap()],
                                                significance=significance)
  t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
  # Epoch 0: eta = 0, so exactly the misclassified samples take part.
  gate = (s.argmax(-1) != y).astype(np.float32)
  assert 0 < gate.sum() < N
  per_sample = np.abs(_softmax(t / 2.0) - _softmax(s / 2.0)).sum(axis=-1)
  np.testing.assert_allclose(logs["kd_loss"][0],
                             (gate * significance * per_sample).sum() / gate.sum(), rtol=1e-5)
  np.testing.assert_array_equal(model.participation_counts(), gate.astype(np.int32))


def test_naming_the_papers_term_is_the_default_bit_for_bit():
  runs = []
  for losses in (None, ["logits"]):
    model, logs, _, student = _fit_one_step("regulated", losses, kd_lambda=0.3,
                                            optimizer=keras.optimizers.Adam(1e-2))
    runs.append((logs["loss"], [w.copy() for w in student.get_weights()]))
  assert runs[0][0] == runs[1][0]
  for a, b in zip(runs[0][1], runs[1][1]):
    np.testing.assert_array_equal(a, b)


def test_channels_that_differ_are_matched_by_a_trained_projection():
  model, logs, _, student = _fit_one_step("regulated", [_feature_loss()], student_width=2,
                                          optimizer=keras.optimizers.SGD(0.1))
  (projection,) = model.trained_extras()
  assert projection.kernel.shape == (2, 4)
  assert any(v is projection.kernel for v in model.trained_variables())
  assert all(v is not projection.kernel for v in student.trainable_variables)  # Not shipped.
  assert np.isfinite(logs["kd_loss"][0])


def test_bad_layers_and_shapes_are_one_line_naming_what_exists():
  teacher, student = _net(4, 1, "teacher"), _net(4, 2, "student")
  wrong = keras.distillation.FeatureDistillation(teacher_layer_name="nope",
                                                 student_layer_name="features")
  with pytest.raises(ValueError, match="nope"):
    tf_srkd.Distiller(teacher, student, N, distillation_losses=[wrong])
  mismatch = keras.distillation.FeatureDistillation(teacher_layer_name="features",
                                                    student_layer_name="hidden")
  with pytest.raises(ValueError, match=r"\(6, 6, 4\).*\(6,\)"):
    tf_srkd.Distiller(teacher, student, N, distillation_losses=[mismatch])
  with pytest.raises(ValueError, match=r"no layer 'conv'\. Its 5 layers: .*features"):
    distill_terms.layer_output_shape(student, "conv", "student")


def test_a_misspelt_layer_is_answered_with_the_closest_names_first():
  wrapped = keras.Sequential([keras.Input((8, 8, 1)), _net(4, 1, "net")])
  message = distill_terms.missing_layer_message(wrapped, "featurs", "teacher")
  assert re.fullmatch(r"the teacher has no layer 'featurs'; did you mean 'net/features'\? Its 6 "
                      r"layers: net, net/input_layer\w*, net/features, net/flatten\w*, "
                      r"net/hidden, net/logits", message), message
  assert "\n" not in message
  # A nested path with a slip in the inner name, and a name nothing resembles.
  assert "did you mean 'net/hidden'?" in distill_terms.missing_layer_message(
      wrapped, "net/hiden", "teacher")
  assert distill_terms.missing_layer_message(wrapped, "zz", "student").startswith(
      "the student has no layer 'zz'. Its 6 layers:")


def test_layers_inside_a_wrapped_network_are_reached_through_the_adapter():
  """A network behind `input_contract.wrap` (a pre-trained model taking 0..255) nests the
  named layer one level down; its taps give the same logits and the layer's output."""
  from tf_srkd.models import input_contract  # pylint: disable=import-outside-toplevel

  inner = _net(4, 1, "teacher")
  wrapped = input_contract.wrap(inner, "pixels", (8, 8, 1))
  assert distill_terms.find_layer(wrapped, "features") is inner.get_layer("features")
  assert distill_terms.layer_output_shape(wrapped, "features", "teacher") == (6, 6, 4)
  taps = distill_terms.tap_model(wrapped, ["features"], "taps")
  x, _ = _data()
  out = taps(x[:4], training=False)
  np.testing.assert_allclose(out[distill_terms.OUTPUT], wrapped(x[:4], training=False),
                             rtol=1e-6)
  features = keras.Model(inner.inputs, inner.get_layer("features").output)(x[:4] * 255.0)
  np.testing.assert_allclose(out["features"], features, rtol=1e-5, atol=1e-6)
  assert "teacher/features" in distill_terms.layer_names(wrapped)
  # The listed path names the same layer as the bare name.
  assert distill_terms.find_layer(wrapped, "teacher/features") is inner.get_layer("features")
  assert distill_terms.layer_output_shape(wrapped, "teacher/features", "teacher") == (6, 6, 4)
  by_path = distill_terms.tap_model(wrapped, ["teacher/features"], "taps")(x[:4], training=False)
  np.testing.assert_allclose(by_path["teacher/features"], out["features"], rtol=1e-6)
  assert distill_terms.find_layer(wrapped, "teacher/nope") is None


def test_a_sequential_student_and_a_teacher_layer_against_the_logits():
  """No student layer: the teacher's layer is compared with the student's logits (as in
  Keras), through a projection when their widths differ."""
  keras.utils.set_random_seed(3)
  student = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(2, name="out")])
  hint = keras.distillation.FeatureDistillation(teacher_layer_name="hidden")
  x, y = _data()
  model = tf_srkd.Distiller(_net(4, 1, "teacher"), student, N, mode="regulated",
                            distillation_losses=["logits", hint])
  (projection,) = model.trained_extras()
  assert projection.kernel.shape == (2, 6)  # The student's 2 logits onto the teacher's 6 units.
  model.compile(optimizer="adam")
  logs = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history
  assert np.isfinite(logs["kd_loss"]).all()

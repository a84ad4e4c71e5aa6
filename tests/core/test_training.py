"""The trainer's semantics, exactly: gate, normalisation, empty batches, counts."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_srkd.core import callbacks
from tf_srkd.data import arrays as data
from tf_srkd.core import distillation
from tf_srkd.core import losses
from tf_srkd.models import zoo as models
from tf_srkd.core import modes
from tf_srkd.core import regulation
from tf_srkd.run import stages
from tf_srkd.core import training
from tests.support.recount import BruteForceRecount


def random_split(n, seed=0, shape=(28, 28, 1)):
  rng = np.random.default_rng(seed)
  return data.SplitArrays(images=rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
                          labels=rng.integers(0, 10, n).astype(np.int32))


def make_teacher(n, backward="masked", optimizer=None, seed=1):
  keras.utils.set_random_seed(seed)
  network = models.build_model("lenet5", (28, 28, 1), 10)
  model = training.SelfRegulatedModel(network, n, backward=backward)
  model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3), jit_compile=False)
  model.optimizer.build(network.trainable_variables)
  return model


def one_batch(split, ids, extras=None):
  ids = np.asarray(ids, np.int32)
  features = {"image": data.preprocess(split.images[ids]), "id": tf.constant(ids)}
  for k, v in (extras or {}).items():
    features[k] = tf.constant(v[ids])
  return features, tf.constant(split.labels[ids])


def state(model):
  return ([v.numpy().copy() for v in model.network.weights] +
          [np.asarray(v.numpy()).copy() for v in model.optimizer.variables])


@pytest.mark.parametrize("backward", ["masked", "compact"])
def test_batch_where_nobody_takes_part_changes_nothing(backward):
  split = random_split(64)
  model = make_teacher(64, backward)
  # Warm Adam up so its moments are non-zero (a zero-gradient Adam step would still move them).
  model.eta.assign(math.inf)
  model.train_step(one_batch(split, range(32)))
  # Labels = the model's own predictions and eta = 0: nobody is wrong, nobody is unsure.
  predictions = np.argmax(model.network(data.preprocess(split.images), training=False), -1)
  split = data.SplitArrays(split.images, predictions.astype(np.int32))
  model.eta.assign(0.0)
  before = state(model)
  counts_before = model.participation_counts().copy()
  model.reset_metrics()
  logs = model.train_step(one_batch(split, range(64)))
  after = state(model)
  assert all(np.array_equal(a, b) for a, b in zip(before, after)), "weights or optimizer moved"
  np.testing.assert_array_equal(model.participation_counts(), counts_before)
  assert float(logs["participation_fraction"]) == 0.0


def test_update_is_the_normalised_gated_loss():
  """One SGD(lr=1) step equals minus the gradient of sum(g L) / max(1, sum g)."""
  split = random_split(32, seed=3)
  model = make_teacher(32, optimizer=keras.optimizers.SGD(1.0))
  network = model.network
  # Half the labels agree with the untrained network; eta sits at their median margin.
  logits = network(data.preprocess(split.images), training=False)
  predicted = np.argmax(logits, -1).astype(np.int32)
  labels = np.where(np.arange(32) < 16, predicted, (predicted + 1) % 10).astype(np.int32)
  split = data.SplitArrays(split.images, labels)
  eta = float(np.median(regulation.margin(tf.nn.softmax(logits)).numpy()[:16]))
  features, labels = one_batch(split, range(32))
  model.eta.assign(eta)
  w0 = [v.numpy().copy() for v in network.trainable_variables]
  with tf.GradientTape() as tape:
    logits = network(features["image"], training=True)
    g, _, _ = regulation.gate(logits, labels, eta)
    expected_loss = tf.reduce_sum(g * losses.cross_entropy(labels, logits)) / tf.maximum(
        tf.reduce_sum(g), 1.0)
  grads = tape.gradient(expected_loss, network.trainable_variables)
  assert 0 < float(tf.reduce_sum(g)) < 32, "test needs a mixed gate"
  model.train_step((features, labels))
  for w, grad, v in zip(w0, grads, network.trainable_variables):
    np.testing.assert_allclose(v.numpy(), w - grad.numpy(), atol=1e-6)
  np.testing.assert_array_equal(model.participation_counts(), g.numpy().astype(np.int32))


@pytest.mark.parametrize("backward", ["masked", "compact", "auto"])
def test_participation_equals_brute_force_recount(backward):
  split = random_split(200, seed=5)
  # Learnable labels so margins grow and the gate thins out over the epochs.
  split = data.SplitArrays(split.images, (split.images.reshape(200, -1).mean(1) > 127.5).astype(np.int32))
  model = make_teacher(200, backward, keras.optimizers.Adam(3e-3))
  alpha, epochs = 0.5, 4
  recount = BruteForceRecount(split, 48, 7, alpha, epochs)
  history = model.fit(data.train_dataset(split, 48, 7, 0, epochs), epochs=epochs,
                      steps_per_epoch=data.steps_per_epoch(200, 48), verbose=0,
                      callbacks=[callbacks.RegulationSchedule(alpha, 200), recount])
  counts = model.participation_counts()
  np.testing.assert_array_equal(counts, recount.counts)
  assert counts.max() <= epochs
  fractions = history.history["participation_fraction"]
  np.testing.assert_allclose(np.array(fractions) * 200, recount.per_epoch, atol=1e-3)
  assert counts.sum() == sum(recount.per_epoch)
  assert history.history["zeta"][-1] == pytest.approx(counts.sum() / (epochs * 200))
  assert 0 < counts.sum() < epochs * 200


def test_compact_and_masked_make_the_same_update():
  split = random_split(64, seed=9)
  probe = make_teacher(64).network(data.preprocess(split.images), training=False)
  predicted = np.argmax(probe, -1).astype(np.int32)
  split = data.SplitArrays(split.images, np.where(np.arange(64) % 3 == 0, (predicted + 1) % 10,
                                                  predicted).astype(np.int32))
  eta = float(np.median(regulation.margin(tf.nn.softmax(probe)).numpy()))
  results = {}
  for backward in ("masked", "compact"):
    model = make_teacher(64, backward, keras.optimizers.SGD(0.5))
    model.eta.assign(eta)
    logs = model.train_step(one_batch(split, range(64)))
    results[backward] = (model.participation_counts(), [v.numpy() for v in model.network.weights],
                         float(logs["loss"]))
  np.testing.assert_array_equal(results["masked"][0], results["compact"][0])
  assert 0 < results["masked"][0].sum() < 64
  for a, b in zip(results["masked"][1], results["compact"][1]):
    np.testing.assert_allclose(a, b, atol=2e-6)
  assert results["masked"][2] == pytest.approx(results["compact"][2], rel=1e-5)


def test_auto_switches_to_compact_when_few_take_part():
  model = make_teacher(64, "auto")
  model.make_train_function()
  schedule = callbacks.RegulationSchedule(0.1, 64, previous_fraction=0.1)
  schedule.set_model(model)
  schedule.on_epoch_begin(3)
  assert model.active_backward == "compact"
  assert model.train_function is model._train_functions["compact"]
  schedule.previous_fraction = 0.9
  schedule.on_epoch_begin(4)
  assert model.active_backward == "masked"
  assert model.eta.numpy() == pytest.approx(1 - math.exp(-0.4))


@pytest.mark.parametrize("rule,alpha,expected", [
    ("masked", 0.1, "masked"), ("compact", 0.1, "compact"), ("compact", math.inf, "masked")])
def test_auto_first_epoch_follows_the_measured_rule(monkeypatch, rule, alpha, expected):
  monkeypatch.setattr(callbacks, "AUTO_FIRST_BACKWARD", rule)
  model = make_teacher(64, "auto")
  model.make_train_function()
  schedule = callbacks.RegulationSchedule(alpha, 64)
  schedule.set_model(model)
  schedule.on_epoch_begin(0)
  assert model.active_backward == expected
  assert model.train_function is model._train_functions[expected]


def _student(n, mode, teacher=None, optimizer=None, backward="masked"):
  keras.utils.set_random_seed(2)
  student = models.build_model("lenet5_half", (28, 28, 1), 10)
  model = distillation.Distiller(student, n, modes.get_mode(mode), temperature=20.0, kd_lambda=0.3,
                                 teacher=teacher, backward=backward)
  model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1), jit_compile=False)
  model.optimizer.build(student.trainable_variables)
  return model


def test_cached_teacher_logits_equal_live_teacher():
  split = random_split(40, seed=11)
  teacher = make_teacher(40).network
  logits = teacher.predict(data.preprocess(split.images), verbose=0)
  significance = np.linspace(0, 1, 40).astype(np.float32)
  cached = _student(40, "hybrid")
  live = _student(40, "hybrid", teacher=teacher)
  for model in (cached, live):
    model.eta.assign(0.5)
    model.train_step(one_batch(split, range(40), {"teacher_logits": logits,
                                                  "significance": significance}))
  for a, b in zip(cached.network.weights, live.network.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
  np.testing.assert_array_equal(cached.participation_counts(), live.participation_counts())


def test_significance_mode_weights_every_sample_and_gates_nobody():
  split = random_split(16, seed=12)
  logits = np.random.default_rng(0).normal(size=(16, 10)).astype(np.float32)
  significance = np.zeros(16, np.float32)
  model = _student(16, "significance")
  before = [v.numpy().copy() for v in model.network.weights]
  model.eta.assign(0.0)
  logs = model.train_step(one_batch(split, range(16), {"teacher_logits": logits,
                                                       "significance": significance}))
  # All significance 0 -> zero loss -> zero gradient: SGD leaves the weights where they were.
  for a, v in zip(before, model.network.weights):
    np.testing.assert_array_equal(a, v.numpy())
  assert float(logs["participation_fraction"]) == 1.0
  np.testing.assert_array_equal(model.participation_counts(), np.ones(16))


@pytest.mark.parametrize("backward", ["masked", "compact"])
def test_hybrid_batch_of_zero_significance_changes_nothing_but_counts(backward):
  split = random_split(32, seed=13)
  logits = np.random.default_rng(1).normal(size=(32, 10)).astype(np.float32)
  model = _student(32, "hybrid", optimizer=keras.optimizers.Adam(1e-2), backward=backward)
  model.eta.assign(math.inf)  # Everyone takes part.
  warm = np.ones(32, np.float32)  # Warm Adam up: non-zero moments.
  model.train_step(one_batch(split, range(32), {"teacher_logits": logits, "significance": warm}))
  before = state(model)
  model.reset_metrics()
  zero = np.zeros(32, np.float32)
  logs = model.train_step(one_batch(split, range(32), {"teacher_logits": logits,
                                                       "significance": zero}))
  after = state(model)
  # A zero-weight batch is like an empty one: an Adam step would still move the
  # weights through its moments, so neither weights nor optimizer state change.
  assert all(np.array_equal(a, b) for a, b in zip(before, after)), "weights or optimizer moved"
  assert float(logs["participation_fraction"]) == 1.0
  np.testing.assert_array_equal(model.participation_counts(), np.full(32, 2))


@pytest.mark.parametrize("requested,steps,expected", [
    (0, 118, 118), (1, 118, 1), (200, 118, 118), (118, 118, 118), (32, 118, 2), (59, 118, 59),
    (60, 118, 59), (10, 120, 10), (7, 120, 6), (5, 7, 1)])
def test_execution_steps_never_straddle_an_epoch(requested, steps, expected):
  assert stages.execution_steps(requested, steps) == expected
  assert steps % expected == 0


def test_execution_steps_refuse_negative():
  with pytest.raises(ValueError, match="steps_per_execution"):
    stages.execution_steps(-1, 10)


@pytest.mark.parametrize("epsilon", [1e-7, 1e-8])
def test_compiled_stages_use_the_configured_adam_epsilon(epsilon):
  from tf_srkd.run import config as config_lib  # pylint: disable=import-outside-toplevel

  model = make_teacher(32)
  stages.compile_model(model, 1e-3, config_lib.Config.of(adam_epsilon=epsilon).training)
  assert isinstance(model.optimizer, keras.optimizers.Adam)
  assert model.optimizer.epsilon == epsilon

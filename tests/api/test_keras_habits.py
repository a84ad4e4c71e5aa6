"""`tf_srkd.SelfRegulated` and `tf_srkd.Distiller` take the calls a Keras user makes on day
one: fit on NumPy arrays, validation, callbacks, evaluate, predict, a second fit, save."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_srkd

N, HELD_OUT = 160, 40


def _arrays():
  rng = np.random.default_rng(0)
  x = rng.random((N + HELD_OUT, 8, 8, 1), np.float32)
  y = (x[:, :4].mean(axis=(1, 2, 3)) > 0.5).astype(np.int32)
  return x, y


def _net():
  return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
                           keras.layers.Flatten(), keras.layers.Dense(2)])


def _teacher(alpha=0.5):
  keras.utils.set_random_seed(0)
  model = tf_srkd.SelfRegulated(_net(), N, alpha=alpha)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  return model


def test_fit_on_numpy_arrays_with_validation_split_and_early_stopping():
  x, y = _arrays()
  model = _teacher()
  stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=1,
                                       restore_best_weights=True)
  history = model.fit(x, y, batch_size=32, epochs=6, validation_split=HELD_OUT / (N + HELD_OUT),
                      callbacks=[stop], verbose=0)
  for key in ("val_loss", "val_accuracy", "loss", "accuracy", "eta", "zeta"):
    assert key in history.history, key
  assert model.participation_counts().shape == (N,)
  # Validation is the plain network on the held-out rows (the last ones, as Keras splits).
  logits = model.network.predict(x[N:], verbose=0)
  accuracy = np.mean(np.argmax(logits, -1) == y[N:])
  if stop.stopped_epoch == 0:  # Weights of the last epoch: the last val_accuracy is theirs.
    assert history.history["val_accuracy"][-1] == pytest.approx(accuracy)


def test_fit_with_validation_data_evaluate_and_predict_on_plain_data():
  x, y = _arrays()
  model = _teacher()
  plain_test = tf.data.Dataset.from_tensor_slices((x[N:], y[N:])).batch(16)
  model.fit(x[:N], y[:N], batch_size=32, epochs=2, validation_data=plain_test, verbose=0)
  result = model.evaluate(plain_test, verbose=0, return_dict=True)
  logits = model.predict(x[N:], verbose=0)
  assert logits.shape == (HELD_OUT, 2)
  assert result["accuracy"] == pytest.approx(np.mean(np.argmax(logits, -1) == y[N:]))
  expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y[N:], logits)
  assert result["loss"] == pytest.approx(float(expected), rel=1e-5)
  assert model.evaluate(x[N:], y[N:], verbose=0)[1] == pytest.approx(result["accuracy"])


def test_a_second_fit_continues_the_schedule_and_zeta_stays_a_fraction():
  x, y = _arrays()
  model = _teacher(alpha=0.3)
  first = model.fit(x[:N], y[:N], batch_size=32, epochs=2, verbose=0)
  second = model.fit(x[:N], y[:N], batch_size=32, epochs=2, verbose=0)
  assert first.history["eta"] == pytest.approx([0.0, 1 - np.exp(-0.3)])
  assert second.history["eta"] == pytest.approx([1 - np.exp(-0.6), 1 - np.exp(-0.9)])
  assert int(model.epochs_trained.numpy()) == 4
  counts = model.participation_counts()
  assert second.history["zeta"][-1] == pytest.approx(counts.sum() / (4 * N))
  assert max(first.history["zeta"] + second.history["zeta"]) <= 1.0


def test_counts_and_epochs_survive_saving_the_network(tmp_path):
  x, y = _arrays()
  model = _teacher(alpha=0.3)
  model.fit(x[:N], y[:N], batch_size=32, epochs=2, verbose=0)
  with pytest.raises(NotImplementedError, match=r"model\.network\.save"):
    model.save(str(tmp_path / "wrapper.keras"))
  model.network.save(tmp_path / "net.keras")
  counts = model.participation_counts()
  again = tf_srkd.SelfRegulated(keras.saving.load_model(tmp_path / "net.keras"), N, alpha=0.3,
                                participation=counts,
                                epochs_trained=int(model.epochs_trained.numpy()))
  again.compile(optimizer="adam")
  history = again.fit(x[:N], y[:N], batch_size=32, epochs=1, verbose=0)
  assert history.history["eta"] == pytest.approx([1 - np.exp(-0.6)])
  assert np.all(again.participation_counts() >= counts)


def test_distiller_takes_the_same_calls():
  x, y = _arrays()
  teacher = _teacher()
  teacher.fit(x[:N], y[:N], batch_size=32, epochs=2, verbose=0)
  student = tf_srkd.Distiller(teacher.network, _net(), N, mode="regulated", alpha=0.5)
  student.compile(optimizer="adam")
  history = student.fit(x[:N], y[:N], batch_size=32, epochs=2, validation_data=(x[N:], y[N:]),
                        verbose=0)
  assert "val_accuracy" in history.history and "kd_loss" in history.history
  assert student.predict(x[N:], verbose=0).shape == (HELD_OUT, 2)
  assert set(student.evaluate(x[N:], y[N:], verbose=0, return_dict=True)) == {"loss", "accuracy"}


def test_misuse_names_the_fix():
  x, y = _arrays()
  model = _teacher()
  batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
  with pytest.raises(ValueError, match=r"unbatched dataset"):
    tf_srkd.with_sample_ids(batched)
  with pytest.raises(ValueError, match=r"num_examples=200"):
    model.fit(x, y, epochs=1, verbose=0)
  with pytest.raises(ValueError, match=r"with_sample_ids"):
    model.fit(batched, epochs=1, verbose=0)
  too_many = tf_srkd.with_sample_ids(tf.data.Dataset.from_tensor_slices((x, y))).batch(50)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"num_examples=len"):
    model.fit(too_many, epochs=1, verbose=0)
  too_few = tf_srkd.with_sample_ids(tf.data.Dataset.from_tensor_slices((x[:100], y[:100])))
  with pytest.raises(ValueError, match=r"has 100 samples .* num_examples=100"):
    _teacher().fit(too_few.batch(32), epochs=2, verbose=0)


def test_the_epoch_line_shows_what_a_person_reads(capsys):
  x, y = _arrays()
  model = _teacher()
  history = model.fit(x[:N], y[:N], batch_size=32, epochs=1, verbose=2)
  line = [l for l in capsys.readouterr().out.splitlines() if "step" in l][-1]
  for shown in ("accuracy:", "loss:", "participation:", "eta:"):
    assert shown in line, line
  for hidden in ("gate_from_cache", "compact_backward", "skipped_epoch", "ce_loss", "zeta"):
    assert hidden not in line, line
    assert hidden in history.history  # Still in the logs (history.json, MLflow).


def test_keras_rules_for_splits_remainders_and_unsupported_arguments():
  x, y = _arrays()
  # Keras' rule: floor((1 - split) * rows) rows train; 200 * 0.7 = 140.
  model = tf_srkd.SelfRegulated(_net(), 140, alpha=0.5)
  model.compile(optimizer="adam")
  history = model.fit(x, y, batch_size=32, epochs=1, validation_split=0.3, verbose=0)
  assert "val_accuracy" in history.history
  with pytest.raises(ValueError, match=r"both need rows"):
    model.fit(x[:3], y[:3], validation_split=0.9, verbose=0)  # 0 rows left to train
  with pytest.raises(ValueError, match=r"labels y"):
    model.fit(x[:140], verbose=0)
  with pytest.raises(ValueError, match=r"class_weight"):
    model.fit(x[:140], y[:140], class_weight={0: 1.0, 1: 2.0}, verbose=0)
  # drop_remainder leaves out less than a batch: not a size mismatch.
  train = tf_srkd.with_sample_ids(tf.data.Dataset.from_tensor_slices((x[:N], y[:N])))
  _teacher().fit(train.batch(48, drop_remainder=True), epochs=1, verbose=0)

"""Gate policies (tf_srkd.core.gates): each keep rule against a NumPy recomputation from
what the policy logged, the pure math exactly, flags, and exact counts on 2 replicas."""

import json
import os
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_srkd.core import callbacks
from tf_srkd.run import config as config_lib
from tf_srkd.data import arrays as data
from tf_srkd.core import gates
from tf_srkd.core import losses
from tf_srkd.models import zoo as models
from tf_srkd.core import training
from tf_srkd.core.gates import infobatch
from tf_srkd.core.gates import selective_backprop

N, BATCH, SEED = 96, 32, 7
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _uniforms(policy, epoch, n=N, seed=SEED):
  """The documented draw, written out: PCG64 keyed on (crc32(policy), seed, epoch)."""
  return np.random.default_rng([zlib.crc32(policy.encode()), seed, epoch]).random(
      n, dtype=np.float32)


def _split():
  """N random images whose label (bright or dark) can be learnt."""
  images = np.random.default_rng(5).integers(0, 256, (N, 28, 28, 1), dtype=np.uint8)
  return data.SplitArrays(images, (images.reshape(N, -1).mean(1) > 127.5).astype(np.int32))


class _Log(keras.callbacks.Callback):
  """Each epoch's participants (count differences) and the policy's record."""

  def __init__(self):
    super().__init__()
    self.kept, self.records = [], []

  def on_epoch_begin(self, epoch, logs=None):
    self._before = self.model.participation_counts().copy()

  def on_epoch_end(self, epoch, logs=None):
    self.kept.append(self.model.participation_counts() - self._before)
    self.records.append(dict(self.model.policy.record))


def _train(name, epochs=4, optimizer=None, **settings):
  split = _split()
  keras.utils.set_random_seed(1)
  network = models.build_model("lenet5", (28, 28, 1), 10)
  policy = gates.make_policy(name, N, epochs, SEED, gates.GateSettings(**settings))
  model = training.SelfRegulatedModel(network, N, policy=policy, backward="masked")
  model.compile(optimizer=optimizer or keras.optimizers.Adam(3e-3), jit_compile=False)
  model.optimizer.build(network.trainable_variables)
  log = _Log()
  model.fit(data.train_dataset(split, BATCH, SEED, 0, epochs), epochs=epochs, verbose=0,
            steps_per_epoch=data.steps_per_epoch(N, BATCH),
            callbacks=[callbacks.RegulationSchedule(0.5, N), log])
  return model, log


# -- pure math ----------------------------------------------------------------------


def test_uniforms_are_keyed_on_policy_seed_and_epoch():
  a = gates.base.uniforms("random", 3, 1, 50)
  np.testing.assert_array_equal(a, gates.base.uniforms("random", 3, 1, 50))
  np.testing.assert_array_equal(a, _uniforms("random", 1, 50, seed=3))
  for other in (gates.base.uniforms("random", 3, 2, 50), gates.base.uniforms("random", 4, 1, 50),
                gates.base.uniforms("infobatch", 3, 1, 50)):
    assert not np.array_equal(a, other)
  # The first ids' draws do not depend on N: a subset run keeps its samples' draws.
  np.testing.assert_array_equal(a[:20], gates.base.uniforms("random", 3, 1, 20))


def test_infobatch_weights_and_annealing_epoch():
  scores = np.array([1.0, 2.0, 3.0, 10.0], np.float32)  # mean 4: the first three are below
  uniform = np.array([0.1, 0.9, 0.2, 0.0], np.float32)
  np.testing.assert_array_equal(infobatch.loss_weights(scores, uniform, 0.5), [0, 2, 0, 1])
  np.testing.assert_allclose(infobatch.loss_weights(scores, uniform, 0.25), [0, 4 / 3, 0.0, 1])
  assert infobatch.loss_weights(np.ones(5), np.zeros(5), 0.5).tolist() == [1] * 5
  # delta = 0.875 of 8 epochs: epochs 0-6 prune, epoch 7 anneals.
  assert [infobatch.prunes(e, 8, 0.875) for e in range(8)] == [True] * 7 + [False]
  assert [infobatch.prunes(e, 10, 0.5) for e in range(10)] == [True] * 5 + [False] * 5


def test_selective_backprop_probability_is_the_percentile_to_the_beta():
  reference = np.array([3.0, 1.0, 2.0, 2.0, np.inf], np.float32)  # one +inf pad
  losses_ = np.array([0.5, 1.0, 2.0, 3.0, 2.5], np.float32)
  # scipy.stats.percentileofscore(kind="rank"), as the reference code: the tied 2.0s
  # share ranks 2 and 3 (5/8, not 3/4); a value absent from the reference ranks as "<=".
  expected = np.array([0, 2, 5, 8, 6], np.float32) / 8
  got = selective_backprop.keep_probability(losses_, reference, 4, 2.0).numpy()
  np.testing.assert_allclose(got, expected**2, rtol=1e-6)


def test_selective_backprop_ties_at_the_top_are_not_kept_for_sure():
  # A collapsed network: one loss per class. With beta = 220 (zeta ~0.45 %), the 50 rows
  # tied at the top of 512 would all be kept under a "<=" percentile.
  reference = np.repeat(np.arange(10, dtype=np.float32), [46] * 9 + [98])
  got = selective_backprop.keep_probability(reference, reference, 512, 220.0).numpy()
  assert got.max() < 1e-4
  unique = np.arange(512, dtype=np.float32)
  top = selective_backprop.keep_probability(unique, unique, 512, 220.0).numpy()
  np.testing.assert_allclose(top, (np.arange(1, 513) / 512) ** 220, rtol=1e-4, atol=1e-30)


def test_registry_and_bad_flags():
  assert set(gates.POLICIES) == {"self_regulated", "infobatch", "selective_backprop", "random"}
  with pytest.raises(KeyError, match="unknown gate policy"):
    gates.make_policy("nope", 1, 1, 0)
  for field, value, message in [("gate", "nope", "--gate=nope: unknown"),
                                ("distill_gate", "x", "--distill_gate=x: unknown"),
                                ("infobatch_ratio", 1.0, "--infobatch_ratio=1.0"),
                                ("infobatch_delta", 0.0, "--infobatch_delta=0.0"),
                                ("sb_beta", 0.0, "--sb_beta=0.0"),
                                ("keep_fraction", float("nan"), "--keep_fraction=nan")]:
    with pytest.raises(config_lib.ConfigError, match=message):
      config_lib.validate(config_lib.Config.of(output_dir="/nonexistent/x", **{field: value}))
  # Defaults leave a run's identity (restart check) as it was before policies.
  assert "gate" not in config_lib.identity(config_lib.Config.of())
  assert config_lib.identity(config_lib.Config.of(gate="random"))["gate"] == "random"


def test_self_regulated_is_the_default_and_other_policies_run_compact():
  network = models.build_model("lenet5", (28, 28, 1), 10)
  model = training.SelfRegulatedModel(network, 8, backward="auto")
  assert model.policy.name == "self_regulated" and model.backward == "auto"
  assert model.policy.idle_epochs
  random_gate = gates.make_policy("random", 8, 2, 0)
  model = training.SelfRegulatedModel(network, 8, backward="masked", policy=random_gate)
  assert model.backward == "compact" and not model.policy.idle_epochs
  # A model that does not regulate ignores the policy (every sample takes part).
  model = training.SelfRegulatedModel(network, 8, regulate=False, policy=random_gate)
  assert model.policy.name == "self_regulated"


# -- each policy's keep rule against its log -------------------------------------------


def test_random_keeps_exactly_the_drawn_samples_at_the_binomial_rate():
  p, epochs = 0.3, 4
  model, log = _train("random", epochs, keep_fraction=p)
  for epoch, kept in enumerate(log.kept):
    np.testing.assert_array_equal(kept, (_uniforms("random", epoch) < np.float32(p)).astype(int))
  total = model.participation_counts().sum()
  mean, sigma = N * epochs * p, np.sqrt(N * epochs * p * (1 - p))
  assert abs(total - mean) <= 4 * sigma, (total, mean, sigma)
  # And over many draws the rate converges: 4 sigma of Binomial(10^5, p).
  draws = gates.base.uniforms("random", SEED, 0, 100_000) < np.float32(p)
  assert abs(draws.mean() - p) <= 4 * np.sqrt(p * (1 - p) / 100_000)


def test_infobatch_prunes_below_mean_rescales_and_anneals():
  r, delta, epochs = 0.5, 0.75, 4  # epochs 0-2 prune, epoch 3 anneals
  model, log = _train("infobatch", epochs, infobatch_ratio=r, infobatch_delta=delta)
  scores = np.ones(N, np.float32)
  pruned_any = False
  for epoch, (kept, record) in enumerate(zip(log.kept, log.records)):
    np.testing.assert_array_equal(record["scores"], scores)
    if epoch < 3:
      s = scores.astype(np.float64)
      below = s < s.mean()
      pruned = below & (_uniforms("infobatch", epoch) < np.float32(r))
      expected = np.where(pruned, 0.0, np.where(below, 1 / (1 - r), 1.0))
    else:
      expected = np.ones(N)
    np.testing.assert_allclose(record["weights"], expected)
    np.testing.assert_array_equal(kept, (expected > 0).astype(int))
    pruned_any |= bool((expected == 0).any())
    scores = np.where(kept > 0, record["losses"], scores).astype(np.float32)
    assert np.all(record["losses"][kept > 0] > 0) and np.all(record["losses"][kept == 0] == 0)
  assert pruned_any, "the test needs an epoch that prunes"
  assert log.kept[0].sum() == N and log.kept[3].sum() == N


def test_infobatch_update_is_the_rescaled_mean_over_kept_samples():
  """One SGD(lr=1) step = minus the gradient of sum(w L) / #kept, w in {0, 1/(1-r), 1}."""
  split = _split()
  keras.utils.set_random_seed(1)
  network = models.build_model("lenet5", (28, 28, 1), 10)
  policy = gates.make_policy("infobatch", N, 4, SEED)
  model = training.SelfRegulatedModel(network, N, policy=policy)
  model.compile(optimizer=keras.optimizers.SGD(1.0), jit_compile=False)
  model.optimizer.build(network.trainable_variables)
  weights = np.tile(np.array([0.0, 2.0, 1.0], np.float32), N // 3)
  policy.weights.assign(weights)
  features = {"image": data.preprocess(split.images[:BATCH]),
              "id": tf.range(BATCH, dtype=tf.int32)}
  labels = tf.constant(split.labels[:BATCH])
  w0 = [v.numpy().copy() for v in network.trainable_variables]
  with tf.GradientTape() as tape:
    per_sample = losses.cross_entropy(labels, network(features["image"], training=True))
    w = weights[:BATCH]
    expected = tf.reduce_sum(w * per_sample) / float((w > 0).sum())
  grads = tape.gradient(expected, network.trainable_variables)
  model.train_step((features, labels))
  for before, grad, v in zip(w0, grads, network.trainable_variables):
    np.testing.assert_allclose(v.numpy(), before - grad.numpy(), atol=2e-6)
  np.testing.assert_array_equal(model.participation_counts()[:BATCH], (w > 0).astype(int))


def test_selective_backprop_keeps_by_percentile_within_the_global_batch():
  beta, epochs = 2.0, 3
  _, log = _train("selective_backprop", epochs, sb_beta=beta)
  split = _split()
  for epoch, (kept, record) in enumerate(zip(log.kept, log.records)):
    uniform = _uniforms("selective_backprop", epoch)
    for features, _ in data.train_dataset(split, BATCH, SEED, epoch, epoch + 1):
      ids = features["id"].numpy()
      batch_losses = record["losses"][ids]
      rank = (batch_losses[None, :] <= batch_losses[:, None]).sum(1)
      probability = np.power(np.float32(rank) / np.float32(len(ids)), np.float32(beta))
      np.testing.assert_array_equal(kept[ids], (uniform[ids] < probability).astype(int),
                                    err_msg=f"epoch {epoch}")
      assert kept[ids[np.argmax(batch_losses)]] == 1  # the biggest loser is always kept
  rate = sum(k.sum() for k in log.kept) / (N * epochs)
  assert 0.15 < rate < 0.55  # E[P] = 1 / (beta + 1) for ranks


# -- stages: never skipped, resumed exactly, tagged ------------------------------------------


class _CrashAfter(keras.callbacks.Callback):
  def __init__(self, epoch):
    super().__init__()
    self.epoch = epoch

  def on_epoch_end(self, epoch, logs=None):
    if epoch == self.epoch:
      raise KeyboardInterrupt("simulated crash")


def _fit_stage(name, stage_dir, epochs, crash_after=None):
  from tf_srkd.run import stages  # pylint: disable=import-outside-toplevel

  tf.config.experimental.enable_op_determinism()
  config = config_lib.Config.of(epochs=epochs, batch_size=BATCH, seed=SEED, verbose=0,
                                skip_idle_epochs=True, backward="compact", train_examples=N)
  keras.utils.set_random_seed(1)
  network = models.build_model("lenet5", (28, 28, 1), 10)
  policy = gates.make_policy(name, N, epochs, SEED, gates.GateSettings(keep_fraction=0.05))
  model = training.SelfRegulatedModel(network, N, backward="compact", policy=policy)
  stages.compile_model(model, 3e-3, config.training)
  history, _ = stages.fit_stage(model, _split(), config.training, config.gating, seed=config.seed,
                                verbose=config.verbose, stage_dir=str(stage_dir),
                                epochs=epochs, alpha=1000.0,
                                callbacks=[_CrashAfter(crash_after)] if crash_after else [])
  return model, history


@pytest.mark.slow
@pytest.mark.parametrize("name", ["infobatch", "random"])
def test_policy_stage_resumes_exactly_and_never_skips_epochs(tmp_path, name):
  """alpha=1000 would make Algorithm 1 idle at once; a policy's epochs still all run."""
  straight, history = _fit_stage(name, tmp_path / "straight", 4)
  assert [h["epoch"] for h in history] == [0, 1, 2, 3]
  assert not any(h["skipped_epoch"] for h in history)
  assert all(h["participation_fraction"] > 0 for h in history)
  with pytest.raises(KeyboardInterrupt):
    _fit_stage(name, tmp_path / "crashed", 4, crash_after=2)
  resumed, history = _fit_stage(name, tmp_path / "crashed", 4)
  assert [h["epoch"] for h in history] == [0, 1, 2, 3]
  np.testing.assert_array_equal(straight.participation_counts(), resumed.participation_counts())
  if name == "infobatch":
    np.testing.assert_array_equal(straight.policy.scores, resumed.policy.scores)
  for a, b in zip(straight.network.get_weights(), resumed.network.get_weights()):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_console_and_mlflow_name_the_gate(tmp_path):
  from tf_srkd.run import console  # pylint: disable=import-outside-toplevel
  from tf_srkd.tracking import mlflow_tracking  # pylint: disable=import-outside-toplevel

  assert console.describe_stage("teacher", "teacher", "lenet5", None, 0.02, "infobatch") == (
      "teacher lenet5 (infobatch gate)")
  assert console.describe_stage("teacher", "teacher", "lenet5", None, 0.02,
                                "self_regulated") == "teacher lenet5 (self-regulated, alpha=0.02)"
  config = config_lib.Config.of(output_dir=str(tmp_path / "run"), mlflow_experiment="gates",
                                mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
  tracker = mlflow_tracking.connect(config, strict=True)
  with tracker.run(config, ""):
    with tracker.stage("teacher", role="teacher", model_name="lenet5", alpha=0.02,
                       gate="selective_backprop"):
      pass
  tags = tracker.client.get_run(tracker.stage_run_id("teacher")).data.tags
  assert tags["gate"] == "selective_backprop"


# -- exact counts on 2 replicas --------------------------------------------------------


@pytest.mark.slow
def test_policies_give_identical_counts_on_one_and_two_replicas(tmp_path):
  common = ["--flagfile=flags/smoke.flags", "--cpu_replicas=2", "--epochs=2",
            "--distill_epochs=2", "--train_examples=600", "--batch_size=100",
            "--modes=regulated", "--gate=infobatch", "--infobatch_delta=1",
            "--distill_gate=selective_backprop", "--sb_beta=2"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  for strategy, out in (("default", "one"), ("mirrored", "two")):
    result = subprocess.run([sys.executable, "-m", "tf_srkd.main", *common,
                             f"--strategy={strategy}", f"--output_dir={tmp_path / out}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
  for name in ("teacher/participation.npy", "students/regulated/participation.npy"):
    one, two = np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name)
    assert 0 < one.sum() < one.size * 2, name
    np.testing.assert_array_equal(one, two, err_msg=name)
  metrics = json.loads((tmp_path / "two/teacher/metrics.json").read_text())
  assert metrics["gate"] == "infobatch"

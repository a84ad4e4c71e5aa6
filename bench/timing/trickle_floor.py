"""The self-regulated teacher run against conventional and against its own floor.

Everything in one process, on the same data, seed and machine (`flags/mnist.flags`
settings, the teacher stage through `stages.fit_stage` as `tf_srkd.main` runs it):

  SR            alpha=0.02, backward=compact, skip idle epochs, reuse exact margins
  SR no reuse   the same with reuse_margins off (idle-epoch skipping alone)
  conventional  alpha=inf, backward=masked

The *floor* of an SR run is the work the algorithm cannot avoid: an inference
pass over every row whose margin is not known exactly (all rows of a masked
epoch, the stale rows of a compact one, none in a skipped epoch) plus the
updates it applies, each on its participants only. Its cost is priced with
unit costs measured in this process, before and after the runs (mean of the
two): c_inf per row (inference + margin, full batches from in-memory tensors)
and an update of k rows = a + b*k (Adam step, least squares over k).
Per epoch: forwarded rows = N * (1 - gate_from_cache), updates = the change of
the optimizer's iteration count, participants = N * participation_fraction.

A second table times epoch 0 under `auto`'s two possible first choices (eta = 0:
the participants are the misclassified samples): masked vs compact from the
same initial weights, interleaved rounds.

  python bench/timing/trickle_floor.py                    # 200 epochs, 60000 examples
  python bench/timing/trickle_floor.py --quick --no_write # a few seconds, checks it runs
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position

import keras  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

from tf_srkd.core import callbacks  # pylint: disable=wrong-import-position
from tf_srkd.run import config_flags  # pylint: disable=wrong-import-position
from tf_srkd.data import arrays as data  # pylint: disable=wrong-import-position
from tf_srkd.models import zoo as models  # pylint: disable=wrong-import-position
from tf_srkd.core import regulation  # pylint: disable=wrong-import-position
from tf_srkd.run import stages  # pylint: disable=wrong-import-position
from tf_srkd.core import training  # pylint: disable=wrong-import-position

VARIANTS = {  # name -> (alpha, backward, reuse_margins)
    "SR": (None, "compact", True),
    "SR no reuse": (None, "compact", False),
    "conventional": (float("inf"), "masked", False),
}


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--epochs", type=int, default=200)
  p.add_argument("--examples", type=int, default=0, help="MNIST training examples (0: all)")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--epoch0_rounds", type=int, default=5)
  p.add_argument("--unit_rounds", type=int, default=5)
  p.add_argument("--quick", action="store_true", help="3 epochs on 2048 examples, 1 round")
  p.add_argument("--no_write", action="store_true", help="do not touch bench/RESULTS.md")
  args = p.parse_args()
  if args.quick:
    args.epochs, args.examples, args.epoch0_rounds, args.unit_rounds = 3, 2048, 1, 1
  return args


class _UpdateCounter(keras.callbacks.Callback):
  """Optimizer updates applied in each epoch that ran (skipped epochs apply none)."""

  def __init__(self):
    super().__init__()
    self.updates = {}
    self._start = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._start = int(self.model.optimizer.iterations.numpy())

  def on_epoch_end(self, epoch, logs=None):
    self.updates[epoch] = int(self.model.optimizer.iterations.numpy()) - self._start


def base_config(args, out):
  with open(os.path.join(common.REPO_ROOT, "flags", "mnist.flags"), encoding="utf-8") as f:
    config = config_flags.from_flagfile(f.read())
  return config.replace(epochs=args.epochs, train_examples=args.examples,
                        output_dir=out, verbose=0, mlflow=False)


def build_teacher(config, spec, n, backward):
  keras.utils.set_random_seed(config.seed)
  network = models.build_model(config.models.teacher_model, spec.image_shape, spec.num_classes)
  model = training.SelfRegulatedModel(network, n, regulate=True, backward=backward,
                                      name="teacher")
  stages.compile_model(model, config.training.teacher_lr, config.training)
  return model


def run_variant(args, name, spec, train, test, out):
  alpha, backward, reuse = VARIANTS[name]
  config = base_config(args, out).replace(backward=backward, reuse_margins=reuse,
                               skip_idle_epochs=True)
  alpha = config.gating.alpha if alpha is None else alpha
  model = build_teacher(config, spec, train.size, backward)
  counter = _UpdateCounter()
  load = common.load_average()
  history, wall = stages.fit_stage(model, train, config.training, config.gating,
                                   seed=config.seed, verbose=config.verbose,
                                   stage_dir=os.path.join(out, "teacher"),
                                   epochs=config.training.epochs, alpha=alpha, callbacks=[counter])
  return {"wall": wall, "history": history, "updates": counter.updates,
          "accuracy": stages.evaluate_accuracy(model.network, test,
                                               config.training.eval_batch_size),
          "load": (load, common.load_average())}


def unit_costs(config, spec, batch_size, rounds):
  """(c_inf per row, a, b) in seconds: inference+margin per row; update = a + b*k rows."""
  keras.utils.set_random_seed(1)
  network = models.build_model(config.models.teacher_model, spec.image_shape, spec.num_classes)
  optimizer = keras.optimizers.Adam(config.training.teacher_lr)
  optimizer.build(network.trainable_variables)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.random((batch_size, *spec.image_shape), np.float32))
  labels = tf.constant(rng.integers(0, spec.num_classes, batch_size).astype(np.int32))
  signature = [tf.TensorSpec([None, *spec.image_shape], tf.float32),
               tf.TensorSpec([None], tf.int32)]

  @tf.function(input_signature=signature)
  def infer(x, y):
    logits = network(x, training=False)
    return regulation.gate(logits, y, 0.5)[0]

  @tf.function(input_signature=signature)
  def update(x, y):
    variables = network.trainable_variables
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
          y, network(x, training=True), from_logits=True))
    optimizer.apply(tape.gradient(loss, variables), variables)
    return loss

  def seconds(fn, k, repeats=20):
    x, y = images[:k], labels[:k]
    fn(x, y).numpy()  # warm-up (and the one trace)
    began = time.perf_counter()
    for _ in range(repeats):
      out = fn(x, y)
    out.numpy()
    return (time.perf_counter() - began) / repeats

  sizes = [k for k in (1, 8, 64, batch_size) if k <= batch_size]
  c_inf, fits = [], []
  for _ in range(rounds):
    c_inf.append(seconds(infer, batch_size) / batch_size)
    fits.append(np.polyfit(sizes, [seconds(update, k) for k in sizes], 1))
  b, a = np.median(np.array(fits), axis=0)
  return float(np.median(c_inf)), float(a), float(b)


def floor_seconds(result, n, units):
  """The priced floor of a run and its share of rows served from the cache."""
  c_inf, a, b = units
  total = forwarded = 0.0
  for h in result["history"]:
    skipped = h.get("skipped_epoch", 0) > 0.5
    rows = 0.0 if skipped else n * (1.0 - h.get("gate_from_cache", 0.0))
    participants = n * h["participation_fraction"]
    total += rows * c_inf + result["updates"].get(h["epoch"], 0) * a + participants * b
    forwarded += rows
  return total, 1.0 - forwarded / (n * len(result["history"]))


def floor_vs_conventional(results, n, units):
  """The floor of each self-regulated run as a fraction of the conventional run: no
  implementation of the algorithm gets below it on this machine."""
  conv = results.get("conventional")
  if not conv:
    return []
  parts = [f"{name} {floor_seconds(r, n, units)[0] / conv['wall']:.3f}×"
           for name, r in results.items() if name != "conventional"]
  return ["Floor / conventional run (the cheapest any implementation of the gate could be, "
          "as a fraction of the conventional run): " + ", ".join(parts) + "."]


def epoch0_table(args, spec, train, config):
  """Epoch 0 (eta = 0) with a masked and with a compact first epoch, same initial weights."""
  dataset = data.train_dataset(train, config.training.batch_size, config.seed, 0, 1)
  steps = data.steps_per_epoch(train.size, config.training.batch_size)
  variants = {}
  for backward in ("masked", "compact"):
    model = build_teacher(config, spec, train.size, backward)
    initial = [np.copy(v.numpy()) for v in model.network.weights]
    schedule = callbacks.RegulationSchedule(config.gating.alpha, train.size)

    def run(_, model=model, initial=initial, schedule=schedule):
      model.network.set_weights(initial)  # Every round is the same epoch 0.
      for v in model.optimizer.variables:
        v.assign(tf.zeros_like(v))
      model.set_participation(np.zeros(train.size, np.int32))
      seconds, logs = common.fit_one_epoch(model, dataset, 0, [schedule], steps)
      return seconds, {"cpu_s": logs["cpu_s"],
                       "participation": float(logs["participation_fraction"])}

    variants[f"epoch 0 {backward}"] = run
  res = common.interleave(variants, args.epoch0_rounds, warmup=1)
  masked = res["epoch 0 masked"]
  rows = []
  for name, samples in res.items():
    part = common.median([i["participation"] for _, i in samples])
    rows.append([name, f"{part:.2%}", f"{common.median(common.seconds_of(samples)):.3f}",
                 common.fmt_ratio(common.ratio_summary(samples, masked)),
                 f"{common.cpu_ratio_summary(samples, masked)[0]:.3f}"])
  return common.markdown_table(["variant", "participation", "median s", "/ masked",
                                "(CPU)"], rows)


def main():
  args = parse_args()
  machine = common.machine_description()
  spec, train, test = common.load_mnist(args.examples)
  n = train.size
  names = [v for v in args.variants.split(",") if v]
  with tempfile.TemporaryDirectory() as tmp:
    config = base_config(args, tmp)
    before = unit_costs(config, spec, config.training.batch_size, args.unit_rounds)
    results = {}
    for name in names:
      print(f"running {name} ({args.epochs} epochs, {n} examples)", flush=True)
      results[name] = run_variant(args, name, spec, train, test,
                                  os.path.join(tmp, name.replace(" ", "_")))
    after = unit_costs(config, spec, config.training.batch_size, args.unit_rounds)
    units = tuple((x + y) / 2 for x, y in zip(before, after))
    epoch0 = epoch0_table(args, spec, train, config)
  conv = results.get("conventional")
  rows = []
  for name, r in results.items():
    floor, cached_rows = floor_seconds(r, n, units)
    history = r["history"]
    skipped = sum(h.get("skipped_epoch", 0) > 0.5 for h in history)
    rows.append([name, f"{r['wall']:.1f}",
                 f"**{r['wall'] / conv['wall']:.3f}**" if conv else "—",
                 f"{floor:.1f}", f"**{r['wall'] / floor:.2f}**" if name != "conventional" else "—",
                 f"{r['accuracy']:.2%}",
                 f"{100 * (r['accuracy'] - conv['accuracy']):+.2f}" if conv else "—",
                 f"{skipped}/{len(history)}", f"{cached_rows:.1%}", sum(r["updates"].values()),
                 f"{r['load'][0]:.1f} → {r['load'][1]:.1f}"])
  table = common.markdown_table(
      ["run", "teacher fit s", "/ conventional", "floor s", "run / floor", "test accuracy",
       "Δ acc vs conventional (pt)", "epochs skipped", "gate rows from cache",
       "updates", "load avg start → end"], rows)
  c_inf, a, b = units
  notes = [
      f"{args.epochs} epochs, {n} examples, `flags/mnist.flags` (LeNet-5, batch "
      f"{config.training.batch_size}, Adam {config.training.teacher_lr}, seed {config.seed}), "
      "teacher stage "
      "only, runs one after the other in one process.",
      f"Unit costs (mean of before/after the runs): inference + margin {c_inf * 1e6:.2f} µs "
      f"per row; update of k rows {a * 1e3:.2f} ms + k × {b * 1e6:.2f} µs (before: "
      f"{before[0] * 1e6:.2f} µs, {before[1] * 1e3:.2f} ms, {before[2] * 1e6:.2f} µs; after: "
      f"{after[0] * 1e6:.2f} µs, {after[1] * 1e3:.2f} ms, {after[2] * 1e6:.2f} µs).",
      "Floor = Σ epochs (forwarded rows × c_inf + updates × a + participants × b); "
      "forwarded rows: all of a masked epoch, the stale ones of a compact epoch, none of a "
      "skipped one. `gate rows from cache`: share of all epochs' gate rows that needed no "
      "forward pass (skipped epochs count as all).",
      "Goals: SR ≤ 0.30× conventional at equal accuracy (± 0.2 pt); SR ≤ 1.15× its floor.",
      *floor_vs_conventional(results, n, units),
  ]
  common.publish(f"trickle_floor_e{args.epochs}",
                 f"Self-regulated teacher vs conventional and vs its floor ({args.epochs} epochs)",
                 machine, notes, table, write=not args.no_write)
  common.publish("auto_epoch0", "`auto`'s first epoch, masked or compact",
                 machine, [f"Epoch 0 of the teacher (eta = 0), {n} examples, same initial "
                           f"weights every round; {args.epoch0_rounds} rounds after a "
                           "warm-up, interleaved."], epoch0, write=not args.no_write)


if __name__ == "__main__":
  main()

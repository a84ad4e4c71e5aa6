"""Table 5 of the speed benchmarks: what the package's machinery costs on top of the bare
training computation.

  * end-to-end: `SelfRegulatedModel(lenet5, backward="masked")` with
    `RegulationSchedule(alpha=inf)` (conventional training through the SR code:
    everyone takes part), `fit` on `data.train_dataset` -- exactly what
    `stages.fit_stage` runs for an alpha=inf teacher.
  * diagnostic: the same model and step, `fit` on the same epoch's batches
    pre-gathered into memory (`data.train_dataset` output stored once, then sliced
    per batch), to split the difference into input pipeline vs train step.
  * diagnostic: a plain Keras model (`compile(Adam, sparse CE, accuracy)`)
    `fit` on the same pre-gathered batches: Keras' own `fit` overhead.
  * bare loop: a Python loop calling one `tf.function` step (forward,
    mean sparse CE, backward, `Adam.apply`) over the same epoch's batches,
    pre-materialised as a list of in-memory tensors. No metrics, no gate, no
    Keras `fit`.

All three start from the same weights and use Adam(1e-3). The goal is
efficiency = bare / end-to-end >= 0.9 (i.e. end-to-end at most ~11 % slower).

  python bench/timing/pipeline_overhead.py [--examples=0] [--rounds=5] [--warmup=1]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position

import keras  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

from tf_srkd.core import callbacks  # pylint: disable=wrong-import-position
from tf_srkd.data import arrays as data  # pylint: disable=wrong-import-position
from tf_srkd.core import losses  # pylint: disable=wrong-import-position
from tf_srkd.models import zoo as models  # pylint: disable=wrong-import-position
from tf_srkd.run import stages  # pylint: disable=wrong-import-position
from tf_srkd.core import training  # pylint: disable=wrong-import-position


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--examples", type=int, default=0, help="MNIST training examples (0: all 60000)")
  p.add_argument("--batch_size", type=int, default=512)
  p.add_argument("--rounds", type=int, default=5, help="measured epochs per variant")
  p.add_argument("--warmup", type=int, default=1, help="warm-up epochs per variant (not kept)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no_write", action="store_true", help="do not touch bench/RESULTS.md")
  return p.parse_args()


def in_memory_dataset(batches):
  """`fit` input slicing pre-gathered batches out of memory (no gather, no cast)."""
  sizes = [int(b[1].shape[0]) for b in batches]
  flat = tf.nest.map_structure(lambda *t: tf.concat(t, 0), *batches)
  offsets = tf.constant([sum(sizes[:i]) for i in range(len(sizes) + 1)], tf.int64)

  def batch(i):
    lo, hi = offsets[i], offsets[i + 1]
    return tf.nest.map_structure(lambda t: t[lo:hi], flat)

  return tf.data.Dataset.range(len(sizes)).map(batch).prefetch(tf.data.AUTOTUNE)


def main():
  args = parse_args()
  machine = common.machine_description()
  print(machine)
  spec, train, _ = common.load_mnist(args.examples)
  steps = data.steps_per_epoch(train.size, args.batch_size)
  keras.utils.set_random_seed(args.seed)
  init = models.build_model("lenet5", spec.image_shape, spec.num_classes)

  def network():
    n = models.build_model("lenet5", spec.image_shape, spec.num_classes)
    n.set_weights(init.get_weights())
    return n

  ds = data.train_dataset(train, args.batch_size, args.seed, 0, 1)
  batches = [(f, y) for f, y in ds]  # The epoch's batches, materialised once.
  bare_batches = [(f["image"], y) for f, y in batches]

  def sr_model():
    model = training.SelfRegulatedModel(network(), train.size, backward="masked")
    stages.compile_model(model, 1e-3, common.NoJit)
    return model

  e2e = sr_model()
  e2e_schedule = callbacks.RegulationSchedule(float("inf"), train.size)
  mem = sr_model()
  mem_schedule = callbacks.RegulationSchedule(float("inf"), train.size)
  mem_ds = in_memory_dataset(batches)

  plain = network()
  plain.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"], jit_compile=False)
  plain_ds = in_memory_dataset(bare_batches)

  bare_net = network()
  bare_opt = keras.optimizers.Adam(1e-3)
  bare_opt.build(bare_net.trainable_variables)

  @tf.function(input_signature=[tf.TensorSpec([None, *spec.image_shape], tf.float32),
                                tf.TensorSpec([None], tf.int32)])
  def bare_step(x, y):
    with tf.GradientTape() as tape:
      logits = bare_net(x, training=True)
      loss = tf.reduce_mean(losses.cross_entropy(y, logits))
    grads = tape.gradient(loss, bare_net.trainable_variables)
    bare_opt.apply(grads, bare_net.trainable_variables)
    return loss

  def bare_epoch():
    loss = None
    for x, y in bare_batches:
      loss = bare_step(x, y)
    return float(loss)  # Waits for the last step.

  def run_bare(r):
    del r
    wall, cpu, _ = common.timed(bare_epoch)
    return wall, {"cpu_s": cpu}

  def run_e2e(r):
    seconds, logs = common.fit_one_epoch(e2e, ds, r, [e2e_schedule], steps)
    return seconds, {"cpu_s": logs["cpu_s"], "participation": float(logs["participation_fraction"])}

  def run_mem(r):
    seconds, logs = common.fit_one_epoch(mem, mem_ds, r, [mem_schedule], steps)
    return seconds, {"cpu_s": logs["cpu_s"], "participation": float(logs["participation_fraction"])}

  def run_plain(r):
    seconds, logs = common.fit_one_epoch(plain, plain_ds, r, (), steps)
    return seconds, {"cpu_s": logs["cpu_s"]}

  res = common.interleave({"bare tf.function loop": run_bare,
                           "plain keras `fit` on pre-gathered batches": run_plain,
                           "SR fit on pre-gathered batches": run_mem,
                           "end-to-end (fit + data.train_dataset)": run_e2e},
                          args.rounds, args.warmup, print)
  bare = res["bare tf.function loop"]
  rows = []
  for name, samples in res.items():
    secs = common.median(common.seconds_of(samples))
    time_ratio = common.ratio_summary(samples, bare)
    efficiency = common.ratio_summary(bare, samples)
    cpu_efficiency = common.cpu_ratio_summary(bare, samples)[0]
    goal = ""
    if name.startswith("end-to-end"):
      goal = f"efficiency ≥ 0.9: **{common.verdict(efficiency[0], 0.9, at_most=False)}**"
    rows.append([name, f"{secs:.3f}", common.fmt_ratio(time_ratio), common.fmt_ratio(efficiency),
                 f"{cpu_efficiency:.3f}", goal])
  table = common.markdown_table(
      ["variant", "median s/epoch", "time / bare", "efficiency = bare / time",
       "CPU-time efficiency", "goal (wall)"], rows)
  notes = [
      f"MNIST train, {train.size} examples, batch {args.batch_size}, LeNet-5, Adam(1e-3), "
      "same initial weights; alpha=inf (everyone takes part), `backward=masked`.",
      "Bare loop: Python loop over the epoch's batches (materialised once from "
      "`data.train_dataset` as a list of float32 image / int32 label tensors) calling one "
      "`tf.function` (forward, mean sparse CE, backward, `Adam.apply`), timed with "
      "`time.perf_counter` until the last loss is read.",
      f"Each variant: {args.warmup} warm-up epoch(s) then {args.rounds} measured epochs, "
      "interleaved round by round (order rotated); seconds are medians, ratios the median of "
      "the per-round ratios (min–max in brackets). CPU-time efficiency: the same on process "
      "CPU seconds (all threads), which other processes on the shared cores disturb far less.",
      "Reading the rows top to bottom splits the end-to-end cost: Keras `fit` itself (plain "
      "`fit` vs bare loop), the SR train step (gate, participation counts, metrics, conditional "
      "apply; SR vs plain `fit` on the same in-memory batches) and the input pipeline "
      "(end-to-end vs SR on in-memory batches).",
      "The goal '≥ 0.9' is read as efficiency (bare time / end-to-end time), since the "
      "time ratio end-to-end / bare cannot be below 1.",
  ]
  common.publish("pipeline_overhead", "5. End-to-end epoch vs a bare in-memory tf.function loop", machine,
                 notes, table, write=not args.no_write)


if __name__ == "__main__":
  main()

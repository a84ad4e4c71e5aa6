"""Diagnostic for tables 1, 2 and 5: what one training step is made of.

Times, per batch of 512 MNIST images on LeNet-5 (or `--model`), the pieces a
`masked` and a `compact` step are built from, each as its own `tf.function`
called on the same in-memory batch:

  * plain step: forward (training), mean sparse CE, backward, `Adam.apply`;
  * inference forward of the whole batch (what `compact` runs to decide the gate);
  * plain step on only k rows (k = p * batch), i.e. the compact backward;
  * the SR `masked` and `compact` train steps themselves
    (`SelfRegulatedModel.train_step` with eta set so that a fraction p of the
    batch takes part), including gate, counts and metrics;
  * the input pipelines: one epoch of `data.train_dataset` (gather + preprocess +
    shuffle) and of the plain in-memory slicing, iterated without training.

Each piece is called `--calls` times per round, pieces interleaved, `--rounds`
rounds after a warm-up; the table gives the median milliseconds per call and
the ratio to the plain step. Weights are frozen (Adam learning rate 0), so
every call sees the same model and the same gates.

  python bench/timing/step_breakdown.py
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position

import keras  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

from tf_srkd.data import arrays as data  # pylint: disable=wrong-import-position
from tf_srkd.core import losses  # pylint: disable=wrong-import-position
from tf_srkd.models import zoo as models  # pylint: disable=wrong-import-position
from tf_srkd.run import stages  # pylint: disable=wrong-import-position
from tf_srkd.core import training  # pylint: disable=wrong-import-position


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="lenet5")
  p.add_argument("--batch_size", type=int, default=512)
  p.add_argument("--calls", type=int, default=40, help="calls per piece per round")
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--participation", default="0.05,0.10")
  p.add_argument("--pipeline_examples", type=int, default=20480,
                 help="examples per input-pipeline epoch timed (reported per batch)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no_write", action="store_true")
  return p.parse_args()


def main():
  args = parse_args()
  machine = common.machine_description()
  print(machine)
  spec, train, _ = common.load_mnist(0)
  b = args.batch_size
  keras.utils.set_random_seed(args.seed)
  net = models.build_model(args.model, spec.image_shape, spec.num_classes)
  # A few plain steps so that margins are spread like a trained model's.
  net.compile(optimizer=keras.optimizers.Adam(1e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
  net.fit(common.plain_dataset(data.SplitArrays(train.images[:20480], train.labels[:20480]), b),
          epochs=2, verbose=0)
  x = data.preprocess(tf.constant(train.images[:b]))
  y = tf.constant(train.labels[:b])
  ids = tf.range(b, dtype=tf.int32)
  opt = keras.optimizers.Adam(0.0)
  opt.build(net.trainable_variables)

  @tf.function(input_signature=[tf.TensorSpec([None, *spec.image_shape], tf.float32),
                                tf.TensorSpec([None], tf.int32)])
  def plain_step(images, labels):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(losses.cross_entropy(labels, net(images, training=True)))
    grads = tape.gradient(loss, net.trainable_variables)
    opt.apply(grads, net.trainable_variables)
    return loss

  @tf.function(input_signature=[tf.TensorSpec([None, *spec.image_shape], tf.float32)])
  def inference(images):
    return net(images, training=False)

  logits = inference(x).numpy()
  probs = tf.nn.softmax(logits).numpy()
  top2 = np.sort(probs, axis=1)[:, -2:]
  margins = np.where(logits.argmax(1) == train.labels[:b], top2[:, 1] - top2[:, 0], -1.0)
  order = np.sort(margins)

  pieces = {"plain step (512 rows)": lambda: plain_step(x, y),
            "inference forward (512 rows)": lambda: inference(x)}
  sr_models = {}
  for p in [float(v) for v in args.participation.split(",")]:
    k = int(round(p * b))
    xk, yk = x[:k], y[:k]
    pieces[f"plain step ({k} rows)"] = lambda xk=xk, yk=yk: plain_step(xk, yk)
    eta = float((order[k - 1] + order[k]) / 2)
    for backward in ("masked", "compact"):
      model = training.SelfRegulatedModel(net, b, backward=backward)
      stages.compile_model(model, 0.0, common.NoJit)
      model.eta.assign(eta)
      # `backward` is masked or compact, so the model's own train_step runs it.
      step = tf.function(lambda feats, labels, model=model: model.train_step((feats, labels)))
      sr_models[(p, backward)] = model
      pieces[f"SR {backward} step, p={p:.0%}"] = (
          lambda step=step: step({"image": x, "id": ids}, y)["participation_fraction"])

  sub = data.SplitArrays(train.images[:args.pipeline_examples],
                         train.labels[:args.pipeline_examples])
  n_batches = data.steps_per_epoch(sub.size, b)
  sr_ds = data.train_dataset(sub, b, args.seed, 0, 1)
  plain_ds = common.plain_dataset(sub, b)

  def drain(ds):
    for _ in ds:
      pass

  def run_piece(fn):
    def run(r):
      del r
      if fn in (drain_sr, drain_plain):
        wall, cpu, _ = common.timed(fn)
        return wall / n_batches, {"cpu_s": cpu / n_batches}
      out = None

      def many():
        nonlocal out
        for _ in range(args.calls):
          out = fn()
        return float(tf.reduce_sum(out))

      wall, cpu, _ = common.timed(many)
      return wall / args.calls, {"cpu_s": cpu / args.calls}
    return run

  drain_sr = lambda: drain(sr_ds)  # noqa: E731
  drain_plain = lambda: drain(plain_ds)  # noqa: E731
  pieces["input: data.train_dataset, per batch"] = drain_sr
  pieces["input: in-memory slicing, per batch"] = drain_plain
  res = common.interleave({name: run_piece(fn) for name, fn in pieces.items()},
                          args.rounds, args.warmup, print)
  base = res["plain step (512 rows)"]
  rows = []
  for name, samples in res.items():
    rows.append([name, f"{1000 * common.median(common.seconds_of(samples)):.2f}",
                 f"{1000 * common.median([i['cpu_s'] for _, i in samples]):.2f}",
                 common.fmt_ratio(common.ratio_summary(samples, base)),
                 f"{common.cpu_ratio_summary(samples, base)[0]:.3f}"])
  table = common.markdown_table(["piece", "median wall ms/call", "median CPU ms/call",
                                 "/ plain step (wall)", "/ plain step (CPU)"], rows)
  notes = [
      f"{args.model}, batch {b} of MNIST, weights frozen (Adam lr 0) after 2 plain epochs on "
      "20480 examples; every piece is its own `tf.function` on the same in-memory batch, "
      f"{args.calls} calls per round, {args.warmup} warm-up + {args.rounds} measured rounds, "
      "interleaved; input pipelines are timed over one epoch of "
      f"{args.pipeline_examples} examples and divided by its {n_batches} batches.",
      "The SR steps are `SelfRegulatedModel.train_step` (gate, participation counts, metrics, "
      "conditional `Adam.apply`) with eta set so that p of the batch takes part.",
  ]
  common.publish("step_breakdown", "Diagnostic: what a training step is made of", machine,
                 notes, table, write=not args.no_write)


if __name__ == "__main__":
  main()

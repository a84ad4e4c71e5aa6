"""Tables 1 and 2 of the speed benchmarks: a self-regulated teacher epoch against a plain
`keras.Model.fit` epoch of the same LeNet-5 on the same MNIST data.

Table 1: SR teacher epoch (`backward="masked"`, the real input pipeline
`data.train_dataset` and the real `RegulationSchedule`, alpha=0.02) / plain fit
epoch (sparse CE + Adam + accuracy metric, preprocessed in-memory tensors sliced
into batches). Both train from the same initial weights.

Table 2: `compact` and `masked` epochs / plain epoch at controlled participation
p. How p is controlled: a LeNet-5 is pre-trained for a few plain epochs and then
frozen by giving Adam a learning rate of 0 (every op of the step still runs, the
weights just do not move, so the gates cannot drift). From the frozen model's
inference-mode logits on the training set, eta is set to the midpoint between
two consecutive margins of the correctly classified samples so that
(misclassified + correct with margin < eta) = exactly round(p * N) samples take
part; Algorithm 1's gate then selects exactly those. (If more than p*N samples
were misclassified, the labels of the surplus would be set to the predicted
class; the script says so when it happens.) The measured participation is taken
from the epoch logs and reported.

  python bench/timing/teacher_epoch.py [--examples=0] [--examples2=20000] [--rounds=15] [--rounds2=7]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=wrong-import-position

import keras  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from tf_srkd.core import callbacks  # pylint: disable=wrong-import-position
from tf_srkd.data import arrays as data  # pylint: disable=wrong-import-position
from tf_srkd.models import zoo as models  # pylint: disable=wrong-import-position
from tf_srkd.run import stages  # pylint: disable=wrong-import-position
from tf_srkd.core import training  # pylint: disable=wrong-import-position


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--examples", type=int, default=0, help="MNIST training examples (0: all 60000)")
  p.add_argument("--batch_size", type=int, default=512)
  p.add_argument("--examples2", type=int, default=20000,
                 help="MNIST training examples for table 2 (0: all 60000)")
  p.add_argument("--rounds", type=int, default=15, help="measured epochs per variant, table 1")
  p.add_argument("--rounds2", type=int, default=7, help="measured epochs per variant, table 2")
  p.add_argument("--warmup", type=int, default=1, help="warm-up epochs per variant (not kept)")
  p.add_argument("--pretrain_epochs", type=int, default=5,
                 help="plain epochs before freezing the model for table 2")
  p.add_argument("--participation", default="0.05,0.10,0.25,0.50")
  p.add_argument("--tables", default="1,2")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no_write", action="store_true", help="do not touch bench/RESULTS.md")
  return p.parse_args()


def plain_model(network, learning_rate):
  network.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=False)
  return network


def clone(network, spec):
  twin = models.build_model("lenet5", spec.image_shape, spec.num_classes)
  twin.set_weights(network.get_weights())
  return twin


def sr_model(network, n, backward, learning_rate):
  model = training.SelfRegulatedModel(network, n, regulate=True, backward=backward)
  stages.compile_model(model, learning_rate, common.NoJit)
  return model


def controlled_labels_and_eta(logits, labels, p, rng):
  """(labels', eta) such that exactly round(p * N) samples take part (eta >= 0)."""
  n = labels.shape[0]
  target = int(round(p * n))
  shifted = logits - logits.max(axis=1, keepdims=True)
  probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
  top2 = np.sort(probs, axis=1)[:, -2:]
  margins = top2[:, 1] - top2[:, 0]
  predicted = logits.argmax(axis=1).astype(np.int32)
  labels = labels.copy()
  wrong = np.flatnonzero(predicted != labels)
  note = ""
  if wrong.size > target:
    fix = rng.choice(wrong, wrong.size - target, replace=False)
    labels[fix] = predicted[fix]
    note = f"{fix.size} misclassified labels set to the prediction"
    wrong = np.flatnonzero(predicted != labels)
  need = target - wrong.size
  correct = np.sort(margins[predicted == labels])
  if need <= 0:
    eta = 0.0
  else:
    eta = float((correct[need - 1] + correct[need]) / 2)
  return labels, eta, wrong.size / n, note


def table1(args, spec, train, plain_ds, log):
  keras.utils.set_random_seed(args.seed)
  init = models.build_model("lenet5", spec.image_shape, spec.num_classes)
  plain = plain_model(clone(init, spec), 1e-3)
  sr = sr_model(clone(init, spec), train.size, "masked", 1e-3)
  sr_ds = data.train_dataset(train, args.batch_size, args.seed, 0, 1)
  steps = data.steps_per_epoch(train.size, args.batch_size)
  schedule = callbacks.RegulationSchedule(0.02, train.size)

  def run_plain(r):
    seconds, logs = common.fit_one_epoch(plain, plain_ds, r)
    return seconds, {"cpu_s": logs["cpu_s"], "acc": float(logs["accuracy"])}

  def run_sr(r):
    seconds, logs = common.fit_one_epoch(sr, sr_ds, r, [schedule], steps)
    return seconds, {"cpu_s": logs["cpu_s"], "acc": float(logs["accuracy"]),
                     "participation": float(logs["participation_fraction"])}

  log("table 1: SR teacher (masked) vs plain fit")
  res = common.interleave({"plain fit": run_plain, "SR teacher (masked)": run_sr},
                          args.rounds, args.warmup, log)
  sr, plain_res = res["SR teacher (masked)"], res["plain fit"]
  ratio = common.ratio_summary(sr, plain_res)
  cpu_ratio = common.cpu_ratio_summary(sr, plain_res)
  parts = [i["participation"] for _, i in sr]

  def cpu(samples):
    return common.median([i["cpu_s"] for _, i in samples])

  rows = [
      ["plain `fit` (sparse CE + Adam + accuracy)",
       f"{common.median(common.seconds_of(plain_res)):.3f}", f"{cpu(plain_res):.2f}", "1", "1", ""],
      ["SR teacher, `backward=masked`, alpha=0.02, `data.train_dataset`",
       f"{common.median(common.seconds_of(sr)):.3f}", f"{cpu(sr):.2f}", common.fmt_ratio(ratio),
       common.fmt_ratio(cpu_ratio), f"≤ 1.05: **{common.verdict(ratio[0], 1.05)}**"],
  ]
  text = common.markdown_table(["variant", "median wall s/epoch", "median CPU s/epoch",
                                "wall ratio to plain", "CPU-time ratio to plain", "goal (wall)"],
                               rows)
  text += (f"\n\nParticipation of the SR epochs measured: {min(parts):.1%}–{max(parts):.1%} "
           "(the masked step's cost does not depend on it).")
  return text, ratio


def table2(args, spec, train, plain_ds, log):
  keras.utils.set_random_seed(args.seed + 1)
  base = plain_model(models.build_model("lenet5", spec.image_shape, spec.num_classes), 1e-3)
  log(f"table 2: pre-training LeNet-5 for {args.pretrain_epochs} plain epochs")
  base.fit(plain_ds, epochs=args.pretrain_epochs, verbose=0)
  logits = stages.predict_logits(base, train.images, 2048)
  rng = np.random.default_rng(args.seed)
  targets = [float(x) for x in args.participation.split(",")]
  steps = data.steps_per_epoch(train.size, args.batch_size)
  frozen_plain = plain_model(clone(base, spec), 0.0)

  def run_plain(r):
    seconds, logs = common.fit_one_epoch(frozen_plain, plain_ds, r)
    return seconds, {"cpu_s": logs["cpu_s"]}

  # For every p, the plain baseline runs right before its masked and compact
  # variants, so each ratio pairs epochs measured seconds apart.
  variants = {}
  setup = {}
  for p in targets:
    labels, eta, wrong, note = controlled_labels_and_eta(logits, train.labels, p, rng)
    split = data.SplitArrays(images=train.images, labels=labels)
    ds = data.train_dataset(split, args.batch_size, args.seed, 0, 1)
    setup[p] = (eta, wrong, note)
    log(f"  p={p:.0%}: eta={eta:.6f}, misclassified {wrong:.2%} {note}")
    variants[f"plain p={p:.0%}"] = run_plain
    for backward in ("masked", "compact"):
      model = sr_model(clone(base, spec), train.size, backward, 0.0)
      model.eta.assign(eta)

      def run(r, model=model, ds=ds):
        seconds, logs = common.fit_one_epoch(model, ds, r, (), steps)
        return seconds, {"cpu_s": logs["cpu_s"],
                         "participation": float(logs["participation_fraction"])}

      variants[f"{backward} p={p:.0%}"] = run
  res = common.interleave(variants, args.rounds2, args.warmup, log)
  rows = []
  verdicts = {}
  for p in targets:
    plain = res[f"plain p={p:.0%}"]
    row = [f"{p:.0%}"]
    measured = []
    cells = []
    for backward in ("masked", "compact"):
      samples = res[f"{backward} p={p:.0%}"]
      measured.append(common.median([i["participation"] for _, i in samples]))
      ratio = common.ratio_summary(samples, plain)
      cpu_ratio = common.cpu_ratio_summary(samples, plain)
      cells += [f"{common.median(common.seconds_of(samples)):.3f}", common.fmt_ratio(ratio),
                f"{cpu_ratio[0]:.3f}"]
      if backward == "compact":
        verdicts[p] = (ratio[0], cpu_ratio[0])
    goal = "—"
    if p <= 0.10 + 1e-9:
      goal = (f"≤ 0.45: **{common.verdict(verdicts[p][0], 0.45)}** "
              f"(CPU: {common.verdict(verdicts[p][1], 0.45)})")
    row += [f"{measured[0]:.2%} / {measured[1]:.2%}", f"{setup[p][0]:.4f}",
            f"{common.median(common.seconds_of(plain)):.3f}"]
    row += cells + [goal]
    rows.append(row)
  text = common.markdown_table(
      ["target p", "measured participation (masked / compact)", "eta", "plain s/epoch",
       "masked s/epoch", "masked / plain", "(CPU)", "compact s/epoch", "compact / plain",
       "(CPU)", "goal (compact)"], rows)
  notes = "; ".join(f"{p:.0%}: {setup[p][2]}" for p in targets if setup[p][2])
  text += (f"\n\nControlled participation: LeNet-5 pre-trained {args.pretrain_epochs} plain "
           "epochs, then frozen with Adam learning rate 0 (all ops still run, gates cannot "
           "drift); eta chosen from the frozen model's training-set margins so that exactly "
           "round(p·N) samples take part (the misclassified ones, "
           f"{setup[targets[0]][1]:.2%} of the set, plus the correct ones with the "
           "smallest margins)" + (f"; relabelled: {notes}" if notes else "") + ". The plain "
           "baseline is the same frozen model under `fit` (lr 0), run right before each p's "
           "masked and compact epochs in every round (ratios pair those).")
  return text, verdicts


def main():
  args = parse_args()
  machine = common.machine_description()
  print(machine)
  tables = args.tables.split(",")

  def notes(train, rounds):
    return [f"MNIST train, {train.size} examples, batch {args.batch_size}, LeNet-5 (61,706 "
            "parameters).",
            f"Each variant: {args.warmup} warm-up epoch(s) then {rounds} measured epochs, "
            "variants interleaved round by round (order rotated each round); seconds are "
            "medians, ratios the median of the per-round ratios (min–max in brackets). Wall "
            "time is what the goals are about; the ratio of process CPU seconds (all threads) "
            "is shown too, as it is far less disturbed by the other processes sharing the "
            "cores.",
            "An epoch is timed by Keras callbacks from the first `on_epoch_begin` to the last "
            "`on_epoch_end` (so it includes `RegulationSchedule`), excluding `fit`'s one-off "
            "setup."]

  if "1" in tables:
    spec, train, _ = common.load_mnist(args.examples)
    plain_ds = common.plain_dataset(train, args.batch_size)
    text1, _ = table1(args, spec, train, plain_ds, print)
    common.publish("teacher_epoch_masked", "1. SR teacher epoch (masked) / plain fit epoch", machine,
                   notes(train, args.rounds), text1, write=not args.no_write)
  if "2" in tables:
    spec, train, _ = common.load_mnist(args.examples2)
    plain_ds = common.plain_dataset(train, args.batch_size)
    text2, _ = table2(args, spec, train, plain_ds, print)
    extra = [] if not args.examples2 else [
        f"Subset: the first {train.size} MNIST training examples (12 variants × "
        f"{args.warmup + args.rounds2} epochs on all 60000 would take ~10 min on this busy "
        "machine; the per-step costs compared here do not depend on N)."]
    common.publish("teacher_epoch_compact",
                   "2. compact and masked epochs / plain epoch at controlled participation",
                   machine, extra + notes(train, args.rounds2), text2, write=not args.no_write)


if __name__ == "__main__":
  main()

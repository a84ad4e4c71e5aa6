"""Table 4 of the speed benchmarks: a distillation epoch in each mode against Keras 3's
built-in `keras.distillation.Distiller` and against the student trained alone.

Setup, all on the same MNIST data in one process:
  * teacher: LeNet-5 trained as a self-regulated teacher (alpha=0.02, masked)
    for `--teacher_epochs` epochs; its participation counts give the
    significance (Algorithm 2) and `stages.predict_logits` the cached logits,
    exactly as `pipeline.distill_students` does. Accuracy is not the point.
  * student alone: LeNet-5-half, `compile(Adam(0.01), sparse CE, accuracy)` and
    `fit` on preprocessed in-memory tensors (`common.plain_dataset`).
  * `keras.distillation.Distiller(teacher, student, LogitsDistillation(T=20),
    student_loss_weight=0.3/1.3)` compiled with the same optimizer and loss,
    `fit` on the same in-memory tensors; it runs the teacher in every step.
  * ours: `distillation.Distiller` in the four modes, fed by the real input
    pipeline (`epoch_batches.train_dataset` with `teacher_logits`, plus
    `significance` for significance/hybrid: one gather per epoch, as
    `stages.fit_stage` does); "conventional (per-batch gather)"
    is conventional on the per-batch pipeline (`data.train_dataset`: every
    batch gathered by id), for comparison. conventional and significance use alpha=inf and
    `backward=masked` (as the pipeline does); regulated and hybrid use
    distill_alpha=0.02 and `backward=auto`.
  * regulated and hybrid are *trained first* from scratch with the real
    `RegulationSchedule` (epochs 0, 1, ...) until an epoch's participation is
    <= `--target_participation`; their measured epochs are the run's following
    epochs (same schedule object, so `auto` keeps choosing from the previous
    epoch's participation). The participation of the measured epochs is reported.

  python bench/timing/distill_epoch.py [--examples=0] [--rounds=8] [--warmup=1]
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
from tf_srkd.core import distillation  # pylint: disable=wrong-import-position
from tf_srkd.data import epoch_batches  # pylint: disable=wrong-import-position
from tf_srkd.models import zoo as models  # pylint: disable=wrong-import-position
from tf_srkd.core import modes as modes_lib  # pylint: disable=wrong-import-position
from tf_srkd.core import regulation  # pylint: disable=wrong-import-position
from tf_srkd.run import stages  # pylint: disable=wrong-import-position
from tf_srkd.core import training  # pylint: disable=wrong-import-position

TEMPERATURE = 20.0
KD_LAMBDA = 0.3
DISTILL_LR = 0.01
DISTILL_ALPHA = 0.02


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--examples", type=int, default=0, help="MNIST training examples (0: all 60000)")
  p.add_argument("--batch_size", type=int, default=512)
  p.add_argument("--rounds", type=int, default=8, help="measured epochs per variant")
  p.add_argument("--warmup", type=int, default=1, help="warm-up epochs per variant (not kept)")
  p.add_argument("--teacher_epochs", type=int, default=2)
  p.add_argument("--target_participation", type=float, default=0.10)
  p.add_argument("--max_pretrain_epochs", type=int, default=15)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no_write", action="store_true", help="do not touch bench/RESULTS.md")
  return p.parse_args()


def train_teacher(args, spec, train, log):
  keras.utils.set_random_seed(args.seed)
  network = models.build_model("lenet5", spec.image_shape, spec.num_classes)
  model = training.SelfRegulatedModel(network, train.size, backward="masked", name="teacher")
  stages.compile_model(model, 1e-3, common.NoJit)
  ds = data.train_dataset(train, args.batch_size, args.seed, 0, args.teacher_epochs)
  history = model.fit(ds, epochs=args.teacher_epochs,
                      steps_per_epoch=data.steps_per_epoch(train.size, args.batch_size),
                      callbacks=[callbacks.RegulationSchedule(0.02, train.size)], verbose=0)
  counts = model.participation_counts()
  significance = regulation.significance(counts, train.labels, spec.num_classes)
  logits = stages.predict_logits(network, train.images, 2048)
  accuracy = float(np.mean(logits.argmax(-1) == train.labels))
  log(f"teacher: {args.teacher_epochs} epochs, train accuracy {accuracy:.4f}, "
      f"participation {history.history['participation_fraction']}")
  return network, logits, significance.astype(np.float32), accuracy


def main():
  args = parse_args()
  machine = common.machine_description()
  print(machine)
  log = print
  spec, train, _ = common.load_mnist(args.examples)
  steps = data.steps_per_epoch(train.size, args.batch_size)
  plain_ds = common.plain_dataset(train, args.batch_size)
  teacher, teacher_logits, significance, teacher_acc = train_teacher(args, spec, train, log)

  keras.utils.set_random_seed(args.seed + 1)
  init = models.build_model("lenet5_half", spec.image_shape, spec.num_classes)

  def student():
    s = models.build_model("lenet5_half", spec.image_shape, spec.num_classes)
    s.set_weights(init.get_weights())
    return s

  variants = {}

  # Student alone.
  alone = student()
  alone.compile(optimizer=keras.optimizers.Adam(DISTILL_LR),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"], jit_compile=False)

  def plain_runner(model):
    def run(r):
      seconds, logs = common.fit_one_epoch(model, plain_ds, r)
      return seconds, {"cpu_s": logs["cpu_s"]}
    return run

  variants["student alone"] = plain_runner(alone)
  # The same with Keras' loop calling the step once per epoch, as ours do by default.
  alone_epoch = student()
  alone_epoch.compile(optimizer=keras.optimizers.Adam(DISTILL_LR),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], jit_compile=False, steps_per_execution=steps)
  variants["student alone (one call per epoch)"] = plain_runner(alone_epoch)

  # Keras' built-in distiller (teacher runs in every step).
  keras_teacher = models.build_model("lenet5", spec.image_shape, spec.num_classes)
  keras_teacher.set_weights(teacher.get_weights())
  kd = keras.distillation.Distiller(
      teacher=keras_teacher, student=student(),
      distillation_losses=keras.distillation.LogitsDistillation(temperature=TEMPERATURE),
      student_loss_weight=KD_LAMBDA / (1.0 + KD_LAMBDA))
  kd.compile(optimizer=keras.optimizers.Adam(DISTILL_LR),
             loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
             metrics=["accuracy"], jit_compile=False)
  variants["keras.distillation.Distiller"] = plain_runner(kd)

  # Ours, four modes.
  start_epoch = {}
  pretrain = {}
  for label in ("conventional", "conventional (one step per call)",
                "conventional (per-batch gather)", "significance", "regulated", "hybrid"):
    name = label.split(" ")[0]
    mode = modes_lib.get_mode(name)
    extras = {"teacher_logits": teacher_logits}
    if mode.weight_by_significance:
      extras["significance"] = significance
    make_dataset = data.train_dataset if "per-batch" in label else epoch_batches.train_dataset
    ds = make_dataset(train, args.batch_size, args.seed, 0, 1, extras)
    backward = "auto" if mode.regulate else "masked"
    alpha = DISTILL_ALPHA if mode.regulate else float("inf")
    model = distillation.Distiller(student(), train.size, mode, temperature=TEMPERATURE,
                                   kd_lambda=KD_LAMBDA, backward=backward,
                                   name=f"student_{name}")
    per_call = 1 if "per call" in label else 0  # 0: tf_srkd's default, one call per epoch.
    stages.compile_model(model, DISTILL_LR, common.CompileSettings(
        steps_per_execution=per_call, batch_size=args.batch_size))
    schedule = callbacks.RegulationSchedule(alpha, train.size)
    start_epoch[name] = 0
    if mode.regulate:
      history = []
      for epoch in range(args.max_pretrain_epochs):
        seconds, logs = common.fit_one_epoch(model, ds, epoch, [schedule], steps)
        history.append((epoch, logs["participation_fraction"], model.active_backward, seconds))
        log(f"  pre-training {name}: epoch {epoch} participation "
            f"{logs['participation_fraction']:.4f} ({model.active_backward}, {seconds:.2f} s)")
        if logs["participation_fraction"] <= args.target_participation:
          break
      start_epoch[name] = len(history)
      pretrain[name] = history

    def run(r, model=model, ds=ds, schedule=schedule, name=name):
      seconds, logs = common.fit_one_epoch(model, ds, start_epoch[name] + r, [schedule], steps)
      info = {"cpu_s": logs["cpu_s"], "backward": model.active_backward}
      if "participation_fraction" in logs:
        info["participation"] = float(logs["participation_fraction"])
      return seconds, info

    variants[f"ours: {label}"] = run

  log("interleaved measurement")
  res = common.interleave(variants, args.rounds, args.warmup, log)
  alone_s, kd_s = res["student alone"], res["keras.distillation.Distiller"]
  rows = []
  goals = {}
  for name, samples in res.items():
    secs = common.median(common.seconds_of(samples))
    to_alone = common.ratio_summary(samples, alone_s)
    to_kd = common.ratio_summary(samples, kd_s)
    cpu_alone = common.cpu_ratio_summary(samples, alone_s)[0]
    cpu_kd = common.cpu_ratio_summary(samples, kd_s)[0]
    part = "—"
    backward = "—"
    goal = ""
    if name.startswith("ours: "):
      mode = name[len("ours: "):].split(" ")[0]
      infos = [i for _, i in samples]
      backwards = sorted({i["backward"] for i in infos})
      backward = "/".join(backwards)
      if modes_lib.get_mode(mode).regulate:
        ps = [i["participation"] for i in infos]
        part = f"{common.median(ps):.2%} ({min(ps):.2%}–{max(ps):.2%})"
        first = start_epoch[mode] + args.warmup
        backward += f", epochs {first}–{first + args.rounds - 1}"
        ok = to_kd[0] <= 0.5 and max(ps) <= 0.10
        goal = f"≤ 0.5× Keras distiller at ≤ 10 %: **{'met' if ok else 'missed'}**"
        goals[mode] = (to_kd[0], max(ps))
      else:
        part = "100% (no gate)"
        goal = f"≤ 1.05× student alone: **{common.verdict(to_alone[0], 1.05)}**"
        goals[mode] = (to_alone[0], 1.0)
    rows.append([name, backward, part, f"{secs:.3f}", common.fmt_ratio(to_alone),
                 f"{cpu_alone:.3f}", common.fmt_ratio(to_kd), f"{cpu_kd:.3f}", goal])
  table = common.markdown_table(
      ["variant", "backward (measured epochs)", "participation (median, min–max)",
       "median s/epoch", "/ student alone", "(CPU)", "/ Keras Distiller", "(CPU)",
       "goal (wall)"], rows)
  notes = [
      f"MNIST train, {train.size} examples, batch {args.batch_size}; teacher LeNet-5 "
      f"({teacher.count_params():,} params) trained {args.teacher_epochs} SR epochs "
      f"(train accuracy {teacher_acc:.2%}); student LeNet-5-half "
      f"({init.count_params():,} params); T={TEMPERATURE:g}, lambda={KD_LAMBDA}, Adam lr "
      f"{DISTILL_LR}, all students from the same initial weights.",
      "Student alone and the Keras distiller read preprocessed in-memory tensors sliced into "
      "batches (no per-epoch work); ours read the real pipeline (`epoch_batches.train_dataset`: "
      "per-epoch shuffle, one gather per epoch of uint8 images + cached teacher logits "
      "(+ significance) by the epoch's permutation, batches sliced from it, preprocessing); "
      "`(per-batch gather)`: the previous pipeline, `data.train_dataset`, every batch gathered "
      "by sample id.",
      "Ours run as `tf_srkd` does by default, Keras' loop calling the compiled step once per "
      "epoch (`--steps_per_execution=0`); `(one step per call)` is conventional at Keras' "
      "default of one call per batch, which the first `student alone` row also uses; "
      "`student alone (one call per epoch)` is the student compiled with "
      "`steps_per_execution` = the epoch's steps.",
      "Keras distiller: `LogitsDistillation(temperature=20)` (KL), `student_loss_weight="
      f"{KD_LAMBDA / (1 + KD_LAMBDA):.4f}` (= lambda/(1+lambda), the same mix up to a "
      "constant factor), teacher run in inference mode in every step.",
      "regulated/hybrid were trained from scratch with the real schedule before measuring: "
      + "; ".join(f"{m}: " + ", ".join(f"epoch {e} {p:.1%} ({b}, {s:.1f} s)"
                                         for e, p, b, s in h) for m, h in pretrain.items())
      + ". Their measured epochs continue that run (eta = 1 − exp(−0.02·epoch)).",
      f"Each variant: {args.warmup} warm-up epoch(s) then {args.rounds} measured epochs, "
      "interleaved round by round (order rotated); seconds are medians, ratios the median of "
      "the per-round ratios (min–max in brackets). Epochs timed from the first "
      "`on_epoch_begin` to the last `on_epoch_end`. Goals are about wall time; the (CPU) "
      "columns give the median ratio of process CPU seconds, which other processes on the "
      "shared cores disturb far less.",
  ]
  common.publish("distill_epoch",
                 "4. Distillation epoch / Keras Distiller epoch / student-alone epoch",
                 machine, notes, table, write=not args.no_write)


if __name__ == "__main__":
  main()

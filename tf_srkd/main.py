"""Command-line entry point: `python -m tf_srkd.main --flagfile=flags/quick.flags`.

Defines the flags, turns them into one frozen `Config`, creates the distribution
strategy once, and calls `pipeline.run`. Nothing else lives here.
"""

import math
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

from tf_srkd import config as config_lib
from tf_srkd import datasets
from tf_srkd import models
from tf_srkd import modes

_D = config_lib.Config()

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", _D.dataset, sorted(datasets.DATASETS), "TFDS dataset.")
flags.DEFINE_string("teacher_model", _D.teacher_model, f"One of {sorted(models.MODELS)}.")
flags.DEFINE_string("student_model", _D.student_model, f"One of {sorted(models.MODELS)}.")
flags.DEFINE_integer("epochs", _D.epochs, "Teacher epochs (and distillation epochs by default).")
flags.DEFINE_integer("distill_epochs", None, "Distillation epochs (default: --epochs).")
flags.DEFINE_integer("batch_size", _D.batch_size, "Global batch size.")
flags.DEFINE_float("teacher_lr", _D.teacher_lr, "Adam learning rate of the teacher.")
flags.DEFINE_float("distill_lr", _D.distill_lr, "Adam learning rate of the students.")
flags.DEFINE_string("alpha", str(_D.alpha), "Teacher self-regulation rate (float, or 'inf' for "
                    "conventional training).")
flags.DEFINE_string("distill_alpha", str(_D.distill_alpha), "Students' self-regulation rate "
                    "(regulated and hybrid modes).")
flags.DEFINE_float("temperature", _D.temperature, "Distillation temperature tau.")
flags.DEFINE_float("kd_lambda", _D.kd_lambda, "Weight lambda of the hard-label cross-entropy.")
flags.DEFINE_bool("kd_scale_temperature_squared", _D.kd_scale_temperature_squared,
                  "Scale the KD term by tau^2 (Hinton et al.; the paper is silent).")
flags.DEFINE_float("gate_temperature", _D.gate_temperature, "Softmax temperature of a student's "
                   "own gate (1 by default; Algorithm 3 literally uses tau).")
flags.DEFINE_enum("loss_normaliser", _D.loss_normaliser, list(config_lib.LOSS_NORMALISERS),
                  "Divide the gated loss sum by the number of participants (mean over "
                  "participants), the batch size (mean over the batch) or the participants' "
                  "summed significance weights (weighted mean); the paper is silent.")
flags.DEFINE_list("modes", list(_D.modes), f"Distillation modes, a subset of {list(modes.MODES)}.")
flags.DEFINE_integer("seed", _D.seed, "Seed for initialisation and the per-epoch shuffles.")
flags.DEFINE_string("output_dir", None, "Output directory (default runs/<dataset>-<UTC time>).")
flags.DEFINE_integer("train_examples", _D.train_examples, "Use only the first K training "
                     "examples (0: all).")
flags.DEFINE_string("teacher_dir", None, "Reuse this run's (or teacher/ directory's) teacher "
                    "and significance instead of training one.")
flags.DEFINE_enum("stage", _D.stage, list(config_lib.STAGES), "Which stages to run.")
flags.DEFINE_enum("backward", _D.backward, list(config_lib.BACKWARDS), "masked: backward on the "
                  "whole batch with a 0/1 mask; compact: backward on participants only; auto: "
                  "per epoch from the previous participation.")
flags.DEFINE_bool("augment", _D.augment, "Random shifts (+flips for RGB); the teacher then runs "
                  "live in every student step instead of from cached logits.")
flags.DEFINE_bool("skip_idle_epochs", _D.skip_idle_epochs, "Skip epochs in which provably no "
                  "sample takes part (compact gate only).")
flags.DEFINE_bool("download", _D.download, "Let TFDS download a missing dataset.")
flags.DEFINE_bool("jit_compile", _D.jit_compile, "XLA-compile the train step (GPUs; slow on CPU).")
flags.DEFINE_integer("eval_batch_size", _D.eval_batch_size, "Batch size for inference passes.")
flags.DEFINE_enum("strategy", _D.strategy, list(config_lib.STRATEGIES), "tf.distribute strategy.")
flags.DEFINE_integer("cpu_replicas", _D.cpu_replicas, "Split the CPU into K logical devices "
                     "(to exercise MirroredStrategy without GPUs).")
flags.DEFINE_bool("overwrite", _D.overwrite, "Move an existing --output_dir made with other "
                  "settings aside instead of refusing.")
flags.DEFINE_bool("deterministic", _D.deterministic, "Enable TensorFlow op determinism "
                  "(bit-identical reruns and resumes; slower on GPUs).")
flags.DEFINE_list("export", [], "Export every student to TFLite with these quantizations "
                  "(float32,dynamic,float16,int8).")
flags.DEFINE_bool("mlflow", _D.mlflow, "Track the run in MLflow.")
flags.DEFINE_string("mlflow_experiment", None, "MLflow experiment (default: the dataset).")
flags.DEFINE_string("mlflow_tracking_uri", None, "MLflow tracking URI (default: "
                    "$MLFLOW_TRACKING_URI, else MLflow's own default).")
flags.DEFINE_integer("verbose", _D.verbose, "Keras fit verbosity (0, 1, 2).")


def _parse_rate(flag, text):
  try:
    return math.inf if text.strip().lower() in ("inf", "infinity") else float(text)
  except ValueError as e:
    raise config_lib.ConfigError(f"--{flag}={text}: expected a number >= 0 or 'inf'") from e


def config_from_flags() -> config_lib.Config:
  """The frozen config for the parsed flags."""
  output_dir = FLAGS.output_dir or os.path.join(
      "runs", f"{FLAGS.dataset}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
  return config_lib.Config(
      dataset=FLAGS.dataset, teacher_model=FLAGS.teacher_model, student_model=FLAGS.student_model,
      epochs=FLAGS.epochs, distill_epochs=FLAGS.distill_epochs, batch_size=FLAGS.batch_size,
      teacher_lr=FLAGS.teacher_lr, distill_lr=FLAGS.distill_lr,
      alpha=_parse_rate("alpha", FLAGS.alpha),
      distill_alpha=_parse_rate("distill_alpha", FLAGS.distill_alpha),
      temperature=FLAGS.temperature, kd_lambda=FLAGS.kd_lambda,
      kd_scale_temperature_squared=FLAGS.kd_scale_temperature_squared,
      gate_temperature=FLAGS.gate_temperature, loss_normaliser=FLAGS.loss_normaliser,
      modes=tuple(FLAGS.modes), seed=FLAGS.seed,
      output_dir=output_dir, train_examples=FLAGS.train_examples, teacher_dir=FLAGS.teacher_dir,
      stage=FLAGS.stage, backward=FLAGS.backward, augment=FLAGS.augment,
      skip_idle_epochs=FLAGS.skip_idle_epochs, download=FLAGS.download,
      jit_compile=FLAGS.jit_compile, eval_batch_size=FLAGS.eval_batch_size,
      strategy=FLAGS.strategy, cpu_replicas=FLAGS.cpu_replicas, overwrite=FLAGS.overwrite,
      deterministic=FLAGS.deterministic, export=tuple(FLAGS.export), mlflow=FLAGS.mlflow, mlflow_experiment=FLAGS.mlflow_experiment,
      mlflow_tracking_uri=FLAGS.mlflow_tracking_uri, verbose=FLAGS.verbose)


def main(argv):
  del argv
  try:
    config = config_lib.validate(config_from_flags())
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  # Imported here so that `--help` and flag errors stay fast.
  from tf_srkd import data  # pylint: disable=import-outside-toplevel
  from tf_srkd import pipeline  # pylint: disable=import-outside-toplevel
  from tf_srkd import strategy as strategy_lib  # pylint: disable=import-outside-toplevel
  from tf_srkd import tracking  # pylint: disable=import-outside-toplevel

  if config.deterministic:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.experimental.enable_op_determinism()
  strategy = strategy_lib.make_strategy(config.strategy, config.cpu_replicas)
  chief = strategy_lib.is_chief(strategy)
  tracker = tracking.NullTracker()
  if config.mlflow and chief:
    from tf_srkd import mlflow_tracking  # pylint: disable=import-outside-toplevel
    try:
      tracker = mlflow_tracking.connect(config)  # Fails fast if the server is unreachable.
    except mlflow_tracking.TrackingError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  started = time.time()
  try:
    summary = pipeline.run(config, strategy, tracker=tracker, is_chief=chief)
  except (config_lib.ConfigError, data.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if chief:
    print(pipeline.format_summary(summary))
    print(f"wall time {time.time() - started:.1f} s; outputs in {config.output_dir}")
  logging.info("done")


if __name__ == "__main__":
  app.run(main)

"""Command-line entry point: `tf-srkd --flagfile=quick` (or `python -m tf_srkd.main`).

Defines one flag per `Config` setting, turns the flags into one frozen `Config`,
creates the distribution strategy once, calls `pipeline.run`, and, with
`--export`, exports the students with `export/` afterwards (the library itself
never imports `export/`, which sits on top of it).
"""

import contextlib
import os
import time

from absl import flags
from absl import logging

from tf_srkd.cli import environment as cli

cli.prepare_environment()  # Before anything imports TensorFlow or MLflow.

# pylint: disable=g-import-not-at-top,wrong-import-position
from tf_srkd.run import config as config_lib
from tf_srkd.run import config_flags
from tf_srkd.run import console
from tf_srkd.data import datasets

FLAGS = flags.FLAGS

_DEFINE = {"string": flags.DEFINE_string, "rate": flags.DEFINE_string,
           "integer": flags.DEFINE_integer, "float": flags.DEFINE_float,
           "bool": flags.DEFINE_bool, "list": flags.DEFINE_list, "floats": flags.DEFINE_list,
           "multi": flags.DEFINE_multi_string}


def define_flags(flag_values=FLAGS):
  """Defines one flag per `Config` setting (name, default and help from its field)."""
  for spec in config_flags.flag_specs():
    if spec.kind == "enum":
      flags.DEFINE_enum(spec.name, spec.default, list(spec.choices), spec.help,
                        flag_values=flag_values)
    else:
      _DEFINE[spec.kind](spec.name, spec.default, spec.help, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values=FLAGS) -> config_lib.Config:
  """The frozen config for the parsed flags.

  Raises:
    config_lib.ConfigError: a rate flag that is neither a number nor 'inf'.
  """
  values = {spec.name: flag_values[spec.name].value for spec in config_flags.flag_specs()}
  if values["output_dir"] is None:
    values["output_dir"] = os.path.join(
        "runs", f"{datasets.slug(values['dataset'])}-"
        f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
  if values["verbose"] is None:
    values["verbose"] = console.default_fit_verbosity()
  return config_flags.from_flag_values(values)


def export_students(config, modes, tracker):
  """TFLite export + LiteRT verification of every student (`--export`).

  Files go to `students/<mode>/tflite/`; with MLflow on, each student's run
  gets the verification metrics and the `.tflite` files.

  Returns:
    {mode: {quantization: result}} (see `export.api.export_run`).
  """
  # The entry point, not the library, knows about export/ (which builds on tf_srkd).
  from export import api as export_api  # pylint: disable=import-outside-toplevel

  run_ids = {m: tracker.stage_run_id(f"student-{m}") for m in modes}
  if getattr(tracker, "pending", None) is not None:  # MLflow went away during the run: do not wait on it.
    run_ids = {}
  results = export_api.export_run(
      config.output_dir, config.exporting.export, modes=modes,
      mlflow_run_ids={m: run_id for m, run_id in run_ids.items() if run_id},
      tracking_uri=tracker.tracking_uri, max_in_memory_mb=config.data.max_in_memory_mb,
      export_at_chance=config.exporting.export_at_chance, qat_epochs=config.exporting.qad_epochs)
  for mode, by_quantization in results.items():
    for quantization, result in by_quantization.items():
      console.say(f"export {mode}/{quantization}: " + str({
          k: v for k, v in result.items()
          if any(t in k for t in ("accuracy", "agreement", "size", "latency", "file"))}))
  return results


def run(config, strategy=None, tracker=None, is_chief=True) -> dict:
  """`pipeline.run`, then (chief only) the `--export` of the students it trained.

  Arguments and result as `pipeline.run`.
  """
  from tf_srkd.run import pipeline  # pylint: disable=import-outside-toplevel
  from tf_srkd.tracking import base as tracking  # pylint: disable=import-outside-toplevel

  from tf_srkd.storage import run_lock  # pylint: disable=import-outside-toplevel

  tracker = tracker or tracking.NullTracker()
  # One writer for the whole run, exports included (taken once every check passed).
  with contextlib.closing(run_lock.RunDirLock(config.output_dir)) as lock:
    summary = pipeline.run(config, strategy, tracker=tracker, is_chief=is_chief, lock=lock)
    shippable = [m for m in summary["students"] if m not in students_at_chance(config, summary)]
    if config.exporting.export and shippable and is_chief:
      export_students(config, shippable, tracker)
    if config.tracking.register_model and shippable and is_chief:
      register_students(config, shippable, tracker)
  return summary


def students_at_chance(config, summary) -> list:
  """The students `--export` and `--register_model` leave out: those at chance, unless
  `--export_at_chance`."""
  if config.exporting.export_at_chance:
    return []
  return [m for m, s in summary["students"].items() if s.get("at_chance")]


def refusal_at_chance(config, summary):
  """The one line for students left unexported at chance, or None."""
  held = students_at_chance(config, summary)
  if not held or not (config.exporting.export or config.tracking.register_model):
    return None
  accuracies = ", ".join(f"{m} {summary['students'][m]['test_accuracy']:.4f}" for m in held)
  flag = "--export" if config.exporting.export else "--register_model"
  return (f"{flag}: nothing exported or registered for the student(s) at chance ({accuracies} "
          f"test accuracy, {config_lib.dataset_spec(config).num_classes} classes); every other file is "
          "kept. Train longer (see the warnings above), or pass --export_at_chance")


def register_students(config, modes, tracker):
  """`--register_model`: each student's MLflow model (TFLite files attached) in the
  Model Registry as `<NAME>-<mode>` (see `tf_srkd.tracking.mlflow_registry`).

  Returns:
    {mode: the registered `ModelVersion`} of the students that were registered.
  """
  from tf_srkd.storage import layout  # pylint: disable=import-outside-toplevel
  from tf_srkd.tracking import mlflow_registry  # pylint: disable=import-outside-toplevel

  versions = {}
  for mode in modes:
    model_id = getattr(tracker, "stage_model_id", lambda _: None)(f"student-{mode}")
    if model_id is None:
      pending = getattr(tracker, "pending", None)
      console.say(f"register {mode}: no MLflow model of this run to register" + (
          f" yet (MLflow was away: upload {pending.directory}, then register the model)"
          if pending is not None else ""))
      continue
    version = mlflow_registry.register_student(
        tracker.tracking_uri, config.tracking.register_model, mode, model_id,
        layout.RunDir(config.output_dir).student(mode).tflite,
        tags={"mode": mode, "dataset": config.data.dataset, "model": config.models.student_model})
    if version is not None:
      versions[mode] = version
      console.say(f"registered {mode} as {version.name} version {version.version}")
  return versions


def main(argv):
  del argv
  try:
    config = config_lib.validate(config_from_flags())
    config_lib.validate_tf_config(os.environ.get("TF_CONFIG"))
  except config_lib.ConfigError as e:
    cli.fail(e)
  # Imported here so that `--help` and flag errors stay fast.
  from tf_srkd.data import arrays as data  # pylint: disable=import-outside-toplevel
  from tf_srkd.run import pipeline  # pylint: disable=import-outside-toplevel
  from tf_srkd.cli import strategy as strategy_lib  # pylint: disable=import-outside-toplevel
  from tf_srkd.tracking import base as tracking  # pylint: disable=import-outside-toplevel

  if config.training.deterministic:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.experimental.enable_op_determinism()
  strategy = strategy_lib.make_strategy(config.training.strategy, config.training.cpu_replicas)
  chief = strategy_lib.is_chief(strategy)
  tracker = tracking.NullTracker()
  if config.tracking.mlflow and chief:
    from tf_srkd.tracking import mlflow_tracking  # pylint: disable=import-outside-toplevel
    try:
      tracker = mlflow_tracking.connect(config)  # Fails fast if the server is unreachable.
    except mlflow_tracking.TrackingError as e:
      cli.fail(e)
  started = time.time()
  from export.errors import ExportError  # pylint: disable=import-outside-toplevel

  from tf_srkd.storage.run_lock import RunDirBusy  # pylint: disable=import-outside-toplevel

  with cli.failing_on(config_lib.ConfigError, data.DataError, ExportError, RunDirBusy):
    summary = run(config, strategy, tracker=tracker, is_chief=chief)
  if chief:
    print(pipeline.format_summary(summary))
    console.run_finished(config.output_dir, time.time() - started, tracker)
    refusal = refusal_at_chance(config, summary)
    if refusal:
      cli.fail(refusal)
  logging.info("done")


def run_main():
  """The `tf-srkd` console script (flagfiles resolved as `tf_srkd.cli.flagfiles` says)."""
  cli.run(main, help_groups=config_flags.HELP_GROUPS)


if __name__ == "__main__":
  run_main()

"""`tf-srkd-export` (`python -m export.tflite`): trained students -> verified `.tflite` files.

The flags and their checks; the work is `export`'s (what a `.tflite` written here is:
docs/export.md).
"""

import os

from export.api import check_max_in_memory_mb
from export.api import export_all
from export.api import export_model
from export.api import export_qat
from export.api import export_run
from export.api import format_results
from export.calibration import DEFAULT_CALIBRATION_SAMPLES
from export.calibration import check_calibration
from export.convert import QUANTIZATIONS
from export.convert import check_quantizations
from export.errors import ExportError
from tf_srkd.cli import environment as cli


def _define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_string("model", None, "A .keras model (e.g. <run>/students/<mode>/model.keras), "
                      "its directory, or an MLflow URI runs:/<run_id>/<path>.")
  flags.DEFINE_string("run_dir", None, "Export every student of this run into "
                      "students/<mode>/tflite/ (instead of --model).")
  flags.DEFINE_string("quantization", "float32", "float32, dynamic, float16 or int8 (a comma "
                      "list writes several files into the --output directory).")
  flags.DEFINE_bool("all", False, "Write all four quantizations into the --output directory.")
  flags.DEFINE_string("output", None, "The .tflite file (one quantization) or a directory.")
  flags.DEFINE_string("calibration", "random", "int8 calibration set: random training samples, "
                      "or the teacher's most significant ones (significant).")
  flags.DEFINE_integer("num_calibration_samples", DEFAULT_CALIBRATION_SAMPLES,
                       "int8 calibration set size.")
  flags.DEFINE_integer("calibration_seed", 0, "Seed of the random calibration draw.")
  flags.DEFINE_string("significance", None, "significance.npy for --calibration=significant "
                      "when the model is not inside a run directory.")
  flags.DEFINE_string("dataset", None, "Dataset, when the model is not inside a run directory.")
  flags.DEFINE_bool("dense_per_channel", False, "int8: per-channel weight scales for dense "
                    "layers too (bigger file).")
  flags.DEFINE_integer("qat_epochs", 0, "> 0: also quantization-aware training for this many "
                       "epochs and a *_qat int8 export (runs python -m export.qat).")
  flags.DEFINE_float("qat_learning_rate", 1e-4, "Adam learning rate of the QAT fine-tuning.")
  flags.DEFINE_integer("test_examples", 0, "Verify on the first K test examples (0: all).")
  flags.DEFINE_float("max_in_memory_mb", None, "Splits whose uint8 pixels exceed this many MiB "
                     "stay on disk: calibration reads only its rows, verification reads the test "
                     "split in chunks (same results; 0: always). Default: tf-srkd's "
                     "--max_in_memory_mb default (2048). QAT keeps its splits in memory.")
  flags.DEFINE_bool("export_at_chance", False, "--run_dir: also export students whose "
                    "metrics.json marks them at chance (refused by default).")
  flags.DEFINE_string("mlflow_run_id", None, "Log the numbers and files into this MLflow run.")
  flags.DEFINE_string("mlflow_tracking_uri", None, "The MLflow store of --mlflow_run_id and of "
                      "a runs:/ --model (default: $MLFLOW_TRACKING_URI, else MLflow's default).")


def _export(f) -> list:
  """Runs the export the parsed flags ask for; returns (name, result) rows."""
  check_max_in_memory_mb(f.max_in_memory_mb)
  common = dict(calibration=f.calibration, num_calibration_samples=f.num_calibration_samples,
                calibration_seed=f.calibration_seed, significance_path=f.significance,
                dense_per_channel=f.dense_per_channel, test_examples=f.test_examples,
                tracking_uri=f.mlflow_tracking_uri, max_in_memory_mb=f.max_in_memory_mb)
  quantizations = (list(QUANTIZATIONS) if f["all"].value
                   else check_quantizations(f.quantization.split(",")))
  check_calibration(f.calibration)
  qat_options = {"qat_learning_rate": f.qat_learning_rate}
  if f.run_dir:
    if f.model:
      raise ExportError("pass either --model or --run_dir, not both")
    if f.mlflow_run_id:
      raise ExportError("--mlflow_run_id: one run per model; with --run_dir use "
                        "export.tflite.export_run(..., mlflow_run_ids={mode: run_id})")
    from tf_srkd.storage import run_lock  # pylint: disable=import-outside-toplevel

    if not os.path.isdir(f.run_dir):
      raise ExportError(f"--run_dir={f.run_dir}: not a directory")
    try:  # One writer per run directory: not while a run (or another export) writes it.
      with run_lock.RunDirLock(f.run_dir, "--run_dir"):
        results = export_run(f.run_dir, quantizations, qat_epochs=f.qat_epochs,
                             dataset=f.dataset, qat_options=qat_options,
                             export_at_chance=f.export_at_chance, **common)
    except run_lock.RunDirBusy as e:
      raise ExportError(str(e)) from e
    return [(f"{mode}/{key}", r) for mode, by_key in results.items() for key, r in by_key.items()]
  if not f.model:
    raise ExportError("--model (or --run_dir) is required")
  if not f.output:
    raise ExportError("--output is required")
  if len(quantizations) == 1 and not f["all"].value and f.output.endswith(".tflite"):
    rows = [(quantizations[0], export_model(f.model, f.output, quantizations[0],
                                            dataset=f.dataset, mlflow_run_id=f.mlflow_run_id,
                                            **common))]
    if f.qat_epochs:
      if quantizations[0] != "int8":
        raise ExportError("--qat_epochs: QAT exports int8; use --quantization=int8 or --all")
      output = os.path.splitext(f.output)[0] + "_qat.tflite"
      rows.append(("int8_qat", export_qat(
          f.model, output, f.qat_epochs, dataset=f.dataset, test_examples=f.test_examples,
          dense_per_channel=f.dense_per_channel, mlflow_run_id=f.mlflow_run_id,
          tracking_uri=f.mlflow_tracking_uri, **qat_options)))
    return rows
  if f.output.endswith(".tflite"):
    raise ExportError(f"--output={f.output}: several quantizations need a directory")
  return list(export_all(f.model, f.output, quantizations, qat_epochs=f.qat_epochs,
                         dataset=f.dataset, mlflow_run_id=f.mlflow_run_id,
                         qat_options=qat_options, **common).items())


def main(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  with cli.failing_on(ExportError):
    rows = _export(flags.FLAGS)
  print(format_results(rows))
  for _, r in rows:
    print(f"wrote {r['paths']['tflite']}")


def run_main():
  """The `tf-srkd-export` console script (`python -m export.tflite`)."""
  # Importing this module does not import TensorFlow yet: the environment is still quiet-able.
  cli.run_program(main, _define_flags)


if __name__ == "__main__":
  run_main()

"""Trained student -> `.tflite` for phones, verified in LiteRT: the public names.

    python -m export.tflite --model=<run>/students/<mode>/model.keras \
        --quantization=int8 --output=student_int8.tflite
    python -m export.tflite --model=runs:/<run_id>/student-hybrid --all --output=<dir>
    python -m export.tflite --run_dir=<run> --quantization=int8,float32 [--qat_epochs=1]

What a `.tflite` written here is: docs/export.md. The command line is
`tf_srkd.cli.export_tflite` (this module forwards `python -m export.tflite` to
it); the work is done by the modules of this package (`api` strings them
together). The names below are re-exported so that `from export import tflite; tflite.export_model(...)` is
the one import a Python caller needs.
"""


from export.api import ExportData
from export.api import check_max_in_memory_mb
from export.api import export_all
from export.api import export_model
from export.api import export_qat
from export.api import export_run
from export.api import format_results
from export.api import load_split
from export.calibration import CALIBRATIONS
from export.calibration import DEFAULT_CALIBRATION_SAMPLES
from export.calibration import calibration_indices
from export.calibration import check_calibration
from export.convert import QUANTIZATIONS
from export.convert import check_quantizations
from export.errors import ExportError
from export.sidecar import sidecar_path
from export.source import Student
from export.source import load_student

__all__ = ["CALIBRATIONS", "DEFAULT_CALIBRATION_SAMPLES", "ExportData", "ExportError",
           "QUANTIZATIONS", "Student", "calibration_indices", "check_max_in_memory_mb",
           "export_all", "export_model", "export_qat", "export_run", "format_results",
           "load_split", "load_student", "sidecar_path"]


if __name__ == "__main__":
  # `python -m export.tflite` is the documented command; its flags live with the others.
  from tf_srkd.cli.export_tflite import run_main  # pylint: disable=import-outside-toplevel

  run_main()

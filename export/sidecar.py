"""Writing an export: the `.tflite`, `labels.txt` and the JSON sidecar next to it.

The sidecar (format in docs/export.md) records the input and output tensors,
their quantization, the class names, the calibration or QAT settings, the
source run and the verification numbers. Every file is written atomically,
the sidecar last.
"""

import hashlib
import os
from typing import Optional

from export import convert as convert_lib
from export.errors import ExportError
from tf_srkd.models import input_contract
from tf_srkd.storage import io_utils

SIDECAR_VERSION = 1
LABELS_FILE = "labels.txt"


def check_output(output: str, what: str = "--output"):
  """Raises ExportError unless `output` names a `.tflite` file (not a directory)."""
  if not output or not output.endswith(".tflite"):
    raise ExportError(f"{what}={output}: expected a file name ending in .tflite")
  if os.path.isdir(output):
    raise ExportError(f"{what}={output}: is a directory")


def file_name(quantization: str, qat: bool = False) -> str:
  """`model_<quantization>[_qat].tflite`, the name inside an export directory."""
  return f"model_{quantization}{'_qat' if qat else ''}.tflite"


def sidecar_path(output: str) -> str:
  """`<output without .tflite>.json`."""
  return os.path.splitext(output)[0] + ".json"


def labels_path(output: str) -> str:
  """`labels.txt` next to `output` (shared by the exports of one directory)."""
  return os.path.join(os.path.dirname(os.path.abspath(output)), LABELS_FILE)


def export_paths(output: str) -> dict:
  """{"tflite", "labels", "sidecar"}: the files an export of `output` writes."""
  return {"tflite": output, "labels": labels_path(output), "sidecar": sidecar_path(output)}


def _versions():
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
  try:
    from importlib import metadata  # pylint: disable=import-outside-toplevel

    versions["ai_edge_litert"] = metadata.version("ai-edge-litert")
  except Exception:  # pylint: disable=broad-except
    pass
  return versions


def _tensor(detail: dict, name: str) -> dict:
  """The sidecar's description of one signature tensor (name, tensor, shape, dtype, quantization)."""
  return {"name": name, "tensor": detail["tensor"], "shape": detail["shape"],
          "dtype": detail["dtype"], "quantization": detail["quantization"]}


def _resize(spec) -> Optional[dict]:
  """How the run resized its images (`--image_size`), which a caller must repeat; None: not."""
  size = getattr(spec, "image_size", None)
  if not size:
    return None
  from tf_srkd.data import sources  # pylint: disable=import-outside-toplevel

  return {"height": size[0], "width": size[1], "method": sources.RESIZE_METHOD}


def _network_input(model) -> str:
  """What the trained network inside takes (`tf_srkd.models.input_contract`), for the record."""
  if input_contract.scaling_of(model) == "pixels":
    return ("pixels: the network was trained on float pixels 0..255; the graph's "
            f"{input_contract.ADAPTER_NAME} layer scales [0, 1] back up")
  return "unit: the network was trained on [0, 1] images"


def build_sidecar(student, output: str, tflite_bytes: bytes, quantization: str,
                  details: dict, verification: dict, calibration: Optional[dict] = None,
                  qat: Optional[dict] = None) -> dict:
  """The JSON written next to the `.tflite` (format documented in docs/export.md)."""
  h, w, c = student.image_shape
  output_q = details["output"]["quantization"]
  if quantization == "int8":
    scaling = ("none needed: feed raw pixels; the uint8 input's quantization (scale 1/255, "
               "zero point 0) maps pixel q to q/255, the [0, 1] image the network was trained on")
  else:
    scaling = "none needed: feed raw pixels; Cast + 1/255 scaling run inside the model"
  return {
      "format_version": SIDECAR_VERSION,
      "file": os.path.basename(output),
      "size_bytes": len(tflite_bytes),
      "sha256": hashlib.sha256(tflite_bytes).hexdigest(),
      "quantization": quantization,
      "method": "qat" if qat else ("ptq" if quantization != "float32" else "none"),
      "full_integer": bool(details["full_integer"]),
      "signature": convert_lib.SIGNATURE_KEY,
      "input": dict(
          _tensor(details["input"], convert_lib.INPUT_NAME), layout="NHWC", height=h, width=w,
          channels=c, value_range=[0, 255], description="raw image pixels, batch 1",
          preprocessing=scaling, resize=_resize(student.spec),
          network_input=_network_input(student.model)),
      "output": dict(
          _tensor(details["output"], convert_lib.OUTPUT_NAME),
          description="class probabilities (softmax); index i is line i of labels.txt",
          dequantize=("probability = scale * (q - zero_point)" if output_q else None)),
      "class_names": list(student.spec.class_names),
      "labels_file": LABELS_FILE,
      "calibration": calibration,
      "qat": qat,
      "ops": details["ops"],
      "source": student.source(),
      "verification": dict(verification, size_bytes=len(tflite_bytes)),
      "exporter": _versions(),
  }


def write_export(output: str, tflite_bytes: bytes, sidecar: dict, class_names) -> dict:
  """Writes the `.tflite`, `labels.txt` and the sidecar, each atomically (sidecar last).

  Returns:
    `export_paths(output)`.
  """
  paths = export_paths(output)
  with io_utils.atomic_path(output, suffix=".tflite") as tmp:
    with open(tmp, "wb") as f:
      f.write(tflite_bytes)
  io_utils.write_text(paths["labels"], "".join(f"{name}\n" for name in class_names))
  io_utils.write_json(paths["sidecar"], sidecar)
  return paths

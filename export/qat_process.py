"""Quantization-aware distillation in its own process: `export_qat` starts
`python -m export.qat` and reads back what it wrote.

tensorflow-model-optimization only handles tf_keras models and switches its process
to legacy Keras on import, so it never runs in the caller's process; this module
imports neither.
"""

import os
import subprocess
import sys
from typing import Optional

from export import sidecar as sidecar_lib
from export import source
from export import verify as verify_lib
from export.errors import ExportError
from tf_srkd.storage import io_utils

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: What quantization-aware fine-tuning trains on: the student's own distillation objective
#: and gate, or the hard labels alone.
QAT_OBJECTIVES = ("distillation", "labels")


def export_qat(model, output: str, qat_epochs: int = 1, *, qat_learning_rate: float = 1e-4,
               batch_size: int = 0, dataset: Optional[str] = None, test_examples: int = 0,
               dense_per_channel: bool = False, mlflow_run_id: Optional[str] = None,
               tracking_uri: Optional[str] = None, seed: int = 0,
               timeout: Optional[float] = None, qat_objective: str = "distillation") -> dict:
  """Quantization-aware distillation + int8 export, in a subprocess (`python -m export.qat`).

  tensorflow-model-optimization only handles tf_keras models and switches its
  process to legacy Keras, so it never runs in the caller's process. See
  `export/qat.py` for what the subprocess does. `qat_objective="labels"` fine-tunes
  on the hard labels alone (cross-entropy, every sample: plain QAT, the baseline
  quantization-aware distillation is measured against).

  Returns:
    The QAT export's result (the sidecar dict plus `paths`).

  Raises:
    ExportError: bad arguments or a failed subprocess (its last lines quoted).
  """
  sidecar_lib.check_output(output)
  if int(qat_epochs) < 1:
    raise ExportError(f"--qat_epochs={qat_epochs}: expected an integer >= 1")
  if qat_objective not in QAT_OBJECTIVES:
    raise ExportError(f"--qat_objective={qat_objective}: expected one of "
                      f"{', '.join(QAT_OBJECTIVES)}")
  if isinstance(model, source.Student):
    model = model.model_ref
  args = [sys.executable, "-m", "export.qat", f"--model={model}", f"--output={output}",
          f"--qat_epochs={int(qat_epochs)}", f"--qat_learning_rate={qat_learning_rate}",
          f"--batch_size={int(batch_size)}", f"--test_examples={int(test_examples)}",
          f"--seed={int(seed)}", "--dense_per_channel" if dense_per_channel else
          "--nodense_per_channel", f"--qat_objective={qat_objective}"]
  if dataset:
    args.append(f"--dataset={dataset}")
  if mlflow_run_id:
    args.append(f"--mlflow_run_id={mlflow_run_id}")
  if tracking_uri:
    args.append(f"--mlflow_tracking_uri={tracking_uri}")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  proc = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)
  if proc.returncode != 0:
    lines = [l for l in (proc.stderr or "").strip().splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    tail = "\n".join(errors or lines[-15:])
    raise ExportError(f"QAT export of {model} failed (exit {proc.returncode}):\n{tail}")
  paths = sidecar_lib.export_paths(output)
  result = dict(io_utils.read_json(paths["sidecar"]), paths=paths)
  # The subprocess's own warning went to its captured stderr.
  verify_lib.warn_if_xnnpack_refused("int8_qat", result["verification"])
  return result

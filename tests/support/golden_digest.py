"""Digests of a finished run's outputs, for bit-identity checks across code changes.

`digest(run_dir)` hashes what a run computed, not how it was stored: the arrays
of participation.npy / significance.npy (dtype, shape, bytes), each network's
weights (the .keras zip holds timestamps, so the weights are loaded and hashed
in order), the per-epoch history minus timings, and the summary's numbers.

The golden file of tests/e2e/test_golden_smoke.py holds one full digest per kind of
CPU it was recorded on: the same code and seed give different bits on an AVX2
machine and on an AVX-512 one (oneDNN and Eigen pick kernels by instruction set,
and they round differently), and CI machines vary. A run passes when it equals
one recorded digest in every stage; a code change that alters results matches
none of them.

    TFDS_DATA_DIR=../shared/tfds python -m tests.support.golden_digest --add    # this CPU kind
    TFDS_DATA_DIR=../shared/tfds python -m tests.support.golden_digest --write  # results meant
                                                  # to change: this CPU kind only

`--write` drops the other kinds (their digests are stale after a change that is
meant to alter results; record them again on those machines with `--add`).
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN_PATH = os.path.join(ROOT, "tests", "golden", "smoke_deterministic.json")
#: The run the golden file describes: the smoke flagfile, deterministic, no tracking.
SMOKE_ARGS = ("--flagfile=flags/smoke.flags", "--deterministic", "--nomlflow")
#: History entries that measure time, not results.
_UNTIMED = ("wall_time_s",)


def _array_digest(array) -> str:
  array = np.ascontiguousarray(array)
  h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
  h.update(array.tobytes())
  return h.hexdigest()


def _weights_digest(model_path) -> str:
  import keras  # pylint: disable=import-outside-toplevel

  network = keras.models.load_model(model_path, compile=False)
  h = hashlib.sha256()
  for weight in network.get_weights():
    h.update(_array_digest(weight).encode())
  return h.hexdigest()


def _stage_digest(stage_dir) -> dict:
  out = {"weights": _weights_digest(os.path.join(stage_dir, "model.keras"))}
  for name in ("participation.npy", "significance.npy"):
    path = os.path.join(stage_dir, name)
    if os.path.exists(path):
      out[name] = _array_digest(np.load(path))
  with open(os.path.join(stage_dir, "metrics.json"), encoding="utf-8") as f:
    history = json.load(f)["history"]
  text = json.dumps([{k: v for k, v in e.items() if k not in _UNTIMED} for e in history],
                    sort_keys=True)
  out["history"] = hashlib.sha256(text.encode()).hexdigest()
  return out


def digest(run_dir) -> dict:
  """{"summary": ..., "stages": {"teacher" | "students/<mode>": {...}}} for a finished run."""
  with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  stages = {"teacher": _stage_digest(os.path.join(run_dir, "teacher"))}
  for mode in sorted(summary["students"]):
    stages[f"students/{mode}"] = _stage_digest(os.path.join(run_dir, "students", mode))
  return {"summary": summary, "stages": stages}


def machine_kind() -> dict:
  """The CPU facts that decide which kernels TensorFlow runs (for the golden file's readers)."""
  flags, model = set(), "unknown"
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags") and not flags:
          flags = set(line.split(":", 1)[1].split())
        elif line.startswith("model name") and model == "unknown":
          model = line.split(":", 1)[1].strip()
  except OSError:
    pass
  isa = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
  return {"cpu": model, "isa": isa}


def matching_variant(got: dict, variants: list):
  """(index of the recorded variant equal to `got` in summary and every stage, or None,
  the list of stages that differ from the closest variant)."""
  best = None
  for i, variant in enumerate(variants):
    differing = sorted(stage for stage in set(variant["stages"]) | set(got["stages"])
                       if variant["stages"].get(stage) != got["stages"].get(stage))
    if variant["summary"] != got["summary"]:
      differing.insert(0, "summary")
    if not differing:
      return i, []
    if best is None or len(differing) < len(best):
      best = differing
  return None, best if best is not None else ["(no variant recorded)"]


def run_smoke(output_dir, timeout=900):
  """Runs the deterministic smoke pipeline as the CLI does; returns the CompletedProcess."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  # The digests are recorded with TensorFlow's default thread pools; the per-worker share
  # that tests/conftest.py sets under pytest-xdist could change how sums are split.
  for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    env.pop(name, None)
  return subprocess.run([sys.executable, "-m", "tf_srkd.main", *SMOKE_ARGS,
                         f"--output_dir={output_dir}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)


def main(argv):
  with tempfile.TemporaryDirectory() as tmp:
    result = run_smoke(os.path.join(tmp, "run"))
    if result.returncode:
      sys.exit(result.stderr[-3000:])
    variant = dict(digest(os.path.join(tmp, "run")), machine=machine_kind())
  if "--add" not in argv and "--write" not in argv:
    print(json.dumps(variant, indent=2, sort_keys=True))
    return
  variants = []
  if "--add" in argv and os.path.exists(GOLDEN_PATH):
    with open(GOLDEN_PATH, encoding="utf-8") as f:
      # Replaces this CPU kind's entry, and any entry with the same digests (recorded on an
      # unnamed machine of the same kind).
      variants = [v for v in json.load(f)["variants"] if v["machine"] != variant["machine"]
                  and (v["summary"], v["stages"]) != (variant["summary"], variant["stages"])]
  value = {"regenerate": "TFDS_DATA_DIR=../shared/tfds python -m tests.support.golden_digest --add",
           "run": " ".join(("python -m tf_srkd.main",) + SMOKE_ARGS),
           "variants": variants + [variant]}
  os.makedirs(os.path.dirname(GOLDEN_PATH), exist_ok=True)
  with open(GOLDEN_PATH, "w", encoding="utf-8") as f:
    f.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
  print(f"wrote {GOLDEN_PATH} ({len(value['variants'])} CPU kinds)")


if __name__ == "__main__":
  main(sys.argv[1:])

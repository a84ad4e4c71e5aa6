"""Margin reuse under a 2-replica MirroredStrategy on the CPU (device setup is per process).

Usage: python tests/support/margin_reuse_worker.py KIND OUTPUT_NPZ [REFRESH ...]
Trains `tests.support.idle_runs` (KIND teacher or student) with the margin cache off
(`plain_*` in OUTPUT_NPZ), then on once per REFRESH (default `exact`): `reuse_*` for
`exact`, `bounded_*` for `--margin_refresh=bounded` (K 3, b 0.01). Each run's counts,
weights, optimizer state and per-epoch logs are written.
"""

import os
import pathlib
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tf_srkd.cli import environment  # pylint: disable=g-import-not-at-top
from tf_srkd.cli import strategy as strategy_lib  # pylint: disable=g-import-not-at-top

environment.skip_the_final_collection()

STRATEGY = strategy_lib.make_strategy("mirrored", cpu_replicas=2)

import numpy as np  # pylint: disable=g-import-not-at-top

from tests.support import idle_runs  # pylint: disable=g-import-not-at-top
from tf_srkd.data import arrays as data  # pylint: disable=g-import-not-at-top
from tf_srkd.data import datasets  # pylint: disable=g-import-not-at-top


#: Each REFRESH's run, by the prefix of its arrays.
RUN_NAMES = {"exact": "reuse", "bounded": "bounded"}


def main(kind, output, *refreshes):
  split = data.load_split(datasets.get_dataset_spec("mnist"), "train", idle_runs.N)
  arrays = {"replicas": STRATEGY.num_replicas_in_sync}
  runs = [("plain", False, "exact")] + [(RUN_NAMES[r], True, r) for r in refreshes or ("exact",)]
  with tempfile.TemporaryDirectory() as tmp:
    for name, reuse, refresh in runs:
      model, history, optimizer_state = idle_runs.train(
          split, pathlib.Path(tmp) / name, False, kind, reuse=reuse, strategy=STRATEGY,
          refresh=refresh)
      arrays[f"{name}_counts"] = model.participation_counts()
      for i, w in enumerate(model.network.get_weights() + optimizer_state):
        arrays[f"{name}_state{i}"] = w
      for key in ("participation_fraction", "loss", "gate_from_cache"):
        arrays[f"{name}_{key}"] = np.array([h[key] for h in history])
  np.savez(output, **arrays)


if __name__ == "__main__":
  main(*sys.argv[1:])

"""bench/fidelity.py's paper-vs-ours table: paper numbers, mean ± std, verdicts."""

import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
import fidelity  # pylint: disable=wrong-import-position  # noqa: E402


def test_paper_numbers_come_from_tables_i_iii_and_vi():
  assert fidelity.paper_numbers("mnist", "teacher") == (0.9897, None)
  assert fidelity.paper_numbers("fashion_mnist", "teacher") == (0.9042, None)
  accuracy, zeta = fidelity.paper_numbers("mnist", "hybrid")
  assert accuracy == 0.9804 and zeta == pytest.approx(250245 / 12000000)


def test_table_reports_mean_std_delta_and_verdict():
  per_seed = [
      {"teacher": {"test_accuracy": 0.99, "zeta": 0.004},
       "regulated": {"test_accuracy": 0.9860, "zeta": 0.007},
       "hybrid": {"test_accuracy": 0.9700, "zeta": 0.010}},
      {"teacher": {"test_accuracy": 0.98, "zeta": 0.006},
       "regulated": {"test_accuracy": 0.9870, "zeta": 0.006},
       "hybrid": {"test_accuracy": 0.9900, "zeta": 0.030}},
  ]
  rows = {line.split(" | ")[0].strip("| "): line.split(" | ")
          for line in fidelity.table("mnist", per_seed).splitlines()[:5]}
  assert rows["teacher"][2] == "0.9850 ± 0.0071" and rows["teacher"][-1].strip(" |") == "no"
  # Regulated: mean 0.9865 >= 0.9859 at mean zeta 0.65 % <= 0.713 %.
  assert rows["regulated"][3] == "+0.06 pt" and rows["regulated"][-1].strip(" |") == "yes"
  # Hybrid: accuracy 0.98 < 0.9804 and zeta 2 % <= 2.085 %: not reached.
  assert rows["hybrid"][5].startswith("2.000%") and rows["hybrid"][-1].strip(" |") == "no"

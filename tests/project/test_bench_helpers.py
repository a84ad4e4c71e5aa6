"""Helpers of the benchmark scripts: bench/reproduction/mobile.py's verdicts,
bench/reproduction/peers_protocol.py's summary over seeds, bench/timing/streaming.py's
growth goal, bench/standardised_models.py, bench/common.py's machine line."""

import os
import subprocess
import sys

import keras
import numpy as np


_BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")
_saved_path = list(sys.path)
sys.path[:0] = [_BENCH, os.path.join(_BENCH, "reproduction"), os.path.join(_BENCH, "timing")]
try:
  import mobile  # pylint: disable=wrong-import-position
  import peers_protocol  # pylint: disable=wrong-import-position
  import standardised_models  # pylint: disable=wrong-import-position
  import streaming  # pylint: disable=wrong-import-position
finally:
  # bench/reproduction/ holds an export.py: leave the real `export` package first on the path.
  sys.path[:] = _saved_path


def test_int8_loss_within_the_goal_is_met():
  assert mobile.int8_delta_cell(-0.13) == "-0.13 (met)"
  assert mobile.int8_delta_cell(-0.5) == "-0.50 (met)"
  # 50 images of 10,000, as the bench computes it (-0.5000000000000004 unrounded).
  assert mobile.int8_delta_cell(100 * (0.4470 - 0.4520)) == "-0.50 (met)"


def test_int8_loss_beyond_the_goal_is_missed():
  assert mobile.int8_delta_cell(-0.51) == "-0.51 (missed)"


def test_int8_gain_meets_the_goal_but_a_large_one_is_marked():
  assert mobile.int8_delta_cell(0.22) == "+0.22 (met)"
  assert mobile.int8_delta_cell(0.64) == "+0.64 (met, int8 gains > 0.5 pt)"


def test_int8_op_check_names_every_problem():
  good = {"full_integer": True, "ops": ["CONV_2D", "HARD_SWISH", "QUANTIZE"]}
  assert mobile.int8_op_check(good) == "ok"
  bad = {"full_integer": False, "ops": ["CONV_2D", "DEQUANTIZE"]}
  assert mobile.int8_op_check(bad) == "float tensors, DEQUANTIZE, no HARD_SWISH op"


def _cell(accuracy, zeta, wall, target=None, setting=""):
  return {"accuracy": accuracy, "zeta": zeta, "wall": wall, "target": target,
          "setting": setting}


def test_peers_protocol_summary_over_seeds(tmp_path):
  by_seed = {}
  for seed, (sb_accuracy, sb_zeta, random_zeta) in {0: (0.99, 0.0042, 0.0042),
                                                    1: (0.10, 0.0050, 0.0038)}.items():
    cells = {}
    for stage in ("teacher", "student"):
      for policy, refresh in peers_protocol.ARMS:
        arm = peers_protocol.arm_name(policy, refresh)
        cells[stage, arm] = _cell(0.99, 0.004, 100.0 if arm == "conventional" else 50.0 + 10 * seed)
      cells[stage, "selective_backprop"] = _cell(sb_accuracy, sb_zeta, 40.0, 0.004, f"β={seed}")
      cells[stage, "random"] = _cell(0.97, random_zeta, 10.0, 0.004, "p=0.004")
    by_seed[seed] = cells
  rows, points = peers_protocol.summarize("mnist", by_seed, at_chance=lambda a: a < 0.2)
  rows = {(row[0], row[1]): row[2:] for row in rows}
  assert len(rows) == 2 * len(peers_protocol.ARMS)
  # setting, target ζ, ζ, matched, accuracy, time / conventional
  assert rows["teacher", "conventional"] == [
      "α=inf", "—", "0.400% ± 0.000%", "—", "0.9900 ± 0.0000", "1.000 ± 0.000"]
  assert rows["student", "self_regulated"][0] == "paper α"
  assert rows["student", "self_regulated"][5] == "0.550 ± 0.071"  # 50/100 and 60/100
  assert rows["teacher", "selective_backprop"] == [
      "β=0; β=1", "0.400% ± 0.000%", "0.460% ± 0.057%", "no (25% off)",
      "0.5450 ± 0.6293 **AT CHANCE** (seed 1)", "0.400 ± 0.000"]
  assert rows["teacher", "random"][2:4] == ["0.400% ± 0.028%", "yes"]  # 5 % off at worst
  figure = peers_protocol.pareto_figure("mnist", points)
  figure.savefig(tmp_path / "pareto.png")
  assert (tmp_path / "pareto.png").stat().st_size > 0
  assert "not shown: selective_backprop: at chance (0.545 at ζ 0.460%)" in (
      figure.axes[0].get_xlabel())


def _rss(peak, spread=0.0):
  return {"peak_rss_mib": peak, "spread_mib": spread}


def test_streaming_growth_goal_is_bookkeeping_plus_the_larger_of_slack_and_spread():
  cells = {512: {"memory": _rss(500.0), "disk": _rss(480.0, 1.0)},
           1024: {"memory": _rss(520.0), "disk": _rss(482.0, 2.0)}}
  growth, goal = streaming.growth_rows(cells, [512, 1024])
  # 20 MiB over 512 extra rows is 40,960 B per row; 2 MiB is 4,096 B.
  assert growth == ["growth 512 → 1024, MiB (bytes per extra example)", "+20.0 (40960 B)",
                    "+2.0 (4096 B)"]
  assert goal[0].endswith("= 4.0 MiB") and goal[1:] == ["—", "met"]
  cells[1024]["disk"] = _rss(486.0, 2.0)  # +6 MiB against 44 B x 512 + 4 MiB
  assert streaming.growth_rows(cells, [512, 1024])[1][2] == "missed"
  cells[512]["disk"] = _rss(480.0, 8.0)  # a spread beyond the slack widens the goal
  goal = streaming.growth_rows(cells, [512, 1024])[1]
  assert goal[0].endswith("= 8.0 MiB") and goal[2] == "met"


def test_standardised_lenet_is_the_registry_model_on_standardised_pixels():
  model = standardised_models.lenet5_half((28, 28, 1), 10)
  normalisation, inner = model.layers[1], model.layers[-1]
  assert isinstance(normalisation, keras.layers.Normalization)
  assert inner.count_params() == 35_820  # docs/choices.md: LeNet-5-half
  images = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
  np.testing.assert_allclose(model(images).numpy(), inner((images - 0.1307) / 0.3081).numpy(),
                             rtol=1e-5, atol=1e-5)


def test_an_orchestrator_describes_the_machine_without_importing_tensorflow():
  """A script whose runs are child processes names the versions its children will use,
  and its own process stays free of TensorFlow (~5 s of CPU per bench run)."""
  from importlib import metadata  # pylint: disable=import-outside-toplevel

  script = ("import sys, common; line = common.machine_description(runs_in_child_processes=True); "
            "print(line); print('tensorflow' in sys.modules, 'keras' in sys.modules)")
  run = subprocess.run([sys.executable, "-c", script], cwd=_BENCH, capture_output=True,
                       text=True, timeout=120, check=True,
                       env=dict(os.environ, PYTHONPATH=os.path.dirname(_BENCH)))
  line, imported = run.stdout.splitlines()
  assert imported == "False False"
  assert f"TensorFlow {metadata.version('tensorflow')}, Keras {metadata.version('keras')}," in line
  assert "threads TF defaults in the child runs" in line and ("no GPU" in line or "GPU(s)" in line)

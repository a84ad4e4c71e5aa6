"""Helpers of the benchmark scripts: bench/reproduction/mobile.py's verdicts, bench/standardised_models.py."""

import os
import sys

import keras
import numpy as np


_BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")
_saved_path = list(sys.path)
sys.path[:0] = [_BENCH, os.path.join(_BENCH, "reproduction")]
try:
  import mobile  # pylint: disable=wrong-import-position
  import standardised_models  # pylint: disable=wrong-import-position
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


def test_standardised_lenet_is_the_registry_model_on_standardised_pixels():
  model = standardised_models.lenet5_half((28, 28, 1), 10)
  normalisation, inner = model.layers[1], model.layers[-1]
  assert isinstance(normalisation, keras.layers.Normalization)
  assert inner.count_params() == 35_820  # docs/choices.md: LeNet-5-half
  images = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
  np.testing.assert_allclose(model(images).numpy(), inner((images - 0.1307) / 0.3081).numpy(),
                             rtol=1e-5, atol=1e-5)

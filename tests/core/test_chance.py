"""The chance bound and the too-few-steps rule (pure: no TensorFlow)."""

import math

import pytest

from tf_srkd.core import chance


def _tail(k, n, p):
  """P(X >= k), X ~ Binomial(n, p), summed term by term."""
  return sum(math.comb(n, i) * p**i * (1 - p)**(n - i) for i in range(k, n + 1))


@pytest.mark.parametrize("n,classes", [(10, 2), (50, 10), (200, 3), (1000, 10), (137, 7)])
def test_bound_is_the_exact_binomial_tail(n, classes):
  k = chance.chance_bound(n, classes)
  p = 1 / classes
  assert _tail(k, n, p) <= chance.CHANCE_P_VALUE < _tail(k - 1, n, p)


def test_bound_on_ten_thousand_ten_class_images_is_a_little_above_ten_percent():
  k = chance.chance_bound(10000, 10)
  assert 0.1 < k / 10000 < 0.11


def test_tiny_samples_never_pass():
  assert chance.chance_bound(3, 2) == 4  # Even 3/3 happens 1 in 8 times by guessing.
  assert not chance.clearly_above_chance(1.0, 3, 2)


def test_verdicts():
  assert not chance.clearly_above_chance(0.1000, 10000, 10)
  assert not chance.clearly_above_chance(0.0960, 10000, 10)
  assert chance.clearly_above_chance(0.1200, 10000, 10)
  assert chance.clearly_above_chance(0.39, 1000, 10)
  with pytest.raises(ValueError):
    chance.chance_bound(0, 10)


def test_too_few_steps_names_the_fix():
  line = chance.too_few_steps_line("student-hybrid", 504, True, 8, 64, 4000)
  assert "504 optimizer steps" in line and "8 epochs x 63 batches of 64" in line
  assert "BatchNorm" in line and "2000" in line and "--epochs to 32" in line
  assert chance.too_few_steps_line("teacher", 590, False, 5, 512, 60000) is None
  assert "--distill_epochs to" in chance.too_few_steps_line("s", 10, False, 1, 10, 100,
                                                             "--distill_epochs")


def test_at_chance_line_names_what_was_measured():
  line = chance.at_chance_line("student-regulated", test_accuracy=0.1, test_images=1000,
                               train_accuracy=0.33, train_images=1000, num_classes=10,
                               steps=504, batch_norm=True, input_scaling="unit")
  for part in ("0.1000 on 1000 images", "0.3300 on 1000 training images", "504 optimizer steps",
               "BatchNorm yes", "input unit", "fits its training images", "--export_at_chance",
               "--student_input"):
    assert part in line, part
  assert "\n" not in line


def test_too_few_images_cannot_tell_and_are_not_called_at_chance():
  assert not chance.can_tell(9, 2) and chance.can_tell(10, 2)
  assert chance.can_tell(1000, 10)
  from tf_srkd.models import input_contract  # pylint: disable=import-outside-toplevel

  # Five images of two classes cannot tell: the better scaling wins, nothing is refused.
  assert not chance.can_tell(5, 2)
  assert input_contract.choose(0.2, 0.8, 5, 2) == "pixels"
  assert input_contract.choose(0.2, 0.0, 5, 2) == "unit"
  assert input_contract.choose(0.2, 0.0, 5, 10) is None  # 5 images of 10 classes can.

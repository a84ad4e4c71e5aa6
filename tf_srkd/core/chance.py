"""Is a model better than guessing, and did its stage take enough steps to tell?

Pure functions (no TensorFlow): an exact one-sided binomial bound on the accuracy a
model that guesses would reach on `n` images, the verdict of a measured accuracy
against it, and the documented minimum of optimizer steps for a stage.

"Clearly above chance" means: a classifier whose true accuracy were chance
(1 / classes) would score at least this many correct answers out of `n` with
probability at most `CHANCE_P_VALUE`. The bound is exact (the binomial tail), not
a normal approximation, so it holds for a few dozen test images as for 10,000.
"""

import math

#: One-sided significance of "clearly above chance": a guessing model passes the bound
#: once in a thousand evaluations.
CHANCE_P_VALUE = 1e-3
#: Optimizer steps below which a stage says it may be too short. Networks with
#: BatchNormalization need more: `keras.applications` use BN momentum 0.99-0.999, and
#: a MobileNetV3Small student at ~500 steps on 4,000 CIFAR-10 images was still at
#: chance with batch statistics (docs/choices.md, "too few steps").
MIN_STEPS = 500
MIN_STEPS_BATCH_NORM = 2000


def _log_binomial_pmf(k: int, n: int, p: float) -> float:
  return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
          + k * math.log(p) + (n - k) * math.log1p(-p))


def chance_bound(n: int, num_classes: int, p_value: float = CHANCE_P_VALUE) -> int:
  """The fewest correct answers out of `n` that a guessing model reaches with
  probability at most `p_value`.

  Args:
    n: images evaluated (> 0).
    num_classes: classes (>= 2); chance is 1 / num_classes.
    p_value: the one-sided tail probability allowed.

  Returns:
    k such that P(X >= k) <= p_value < P(X >= k - 1) for X ~ Binomial(n, 1/classes);
    n + 1 when even n correct answers are not that unlikely (tiny n).
  """
  if n <= 0 or num_classes < 2:
    raise ValueError(f"need n > 0 and num_classes >= 2, got n={n}, num_classes={num_classes}")
  p = 1.0 / num_classes
  tail = 0.0
  for k in range(n, -1, -1):  # P(X >= k), summed from the top.
    tail += math.exp(_log_binomial_pmf(k, n, p))
    if tail > p_value:
      return k + 1
  return 0


def can_tell(n: int, num_classes: int, p_value: float = CHANCE_P_VALUE) -> bool:
  """Whether `n` images can show a model above chance at all (a perfect score passes)."""
  return chance_bound(n, num_classes, p_value) <= n


def clearly_above_chance(accuracy: float, n: int, num_classes: int,
                         p_value: float = CHANCE_P_VALUE) -> bool:
  """Whether `accuracy` measured on `n` images is clearly above 1 / num_classes (always
  False when `can_tell` is: check that first)."""
  correct = int(round(accuracy * n))
  return correct >= chance_bound(n, num_classes, p_value)


def minimum_steps(batch_norm: bool) -> int:
  """The documented minimum of optimizer steps for a stage (see `MIN_STEPS`)."""
  return MIN_STEPS_BATCH_NORM if batch_norm else MIN_STEPS


def too_few_steps_line(stage: str, steps: int, batch_norm: bool, epochs: int,
                       batch_size: int, examples: int, epochs_flag: str = "--epochs"):
  """The one line for a stage with fewer optimizer steps than `minimum_steps`, or None."""
  minimum = minimum_steps(batch_norm)
  if steps >= minimum:
    return None
  per_epoch = max(1, math.ceil(examples / batch_size))
  need_epochs = math.ceil(minimum / per_epoch)
  kind = "a BatchNorm network" if batch_norm else "a network"
  return (f"{stage}: only {steps} optimizer steps ({epochs} epochs x {per_epoch} batches of "
          f"{batch_size}); {kind} usually needs at least {minimum}: raise {epochs_flag} to "
          f"{need_epochs} or lower --batch_size")


def at_chance_line(stage: str, *, test_accuracy: float, test_images: int,
                   train_accuracy: float, train_images: int, num_classes: int, steps: int,
                   batch_norm: bool, input_scaling: str, input_flag: str = "--student_input",
                   exported: bool = True) -> str:
  """The warning for a model whose test accuracy is not clearly above chance."""
  causes = []
  if train_accuracy is not None and clearly_above_chance(train_accuracy, train_images,
                                                              num_classes):
    causes.append("it fits its training images but not the test images (too few steps, "
                  "or a test set unlike the training set)")
  else:
    causes.append("it did not learn (too few steps, a learning rate too high or low, "
                  "or inputs in the wrong range)")
  if batch_norm:
    causes.append("BatchNorm statistics that do not match the weights (keep "
                  "--precise_bn_batches > 0)")
  taken = "[0, 1]" if input_scaling == "unit" else "0..255 pixels"
  causes.append(f"a model that takes other inputs than {taken} (see {input_flag})")
  train = ("-" if train_accuracy is None
           else f"{train_accuracy:.4f} on {train_images} training images")
  return (f"{stage} is at chance: test accuracy {test_accuracy:.4f} on {test_images} images "
          f"is not clearly above 1/{num_classes} = {1 / num_classes:.4f} (binomial bound, "
          f"p={CHANCE_P_VALUE:g}); train accuracy {train}, {steps} optimizer steps, "
          f"BatchNorm {'yes' if batch_norm else 'no'}, input {input_scaling}. Possible causes: "
          + "; ".join(causes) + "."
          + (" Its --export is refused unless --export_at_chance." if exported else ""))

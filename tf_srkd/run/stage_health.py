"""The checks that keep a stage from ending silently useless: too few optimizer steps
(said before training) and a model at chance (said, and marked, after it).

The rules themselves are plain functions in `chance`; this module measures what they
need from a stage and prints their one-line verdicts.
"""

import numpy as np

from tf_srkd.core import chance
from tf_srkd.run import config as config_lib
from tf_srkd.run import console
from tf_srkd.data import arrays as data
from tf_srkd.models import sources as model_sources

#: Training images a model at chance is also scored on (train vs test tells the causes apart).
CHANCE_TRAIN_IMAGES = 1000


def epochs_flag(spec, config) -> str:
  """The flag that sets the stage's epoch count."""
  if spec.role == "teacher":
    pretrained = model_sources.is_pretrained(config.models.teacher_model,
                                             config.models.teacher_weights)
    return "--teacher_finetune_epochs" if pretrained else "--epochs"
  return "--epochs" if config.training.distill_epochs is None else "--distill_epochs"


def say_if_too_few_steps(spec, config, examples: int, batch_norm: bool):
  """One line when the stage takes fewer optimizer steps than `chance.minimum_steps`.

  Args:
    spec: the stage (`stages.StageSpec`).
    config: the run's `Config`.
    examples: the transfer set's size.
    batch_norm: whether the model has BatchNormalization.
  """
  if spec.epochs <= 0:
    return
  steps = spec.epochs * data.steps_per_epoch(examples, config.training.batch_size)
  line = chance.too_few_steps_line(spec.name, steps, batch_norm, spec.epochs,
                                   config.training.batch_size, examples, epochs_flag(spec, config))
  if line:
    console.say(f"note: {line}")


def chance_check(spec, network, model, train, test, config, test_accuracy) -> dict:
  """Marks a model whose test accuracy is not clearly above chance.

  Returns:
    {} when it is clearly above chance; else {"at_chance": True, "train_accuracy_sample":
    its accuracy on a seeded sample of training images}, after one warning line.
  """
  num_classes = config_lib.dataset_spec(config).num_classes
  if not chance.can_tell(test.size, num_classes):
    console.say(f"note: {spec.name}: {test.size} test images cannot show a model above "
                f"chance (1/{num_classes}); not checked")
    return {}
  if chance.clearly_above_chance(test_accuracy, test.size, num_classes):
    return {}
  ids = np.sort(np.random.default_rng([config.seed, 0xc4]).choice(
      train.size, size=min(CHANCE_TRAIN_IMAGES, train.size), replace=False))
  logits = data.predict_logits(network, data.take_rows(train.images, ids),
                               config.training.eval_batch_size)
  train_accuracy = float(np.mean(np.argmax(logits, axis=-1) == train.labels[ids]))
  optimizer = getattr(model, "optimizer", None)
  steps = int(optimizer.iterations.numpy()) if optimizer is not None else 0
  console.say("warning: " + chance.at_chance_line(
      spec.name, test_accuracy=test_accuracy, test_images=test.size,
      train_accuracy=train_accuracy, train_images=len(ids), num_classes=num_classes,
      steps=steps, batch_norm=model_sources.has_batch_norm(network),
      input_scaling=spec.input_scaling, input_flag=f"--{spec.role}_input",
      exported=spec.role == "student"))
  return {"at_chance": True, "train_accuracy_sample": train_accuracy}

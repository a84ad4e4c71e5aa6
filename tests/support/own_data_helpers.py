"""Shared helpers of the own-data tests: generated image folders and tiny configs."""

import os

import numpy as np

from tf_srkd.run import config as config_lib


def make_folder(root, classes=("cat", "dog", "emu"), per_class=6, sizes=((20, 24), (30, 30)),
                grey_every=3, seed=0):
  """A class-per-folder tree of PNG and JPEG files of two sizes, some greyscale.

  Returns:
    The root path as a string.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  for c, name in enumerate(classes):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      h, w = sizes[i % len(sizes)]
      pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      pixels[..., c % 3] = 255  # Something a network can learn.
      image = Image.fromarray(pixels)
      if i % grey_every == grey_every - 1:
        image = image.convert("L")
      ext = "png" if i % 2 else "jpg"
      image.save(os.path.join(root, name, f"img_{i:02d}.{ext}"))
  return str(root)


def tiny_config(tmp_path, name="out", **overrides):
  """A seconds-long run: LeNet-5 pair, 2 epochs, one pass, no tracking."""
  base = dict(output_dir=str(tmp_path / name), epochs=2, distill_epochs=1, batch_size=16,
              eval_batch_size=64, teacher_model="lenet5", student_model="lenet5_half",
              alpha=0.5, distill_alpha=0.5, modes=("hybrid",), mlflow=False, verbose=0)
  base.update(overrides)
  return config_lib.Config.of(**base)


def replaced(config, **changes):
  return config.replace(**changes)

"""Running a .tflite file in LiteRT one image at a time, as the export tests check it."""

import numpy as np


def load(path: str):
  """A LiteRT interpreter for the .tflite at `path`, allocated, one thread."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

  interpreter = Interpreter(model_path=path, num_threads=1)
  interpreter.allocate_tensors()
  return interpreter


def run(interpreter, images):
  """Runs `images` one at a time; dequantized outputs (float32) or the raw float outputs."""
  (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
  scale, zero_point = out["quantization"]
  rows = []
  for i in range(images.shape[0]):
    interpreter.set_tensor(inp["index"], images[i:i + 1])
    interpreter.invoke()
    value = interpreter.get_tensor(out["index"])[0]
    rows.append(scale * (value.astype(np.float32) - zero_point) if scale else value)
  return np.stack(rows)

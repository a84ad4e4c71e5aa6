"""tf_srkd: data-efficient knowledge distillation through self-regulation.

Implements Mishra & Sundaram, "Self Regulated Learning Mechanism for Data
Efficient Knowledge Distillation" (arXiv 2102.07125) with Keras 3 on TensorFlow.

Importing the package is cheap: TensorFlow is imported by the modules that need
it, and `tensorflow_model_optimization` is never imported here (it switches the
whole process to legacy Keras). The public API for your own Keras code
(`SelfRegulated`, `Distiller`, `with_sample_ids`, `significance`,
`sample_efficiency`, `build_model`; see `tf_srkd.api`) is loaded on first use.

Walls (tests/test_import_graph.py keeps them): the import graph has no circles,
lazy imports included; nothing imports an entry point (`main`, `subset`, `report`,
`export.tflite`); the run (data, models, gates, steps, stages, pipeline) logs
through the tracker it is handed and imports neither MLflow nor `export`; bad input
is `errors.ConfigError`, at the bottom of the graph.
"""

__version__ = "0.1.0"

#: Public names -> the module that defines them (loaded lazily, PEP 562).
_PUBLIC = {
    "SelfRegulated": "tf_srkd.api",
    "Distiller": "tf_srkd.api",
    "with_sample_ids": "tf_srkd.api",
    "significance": "tf_srkd.api",
    "sample_efficiency": "tf_srkd.api",
    "build_model": "tf_srkd.model_sources",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
  if name in _PUBLIC:
    import importlib  # pylint: disable=import-outside-toplevel

    module = importlib.import_module(_PUBLIC[name])
    return getattr(module, "build" if name == "build_model" else name)
  raise AttributeError(f"module 'tf_srkd' has no attribute {name!r}")

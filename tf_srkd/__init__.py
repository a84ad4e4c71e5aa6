"""tf_srkd: data-efficient knowledge distillation through self-regulation.

Implements Mishra & Sundaram, "Self Regulated Learning Mechanism for Data
Efficient Knowledge Distillation" (arXiv 2102.07125) with Keras 3 on TensorFlow.

Importing the package is cheap: TensorFlow is imported by the modules that need
it, and `tensorflow_model_optimization` is never imported here (it switches the
whole process to legacy Keras). The public API for your own Keras code
(`SelfRegulated`, `Distiller`, `with_sample_ids`, `significance`,
`sample_efficiency`, `build_model`; see `tf_srkd.api`) is loaded on first use.

Rooms, from the bottom up (each imports only the rooms listed after the arrow,
plus `errors` and `registry`, the package's foundation):

    storage    -> (nothing)        atomic writes, checked reads, run layout, run lock
    core       -> storage          gate math, losses, modes, gated steps, gates, callbacks
    data       -> storage          datasets by name, arrays with sample ids, streaming
    models     -> core, data, storage     model sources, zoo, loading, input contract
    tracking   -> storage          the tracker interface (`base`) and its MLflow version
    run        -> core, data, models, storage, tracking.base    config, stages, pipeline
    reporting  -> tracking, storage       the paper's tables from tracked runs
    api        -> core, data, models      the public Keras API (this package's names)
    cli        -> everything, and `export`: every entry point with its flags

Walls: imports point down only and the graph has no circles, lazy imports
included; `run` and everything below it never import MLflow (the command line
hands the run its tracker); nothing imports `cli` (`tf_srkd.main` and
`export.tflite` only forward `python -m`); of this package only `cli` imports
`export`. tests/project/test_import_graph.py and BUILD's per-room targets enforce them.
"""

__version__ = "0.1.0"

#: Public names -> the module that defines them (loaded lazily, PEP 562).
_PUBLIC = {
    "SelfRegulated": "tf_srkd.api",
    "Distiller": "tf_srkd.api",
    "with_sample_ids": "tf_srkd.api",
    "significance": "tf_srkd.api",
    "sample_efficiency": "tf_srkd.api",
    "build_model": "tf_srkd.models.sources",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
  if name in _PUBLIC:
    import importlib  # pylint: disable=import-outside-toplevel

    module = importlib.import_module(_PUBLIC[name])
    return getattr(module, "build" if name == "build_model" else name)
  raise AttributeError(f"module 'tf_srkd' has no attribute {name!r}")

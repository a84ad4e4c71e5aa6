"""Experiment tracking: the `Tracker` interface (`base`) and its MLflow implementation.

`base` is all the run layer sees; the `mlflow_*` modules (the tracker, one stage's
child run, the store, names, the outage log and its replay, the model registry) and
`plots` are chosen by the command line. Imports only `storage`.
"""

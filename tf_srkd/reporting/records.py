"""The report's input: which tracked runs it reads, as `RunRecord`s.

By default the report reads the runs of one invocation, the latest parent run
of the experiments (`fetch_records`); `parent_runs` names invocations, and
`filter_string` (MLflow's search syntax) selects runs explicitly instead. What
was selected is described by `Selection.description`, which the report prints.
Needs MLflow, not TensorFlow.
"""

import dataclasses
from typing import Optional

from tf_srkd.tracking import mlflow_store
from tf_srkd.errors import ReportError  # pylint: disable=unused-import  (raised here; see errors)

_PARENT_TAG = "mlflow.parentRunId"


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """What the tables need from one teacher or student child run.

  `alpha` is the stage's own rate (a tag: `inf` for the non-regulating
  students); `teacher_alpha` and `distill_alpha` are the invocation's flags.
  """

  run_id: str
  run_name: str
  dataset: str
  role: str
  mode: Optional[str] = None
  alpha: Optional[str] = None
  status: str = "FINISHED"
  start_time: int = 0
  test_accuracy: Optional[float] = None
  zeta: Optional[float] = None
  participations: Optional[int] = None
  epochs: Optional[int] = None
  train_examples: Optional[int] = None
  model: Optional[str] = None
  parent_run_id: Optional[str] = None
  teacher_alpha: Optional[str] = None
  distill_alpha: Optional[str] = None

  @property
  def total(self) -> Optional[int]:
    """Samples available across all epochs (Table VI's second number)."""
    if self.epochs and self.train_examples:
      return self.epochs * self.train_examples
    if self.participations is not None and self.zeta:
      return round(self.participations / self.zeta)
    return None


@dataclasses.dataclass
class Selection:
  """The records a report reads, and how they were chosen (one line)."""

  records: list
  description: str
  parent_run_ids: tuple = ()


def _int_or_none(value):
  try:
    return int(float(value))
  except (TypeError, ValueError):
    return None


def _rate_label(value):
  """A rate param as the tags write it ('0.02', 'inf'); None stays None."""
  try:
    number = float(value)
  except (TypeError, ValueError):
    return value
  return "inf" if number == float("inf") else f"{number:g}"


def record_from_run(run) -> Optional[RunRecord]:
  """A `RunRecord` from an MLflow `Run`; None for runs that are not stages."""
  tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
  if tags.get("role") not in ("teacher", "student") or not tags.get("dataset"):
    return None
  participations = metrics.get("participations")
  return RunRecord(
      run_id=run.info.run_id, run_name=run.info.run_name or "", dataset=tags["dataset"],
      role=tags["role"], mode=tags.get("mode"), alpha=tags.get("alpha"),
      status=run.info.status, start_time=int(run.info.start_time or 0),
      test_accuracy=metrics.get("test_accuracy"), zeta=metrics.get("zeta"),
      participations=None if participations is None else int(round(participations)),
      epochs=_int_or_none(params.get("stage_epochs")),
      train_examples=_int_or_none(params.get("num_train_examples")), model=tags.get("model"),
      parent_run_id=tags.get(_PARENT_TAG), teacher_alpha=_rate_label(params.get("alpha")),
      distill_alpha=_rate_label(params.get("distill_alpha")))


def open_client(uri):
  """An `MlflowClient` for reading `uri`.

  Raises:
    ReportError: `uri` is a sqlite file that does not exist (MLflow would
      silently create an empty database there).
  """
  try:
    return mlflow_store.open_client(uri, must_exist=True)
  except mlflow_store.StoreError as e:
    raise ReportError(str(e)) from e


def _experiments(client, experiment_names):
  if not experiment_names:
    return list(client.search_experiments())
  experiments = []
  for name in experiment_names:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
      known = sorted(e.name for e in client.search_experiments())
      raise ReportError(f"--experiment={name}: no such MLflow experiment at "
                        f"{client.tracking_uri}; known: {', '.join(known) or 'none'}")
    experiments.append(experiment)
  return experiments


def _search(client, ids, filter_string=""):
  runs, token = [], None
  while ids:
    page = client.search_runs(ids, filter_string=filter_string, max_results=1000,
                              page_token=token)
    runs.extend(page)
    token = page.token
    if not token:
      break
  return runs


def _describe_parent(run) -> str:
  return f"parent run `{run.info.run_id}` ({run.info.run_name})"


def fetch_records(client, experiment_names=(), parent_runs=(), filter_string=None) -> Selection:
  """The stage runs the report reads, from the named experiments (all active ones if none).

  Args:
    client: an `MlflowClient`.
    experiment_names: experiments to read (empty: all).
    parent_runs: read the child runs of these parent runs (invocations).
    filter_string: an MLflow search filter over the stage runs (e.g.
      "tags.alpha = '0.02'"); with neither, the runs of the latest parent run
      (by start time) that has finished stage runs.

  Raises:
    ReportError: the store does not answer, an experiment or parent run does not exist.
  """
  uri = client.tracking_uri
  try:
    with mlflow_store.fail_fast_http():
      ids = [e.experiment_id for e in _experiments(client, experiment_names)]
      if parent_runs:
        parents = []
        for run_id in parent_runs:
          try:
            parents.append(client.get_run(run_id))
          except Exception as e:  # pylint: disable=broad-except
            raise ReportError(f"--parent_run={run_id}: no such MLflow run at {uri} "
                              f"({mlflow_store.short_error(e)})") from e
        runs = [r for r in _search(client, ids, filter_string or "")
                if r.data.tags.get(_PARENT_TAG) in set(parent_runs)]
        records = [r for r in map(record_from_run, runs) if r is not None]
        what = ", ".join(_describe_parent(p) for p in parents)
        if filter_string:
          what += f" filtered by `{filter_string}`"
        return Selection(records, f"Runs of {what}.", tuple(parent_runs))
      runs = _search(client, ids, filter_string or "")
  except ReportError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ReportError(mlflow_store.unreachable(
        uri, e, "check --mlflow_tracking_uri (or MLFLOW_TRACKING_URI)")) from e
  records = [r for r in map(record_from_run, runs) if r is not None]
  if filter_string:
    parents = tuple(sorted({r.parent_run_id for r in records if r.parent_run_id}))
    return Selection(records, f"Runs matching `{filter_string}` (from {len(parents)} parent "
                     "runs).", parents)
  return _latest_invocation(runs, records)


def _latest_invocation(runs, records) -> Selection:
  """The records of the latest parent run with a finished stage run."""
  finished = {r.parent_run_id for r in records
              if r.status == "FINISHED" and r.parent_run_id is not None}
  parents = [r for r in runs if r.info.run_id in finished]
  if not parents:
    return Selection([], "No parent run with finished stage runs found.")
  latest = max(parents, key=lambda r: (int(r.info.start_time or 0), r.info.run_id))
  chosen = [r for r in records if r.parent_run_id == latest.info.run_id]
  return Selection(chosen, f"Runs of the latest {_describe_parent(latest)}; "
                   "`--parent_run=ID` or `--filter` chooses others.", (latest.info.run_id,))

"""The paper's tables, regenerated from the MLflow runs, as Markdown (+ one PNG).

  python -m tf_srkd.report --experiment=mnist --output=reports/mnist.md

reads the finished teacher and student child runs of the given experiments
(default: every active experiment) from the tracking store and writes

  Table I      teacher test accuracy per alpha, per dataset
  Tables III-V student test accuracy per distillation method, one per dataset
  Table VI     sample efficiency zeta of the regulated and hybrid students,
               as "participations/total (percent)"

each with the paper's number in the adjacent column, a list of the runs used,
and a combined figure (`--figure`, by default next to `--output` as .png).
Where several runs fill the same cell, the latest finished one is used. Cells
without a run show "—"; datasets without runs are left out; so the report
works on whatever subset of runs exists.

Library use: `fetch_records(client, names)` -> `build_tables(records)` ->
`render_markdown(tables)` / `plots.report_figure(...)`; `format_*` and
`pick_latest` are pure. This module needs MLflow and matplotlib, not
TensorFlow.
"""

import dataclasses
import os
import sys
from typing import Optional

from absl import flags

from tf_srkd import mlflow_store
from tf_srkd import paper as paper_lib

MISSING = "—"


class ReportError(RuntimeError):
  """The runs cannot be read (unreachable store, unknown experiment)."""


# -- records ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """What the tables need from one teacher or student child run."""

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

  @property
  def total(self) -> Optional[int]:
    """Samples available across all epochs (Table VI's second number)."""
    if self.epochs and self.train_examples:
      return self.epochs * self.train_examples
    if self.participations is not None and self.zeta:
      return round(self.participations / self.zeta)
    return None


def _int_or_none(value):
  try:
    return int(float(value))
  except (TypeError, ValueError):
    return None


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
      train_examples=_int_or_none(params.get("num_train_examples")), model=tags.get("model"))


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


def fetch_records(client, experiment_names=()) -> list:
  """The stage runs of the named experiments (all active ones if none named).

  Raises:
    ReportError: the store does not answer, or an experiment does not exist.
  """
  uri = client.tracking_uri
  try:
    with mlflow_store.fail_fast_http():
      if experiment_names:
        experiments = []
        for name in experiment_names:
          experiment = client.get_experiment_by_name(name)
          if experiment is None:
            known = sorted(e.name for e in client.search_experiments())
            raise ReportError(f"--experiment={name}: no such MLflow experiment at "
                              f"{uri}; known: {', '.join(known) or 'none'}")
          experiments.append(experiment)
      else:
        experiments = list(client.search_experiments())
  except ReportError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ReportError(mlflow_store.unreachable(
        uri, e, "check --mlflow_tracking_uri (or MLFLOW_TRACKING_URI)")) from e
  ids = [e.experiment_id for e in experiments]
  records, token = [], None
  while ids:
    page = client.search_runs(ids, max_results=1000, page_token=token)
    records.extend(r for r in map(record_from_run, page) if r is not None)
    token = page.token
    if not token:
      break
  return records


# -- pure table logic ---------------------------------------------------------------


def alpha_sort_key(label):
  """Numeric order of alpha labels; 'inf' last, unparsable labels after it."""
  try:
    return (0, float(label))
  except (TypeError, ValueError):
    return (1, str(label))


def pick_latest(records, key) -> dict:
  """{key(record): the latest finished record with a test accuracy}.

  Records for which `key` returns None are skipped. Ties in start time go to
  the larger run id, so the choice is deterministic.
  """
  chosen = {}
  for record in records:
    if record.status != "FINISHED" or record.test_accuracy is None:
      continue
    k = key(record)
    if k is None:
      continue
    best = chosen.get(k)
    if best is None or (record.start_time, record.run_id) > (best.start_time, best.run_id):
      chosen[k] = record
  return chosen


def format_accuracy(value) -> str:
  return MISSING if value is None else f"{value:.4f}"


def format_zeta(participations, total) -> str:
  """Table VI's cell: '85528/12000000 (0.71%)'."""
  if participations is None or not total:
    return MISSING
  return f"{int(participations)}/{int(total)} ({100.0 * participations / total:.2f}%)"


def _percent(participations, total):
  return None if participations is None or not total else 100.0 * participations / total


def _title(dataset):
  return paper_lib.DATASET_TITLES.get(dataset, dataset)


def _dataset_order(names):
  known = [d for d in paper_lib.DATASET_TITLES if d in names]
  return known + sorted(n for n in names if n not in paper_lib.DATASET_TITLES)


@dataclasses.dataclass
class Tables:
  """Everything the Markdown and the figure show, as data."""

  #: {dataset: [(alpha label, run record or None, paper accuracy or None)]}
  table1: dict
  #: {dataset: [(row label, run record or None, paper accuracy or None)]}
  students: dict
  #: {dataset: {mode: (run record or None, (paper participations, paper total) or None)}}
  table6: dict


def build_tables(records, paper=None) -> Tables:
  """Picks the runs for every cell and pairs them with the paper's numbers."""
  paper = paper or paper_lib.PAPER_TABLES
  teachers = pick_latest([r for r in records if r.role == "teacher"],
                         lambda r: (r.dataset, r.alpha) if r.alpha else None)
  students = pick_latest([r for r in records if r.role == "student"],
                         lambda r: (r.dataset, r.mode) if r.mode else None)

  table1 = {}
  paper1 = paper["table_1_teacher_accuracy_by_alpha"]
  for dataset in _dataset_order({d for d, _ in teachers}):
    paper_row = dict(zip(paper1["alpha"], paper1.get(dataset, ())))
    alphas = set(paper_row) | {a for d, a in teachers if d == dataset}
    table1[dataset] = [(a, teachers.get((dataset, a)), paper_row.get(a))
                       for a in sorted(alphas, key=alpha_sort_key)]

  table35 = {}
  paper35 = paper["tables_3_to_5_student_test_accuracy"]
  for dataset in _dataset_order({d for d, _ in students}):
    paper_row = paper35.get(dataset, {})
    rows = []
    ours_modes = {m for d, m in students if d == dataset}
    for key, label, mode in paper_lib.METHODS:
      run = students.get((dataset, mode)) if mode else None
      if run is not None or key in paper_row:
        rows.append((label, run, paper_row.get(key)))
    covered = {m for _, _, m in paper_lib.METHODS if m}
    for mode in sorted(ours_modes - covered):
      rows.append((mode, students[(dataset, mode)], None))
    table35[dataset] = rows

  table6 = {}
  paper6 = paper["table_6_sample_efficiency"]
  for dataset in _dataset_order({d for d, m in students if m in paper_lib.EFFICIENCY_MODES}):
    table6[dataset] = {
        mode: (students.get((dataset, mode)),
               tuple(paper6[dataset][mode]) if mode in paper6.get(dataset, {}) else None)
        for mode in paper_lib.EFFICIENCY_MODES}
  return Tables(table1, table35, table6)


def _markdown_table(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def _accuracy(run):
  return format_accuracy(None if run is None else run.test_accuracy)


def _zeta_cell(run):
  return MISSING if run is None else format_zeta(run.participations, run.total)


def render_markdown(tables: Tables, title="SRKD: the paper's tables from the MLflow runs",
                    sources="", figure=None) -> str:
  """The report as Markdown: Table I, Tables III-V, Table VI, the runs used."""
  out = [f"# {title}", ""]
  if sources:
    out += [sources, ""]
  out += ["Each table pairs the tracked runs (latest finished run per cell) with the paper's "
          "number (Mishra & Sundaram, arXiv 2102.07125v2). Runs trained for fewer epochs or on "
          "fewer examples than the paper's Table II are not expected to match it; the runs used "
          "are listed at the end.", ""]
  if figure:
    out += [f"![The tables as charts]({figure})", ""]

  out += ["## Table I: teacher test accuracy per α", ""]
  if tables.table1:
    datasets_ = list(tables.table1)
    header = ["α"] + [h for d in datasets_ for h in (f"{_title(d)} (runs)", f"{_title(d)} (paper)")]
    alphas = sorted({a for rows in tables.table1.values() for a, _, _ in rows}, key=alpha_sort_key)
    cells = {(d, a): (run, p) for d, rows in tables.table1.items() for a, run, p in rows}
    rows = []
    for alpha in alphas:
      row = [alpha]
      for d in datasets_:
        run, p = cells.get((d, alpha), (None, None))
        row += [_accuracy(run), format_accuracy(p)]
      rows.append(row)
    out += [_markdown_table(header, rows), ""]
  else:
    out += ["_No finished teacher runs._", ""]

  for dataset, rows in tables.students.items():
    number = paper_lib.STUDENT_TABLES.get(dataset, "")
    heading = f"Table {number}: " if number else ""
    out += [f"## {heading}student test accuracy on {_title(dataset)}", ""]
    out += [_markdown_table(["Method", "Test accuracy (runs)", "Test accuracy (paper)"],
                            [[label, _accuracy(run), format_accuracy(p)]
                             for label, run, p in rows]), ""]
  if not tables.students:
    out += ["## Tables III–V: student test accuracy", "", "_No finished student runs._", ""]

  out += ["## Table VI: sample efficiency ζ (participations/total (percent))", ""]
  if tables.table6:
    header = ["Dataset"] + [h for m in paper_lib.EFFICIENCY_MODES
                            for h in (f"{m.capitalize()} (runs)", f"{m.capitalize()} (paper)")]
    rows = []
    for dataset, cells in tables.table6.items():
      row = [_title(dataset)]
      for mode in paper_lib.EFFICIENCY_MODES:
        run, p = cells[mode]
        row += [_zeta_cell(run), MISSING if p is None else format_zeta(*p)]
      rows.append(row)
    out += [_markdown_table(header, rows), ""]
  else:
    out += ["_No finished regulated or hybrid student runs._", ""]

  used = []
  for dataset, rows in tables.table1.items():
    used += [("I", dataset, f"teacher α={a}", run) for a, run, _ in rows if run is not None]
  for dataset, rows in tables.students.items():
    used += [(paper_lib.STUDENT_TABLES.get(dataset, ""), dataset, label, run)
             for label, run, _ in rows if run is not None]
  if used:
    out += ["## Runs used", ""]
    out += [_markdown_table(
        ["Table", "Dataset", "Cell", "Run", "Run id", "Model", "Epochs", "Training examples"],
        [[t, _title(d), cell, run.run_name, f"`{run.run_id}`", run.model or MISSING,
          str(run.epochs) if run.epochs else MISSING,
          str(run.train_examples) if run.train_examples else MISSING]
         for t, d, cell, run in used]), ""]
  return "\n".join(out)


def figure_data(tables: Tables):
  """The `plots.report_figure` arguments for `tables`."""

  def acc(run):
    return None if run is None else run.test_accuracy

  alphas = sorted({a for rows in tables.table1.values() for a, _, _ in rows}, key=alpha_sort_key)
  table1 = {}
  for d, rows in tables.table1.items():
    cells = {a: (acc(run), p) for a, run, p in rows}
    table1[_title(d)] = [(a,) + cells.get(a, (None, None)) for a in alphas]
  students = [(f"{_title(d)}: {label}", acc(run), p)
              for d, rows in tables.students.items() for label, run, p in rows
              if run is not None]
  table6 = []
  for d, cells in tables.table6.items():
    for mode in paper_lib.EFFICIENCY_MODES:
      run, p = cells[mode]
      ours = None if run is None else _percent(run.participations, run.total)
      table6.append((f"{_title(d)}: {mode}", ours, None if p is None else _percent(*p)))
  return table1, students, table6


def write_report(client, experiment_names=(), output=None, figure=None) -> str:
  """Fetches the runs, writes `output` (Markdown) and `figure` (PNG); returns the Markdown."""
  from tf_srkd import plots  # pylint: disable=import-outside-toplevel

  records = fetch_records(client, experiment_names)
  tables = build_tables(records)
  figure_ref = None
  if figure:
    os.makedirs(os.path.dirname(os.path.abspath(figure)), exist_ok=True)
    plots.report_figure(*figure_data(tables)).savefig(figure, dpi=120)
    base = os.path.dirname(os.path.abspath(output)) if output else os.getcwd()
    figure_ref = os.path.relpath(os.path.abspath(figure), base)
  names = ", ".join(experiment_names) if experiment_names else "all experiments"
  finished = sum(r.status == "FINISHED" for r in records)
  sources = (f"Experiments: {names}; tracking URI: `{client.tracking_uri}`; "
             f"{finished} finished teacher/student runs found.")
  markdown = render_markdown(tables, sources=sources, figure=figure_ref)
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
      f.write(markdown)
  return markdown


# -- command line -------------------------------------------------------------------


def define_flags(flag_values=flags.FLAGS):
  """The report's flags (defined only when run as a program, to keep imports clean)."""
  flags.DEFINE_list("experiment", [], "MLflow experiment name(s) to read (default: all).",
                    flag_values=flag_values)
  flags.DEFINE_string("mlflow_tracking_uri", None, "MLflow tracking URI (default: "
                      "$MLFLOW_TRACKING_URI, else MLflow's own default).", flag_values=flag_values)
  flags.DEFINE_string("output", None, "Write the Markdown here (default: stdout).",
                      flag_values=flag_values)
  flags.DEFINE_string("figure", None, "Write the combined PNG here (default: --output with "
                      ".png instead of .md; none without --output).", flag_values=flag_values)


def main(argv):
  del argv
  values = flags.FLAGS
  figure = values.figure
  if figure is None and values.output:
    figure = os.path.splitext(values.output)[0] + ".png"
  try:
    client = open_client(mlflow_store.resolve_tracking_uri(values.mlflow_tracking_uri))
    markdown = write_report(client, values.experiment, values.output, figure)
  except ReportError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if values.output:
    print(f"wrote {values.output}" + (f" and {figure}" if figure else ""))
  else:
    print(markdown)


def run_main():
  """The `tf-srkd-report` console script (`python -m tf_srkd.report`)."""
  from tf_srkd import cli  # pylint: disable=import-outside-toplevel

  cli.quiet_environment()
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run_main()

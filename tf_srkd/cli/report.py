"""The paper's tables, regenerated from the MLflow runs, as Markdown (+ one PNG).

  python -m tf_srkd.cli.report --experiment=mnist --output=reports/mnist.md

reads the finished teacher and student child runs of one invocation (by
default the latest parent run of the given experiments; `--parent_run=ID[,ID]`
names invocations, `--filter="tags.alpha = '0.02'"` selects runs explicitly)
and writes

  Table I      teacher test accuracy per alpha, per dataset
  Tables III-V student test accuracy per distillation method, one per dataset
  Table VI     sample efficiency zeta of the regulated and hybrid students,
               as "participations/total (percent)"

each with the paper's number in the adjacent column, which runs were selected
and how, a list of the runs used, and a combined figure (`--figure`, by default
next to `--output` as .png) whose footer names the run ids it shows. Where
several runs fill the same cell, the latest finished one is used. Cells whose
runs differ from the rest of their table in dataset, epochs, training examples
or α are marked ⚠ and listed (`--mixed=refuse`: exit 2 instead). Cells without
a run show "—"; datasets without runs are left out.

Library use: `fetch_records(client, names)` -> `build_tables(selection.records)`
-> `render_markdown(tables)` / `plots.report_figure(*figure_data(tables))`
(`reporting.records`, `reporting.tables`, `reporting.markdown`). Needs MLflow and
matplotlib, not TensorFlow.
"""

import logging
import os
import textwrap

from absl import flags

from tf_srkd.cli import environment as cli
from tf_srkd.tracking import mlflow_store
# The report's library API, from the modules that implement it.
# pylint: disable=unused-import
from tf_srkd.reporting.markdown import (MISSING, cells_used, figure_data, format_accuracy,
                                     format_zeta, mixed_lines, render_markdown)
from tf_srkd.reporting.records import (ReportError, RunRecord, Selection, fetch_records,
                                    open_client, record_from_run)
from tf_srkd.reporting.tables import (Tables, alpha_sort_key, build_tables, mixed_runs,
                                   pick_latest)
# pylint: enable=unused-import

MIXED_POLICIES = ("warn", "refuse")


def figure_footer(selection: Selection, tables: Tables) -> str:
  """The figure's footer: the parent run(s) and every run id it shows."""
  run_ids = sorted({run.run_id for _, _, _, run in cells_used(tables)})
  parents = ", ".join(selection.parent_run_ids) or "none"
  text = f"parent run(s): {parents}; runs: {' '.join(run_ids) or 'none'}"
  return "\n".join(textwrap.wrap(text, 190))


def write_report(client, experiment_names=(), output=None, figure=None, parent_runs=(),
                 filter_string=None, mixed="warn") -> str:
  """Fetches the runs, writes `output` (Markdown) and `figure` (PNG); returns the Markdown.

  Args:
    client: an `MlflowClient`.
    experiment_names: experiments to read (empty: all).
    output, figure: where to write the Markdown and the PNG (None: not written).
    parent_runs, filter_string: which runs (see `reporting.records.fetch_records`).
    mixed: "warn" (mark the cells of runs that differ from their table) or
      "refuse" (raise instead, before anything is written).

  Raises:
    ReportError: the runs cannot be read, or they mix settings and `mixed="refuse"`.
  """
  from tf_srkd.tracking import plots  # pylint: disable=import-outside-toplevel

  selection = fetch_records(client, experiment_names, parent_runs, filter_string)
  records = selection.records
  tables = build_tables(records)
  if tables.mixed and mixed == "refuse":
    raise ReportError("the selected runs differ in settings within a table (--mixed=refuse): "
                      + "; ".join(mixed_lines(tables)))
  for line in mixed_lines(tables):
    logging.warning("mixed runs: %s", line)
  figure_ref = None
  if figure:
    os.makedirs(os.path.dirname(os.path.abspath(figure)), exist_ok=True)
    drawn = plots.report_figure(*figure_data(tables))
    footer = figure_footer(selection, tables)
    drawn.supxlabel(footer, fontsize=7, color="0.35")
    drawn.savefig(figure, dpi=120, metadata={"Description": footer})
    base = os.path.dirname(os.path.abspath(output)) if output else os.getcwd()
    figure_ref = os.path.relpath(os.path.abspath(figure), base)
  names = ", ".join(experiment_names) if experiment_names else "all experiments"
  finished = sum(r.status == "FINISHED" for r in records)
  sources = (f"{selection.description}\n\nExperiments: {names}; tracking URI: "
             f"`{client.tracking_uri}`; {finished} finished teacher/student runs selected.")
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
  flags.DEFINE_list("parent_run", [], "Read the runs of these parent runs (invocations; "
                    "default: the latest one with finished stages).", flag_values=flag_values)
  flags.DEFINE_string("filter", None, "An MLflow search filter selecting the stage runs "
                      "instead (e.g. \"tags.role = 'teacher'\" for an α sweep).",
                      flag_values=flag_values)
  flags.DEFINE_enum("mixed", "warn", list(MIXED_POLICIES), "Runs of one table that differ in "
                    "dataset, epochs, training examples or α: warn (mark each cell) or refuse "
                    "(exit 2).", flag_values=flag_values)
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
    markdown = write_report(client, values.experiment, values.output, figure,
                            values.parent_run, values.filter, values.mixed)
  except ReportError as e:
    cli.fail(e)
  if values.output:
    print(f"wrote {values.output}" + (f" and {figure}" if figure else ""))
  else:
    print(markdown)


def run_main():
  """The `tf-srkd-report` console script (`python -m tf_srkd.cli.report`)."""
  cli.run_program(main, define_flags)


if __name__ == "__main__":
  run_main()

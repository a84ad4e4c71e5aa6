"""The report as Markdown, and the data of its figure, from `tables.Tables`.

Cells filled by a run that differs from the rest of its table
(`Tables.mixed`) carry `MIXED_MARK`, here and in the figure's labels, and the
report lists each such cell with the reason before the tables.
"""

from tf_srkd.reporting import paper as paper_lib
from tf_srkd.reporting.tables import Tables, alpha_sort_key, dataset_title

MISSING = "—"
MIXED_MARK = "⚠"


def format_accuracy(value) -> str:
  return MISSING if value is None else f"{value:.4f}"


def format_zeta(participations, total) -> str:
  """Table VI's cell: '85528/12000000 (0.71%)'."""
  if participations is None or not total:
    return MISSING
  return f"{int(participations)}/{int(total)} ({100.0 * participations / total:.2f}%)"


def _percent(participations, total):
  return None if participations is None or not total else 100.0 * participations / total


def _markdown_table(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def _mark(run, mixed):
  return f" {MIXED_MARK}" if run is not None and run.run_id in mixed else ""


def _accuracy(run, mixed=()):
  return format_accuracy(None if run is None else run.test_accuracy) + _mark(run, mixed)


def _zeta_cell(run, mixed=()):
  if run is None:
    return MISSING
  return format_zeta(run.participations, run.total) + _mark(run, mixed)


def cells_used(tables: Tables) -> list:
  """[(table number, dataset, cell label, run)] of every cell a run fills."""
  used = []
  for dataset, rows in tables.table1.items():
    used += [("I", dataset, f"teacher α={a}", run) for a, run, _ in rows if run is not None]
  for dataset, rows in tables.students.items():
    used += [(paper_lib.STUDENT_TABLES.get(dataset, ""), dataset, label, run)
             for label, run, _ in rows if run is not None]
  for dataset, cells in tables.table6.items():
    used += [("VI", dataset, f"ζ {mode}", run) for mode, (run, _) in cells.items()
             if run is not None]
  return used


def mixed_lines(tables: Tables) -> list:
  """One line per cell filled by a run that differs from the rest of its table."""
  return [f"Table {t} ({dataset_title(d)}), {cell}: run `{run.run_id}` ({run.run_name}) "
          f"differs: {tables.mixed[run.run_id]}"
          for t, d, cell, run in cells_used(tables) if run.run_id in tables.mixed]


def render_markdown(tables: Tables, title="SRKD: the paper's tables from the MLflow runs",
                    sources="", figure=None) -> str:
  """The report as Markdown: Table I, Tables III-V, Table VI, the runs used."""
  out = [f"# {title}", ""]
  if sources:
    out += [sources, ""]
  mixed = tables.mixed
  if mixed:
    out += [f"**{MIXED_MARK} Cells marked {MIXED_MARK} come from runs whose settings differ from "
            "the rest of their table; their numbers are not comparable:**", ""]
    out += [f"- {line}" for line in mixed_lines(tables)] + [""]
  out += ["Each table pairs the selected runs (latest finished run per cell) with the paper's "
          "number (Mishra & Sundaram, arXiv 2102.07125v2). Runs trained for fewer epochs or on "
          "fewer examples than the paper's Table II are not expected to match it; the runs used "
          "are listed at the end.", ""]
  if figure:
    out += [f"![The tables as charts]({figure})", ""]

  out += ["## Table I: teacher test accuracy per α", ""]
  if tables.table1:
    datasets_ = list(tables.table1)
    header = ["α"] + [h for d in datasets_
                      for h in (f"{dataset_title(d)} (runs)", f"{dataset_title(d)} (paper)")]
    alphas = sorted({a for rows in tables.table1.values() for a, _, _ in rows}, key=alpha_sort_key)
    cells = {(d, a): (run, p) for d, rows in tables.table1.items() for a, run, p in rows}
    rows = []
    for alpha in alphas:
      row = [alpha]
      for d in datasets_:
        run, p = cells.get((d, alpha), (None, None))
        row += [_accuracy(run, mixed), format_accuracy(p)]
      rows.append(row)
    out += [_markdown_table(header, rows), ""]
  else:
    out += ["_No finished teacher runs._", ""]

  for dataset, rows in tables.students.items():
    number = paper_lib.STUDENT_TABLES.get(dataset, "")
    heading = f"Table {number}: " if number else ""
    out += [f"## {heading}student test accuracy on {dataset_title(dataset)}", ""]
    out += [_markdown_table(["Method", "Test accuracy (runs)", "Test accuracy (paper)"],
                            [[label, _accuracy(run, mixed), format_accuracy(p)]
                             for label, run, p in rows]), ""]
  if not tables.students:
    out += ["## Tables III–V: student test accuracy", "", "_No finished student runs._", ""]

  out += ["## Table VI: sample efficiency ζ (participations/total (percent))", ""]
  if tables.table6:
    header = ["Dataset"] + [h for m in paper_lib.EFFICIENCY_MODES
                            for h in (f"{m.capitalize()} (runs)", f"{m.capitalize()} (paper)")]
    rows = []
    for dataset, cells in tables.table6.items():
      row = [dataset_title(dataset)]
      for mode in paper_lib.EFFICIENCY_MODES:
        run, p = cells[mode]
        row += [_zeta_cell(run, mixed), MISSING if p is None else format_zeta(*p)]
      rows.append(row)
    out += [_markdown_table(header, rows), ""]
  else:
    out += ["_No finished regulated or hybrid student runs._", ""]

  used = [(t, d, cell, run) for t, d, cell, run in cells_used(tables) if t != "VI"]
  if used:
    out += ["## Runs used", ""]
    out += [_markdown_table(
        ["Table", "Dataset", "Cell", "Run", "Run id", "Model", "Epochs", "Training examples"],
        [[t, dataset_title(d), cell, run.run_name, f"`{run.run_id}`", run.model or MISSING,
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
    table1[dataset_title(d)] = [(a,) + cells.get(a, (None, None)) for a in alphas]
  students = [(f"{dataset_title(d)}: {label}{_mark(run, tables.mixed)}", acc(run), p)
              for d, rows in tables.students.items() for label, run, p in rows
              if run is not None]
  table6 = []
  for d, cells in tables.table6.items():
    for mode in paper_lib.EFFICIENCY_MODES:
      run, p = cells[mode]
      ours = None if run is None else _percent(run.participations, run.total)
      table6.append((f"{dataset_title(d)}: {mode}{_mark(run, tables.mixed)}", ours,
                     None if p is None else _percent(*p)))
  return table1, students, table6

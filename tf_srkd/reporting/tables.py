"""The report's tables as data: which run fills each cell, and which cells mix runs.

Pure functions over `records.RunRecord`s. Where several runs could fill
one cell, the latest finished one does (`pick_latest`). Runs that fill the
cells of one table must agree in the settings that decide their numbers
(`TEACHER_SETTINGS` for Table I, whose rows are the teacher's α;
`STUDENT_SETTINGS` for the student tables); a run that does not is listed in
`Tables.mixed` with the reason, and every cell it fills is marked.
"""

import collections
import dataclasses

from tf_srkd.reporting import paper as paper_lib

#: What the runs of Table I (per dataset) must agree in; α is its rows.
TEACHER_SETTINGS = ("dataset", "epochs", "train_examples")
#: What the runs of one dataset's student tables (III-V, VI) must agree in.
STUDENT_SETTINGS = ("dataset", "epochs", "train_examples", "teacher_alpha", "distill_alpha")
SETTING_LABELS = {"dataset": "dataset", "epochs": "epochs", "train_examples": "train examples",
                  "teacher_alpha": "α", "distill_alpha": "distill α"}


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


def dataset_title(dataset):
  """The paper's name of a dataset ('Fashion-MNIST'); unknown ones as they are."""
  return paper_lib.DATASET_TITLES.get(dataset, dataset)


def dataset_order(names):
  """The paper's datasets in its order, then any others sorted."""
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
  #: {run id: why it differs from the other runs of its table}; empty when nothing mixes.
  mixed: dict = dataclasses.field(default_factory=dict)


def build_tables(records, paper=None) -> Tables:
  """Picks the runs for every cell and pairs them with the paper's numbers."""
  paper = paper or paper_lib.PAPER_TABLES
  teachers = pick_latest([r for r in records if r.role == "teacher"],
                         lambda r: (r.dataset, r.alpha) if r.alpha else None)
  students = pick_latest([r for r in records if r.role == "student"],
                         lambda r: (r.dataset, r.mode) if r.mode else None)

  table1 = {}
  paper1 = paper["table_1_teacher_accuracy_by_alpha"]
  for dataset in dataset_order({d for d, _ in teachers}):
    paper_row = dict(zip(paper1["alpha"], paper1.get(dataset, ())))
    alphas = set(paper_row) | {a for d, a in teachers if d == dataset}
    table1[dataset] = [(a, teachers.get((dataset, a)), paper_row.get(a))
                       for a in sorted(alphas, key=alpha_sort_key)]

  table35 = {}
  paper35 = paper["tables_3_to_5_student_test_accuracy"]
  for dataset in dataset_order({d for d, _ in students}):
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
  for dataset in dataset_order({d for d, m in students if m in paper_lib.EFFICIENCY_MODES}):
    table6[dataset] = {
        mode: (students.get((dataset, mode)),
               tuple(paper6[dataset][mode]) if mode in paper6.get(dataset, {}) else None)
        for mode in paper_lib.EFFICIENCY_MODES}
  mixed = {}
  for dataset in table1:
    mixed.update(mixed_runs([r for (d, _), r in teachers.items() if d == dataset],
                            TEACHER_SETTINGS))
  for dataset in table35:
    mixed.update(mixed_runs([r for (d, _), r in students.items() if d == dataset],
                            STUDENT_SETTINGS))
  return Tables(table1, table35, table6, mixed)


def mixed_runs(runs, fields) -> dict:
  """{run id: reason} for the runs whose `fields` differ from the table's.

  Per field, the table's value is the most common known one among `runs`
  (ties: the latest run's); an unknown value (None) is not compared. The
  reason names each differing setting, e.g.
  "epochs 3 (the others: 6), α 0.04 (the others: 0.02)".
  """
  reasons = collections.defaultdict(list)
  for field in fields:
    known = [(r, getattr(r, field)) for r in runs if getattr(r, field) is not None]
    counts = collections.Counter(v for _, v in known)
    if len(counts) < 2:
      continue
    latest = {}
    for r, v in known:
      latest[v] = max(latest.get(v, (0, "")), (r.start_time, r.run_id))
    reference = max(counts, key=lambda v: (counts[v], latest[v]))
    for r, v in known:
      if v != reference:
        reasons[r.run_id].append(f"{SETTING_LABELS[field]} {v} (the others: {reference})")
  return {run_id: ", ".join(parts) for run_id, parts in reasons.items()}

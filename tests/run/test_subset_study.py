"""The subset study's pure parts: epochs per fraction, the table, the curve."""


from tf_srkd.run import config as config_lib
from tf_srkd.run import subset_study


def _plan(schedule, distill_epochs=4):
  config = config_lib.Config.of(dataset="mnist", distill_epochs=distill_epochs)
  return subset_study.Plan(config, (0.1, 1.0), ("top", "random"), subset_study.METHODS, schedule)


def test_epochs_per_fraction_follow_the_schedule():
  assert [_plan("epochs").epochs_at(f) for f in (0.1, 0.3, 1.0)] == [4, 4, 4]
  # `steps`: as many optimizer steps as a full-data student (rounded up).
  assert [_plan("steps").epochs_at(f) for f in (0.1, 0.3, 1.0)] == [40, 14, 4]


def test_the_table_has_a_line_per_method_and_ranking_and_marks_missing_cells():
  rows = [dict(method="kd", ranking="top", fraction=0.1, test_accuracy=0.9),
          dict(method="kd", ranking="top", fraction=1.0, test_accuracy=0.99),
          dict(method="supervised", ranking="random", fraction=0.1, test_accuracy=0.5)]
  table = subset_study.markdown_table(rows, (0.1, 1.0), ("top", "random")).splitlines()
  assert table[0] == "| method | subset | f=0.1 | f=1 |"
  assert "| kd | top | 0.9000 | 0.9900 |" in table
  assert "| kd | random | — | — |" in table
  assert "| supervised | random | 0.5000 | — |" in table
  assert len(table) == 2 + 4


def test_the_curve_has_one_panel_per_method_present():
  rows = [dict(method="kd", ranking=r, fraction=f, test_accuracy=0.5 + f / 2)
          for r in ("top", "bottom") for f in (0.1, 1.0)]
  figure = subset_study.curve_figure(rows, "mnist")
  [axes] = figure.axes
  assert axes.get_title() == "mnist: kd" and len(axes.get_lines()) == 2

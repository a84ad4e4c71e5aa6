"""The report: exact table logic on hand-made records, then on real tracked runs.

The module fixture makes a small set of real runs on a live `mlflow server`
(127.0.0.1, sqlite backend): one pipeline run (teacher at alpha=0.02 +
conventional/regulated/hybrid students, 2 epochs) and, later, one teacher-only
run at alpha=0.04 and 1 epoch through flags/mnist_alpha_sweep.flags: two
invocations, so the report's choice of runs and its warnings on mixed settings
are checked, and its numbers against their summary.json files.
"""

import dataclasses
import json
import os
import subprocess
import sys
import types

import mlflow
import numpy as np
import pytest

from tf_srkd.run import config as config_lib
from tf_srkd.data import datasets
from tf_srkd.storage import io_utils
from tf_srkd.tracking import plots
from tf_srkd.reporting import paper
from tf_srkd.cli import report
from tf_srkd.reporting import tables as report_tables
from tests.support.mlflow_server import Server

# Under pytest-xdist (`-n`) this file's tests stay on one worker: they share real runs on a
# live MLflow server that each worker would otherwise build again.
pytestmark = pytest.mark.xdist_group("test_report")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_PAPER_TABLES = os.path.join(os.path.dirname(ROOT), "shared", "paper", "paper_tables.json")
EXPERIMENT = "report_test"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _record(run_id, role="student", dataset="mnist", start_time=1, **kwargs):
  return report.RunRecord(run_id=run_id, run_name=run_id, dataset=dataset, role=role,
                          start_time=start_time, **kwargs)


# -- pure logic -----------------------------------------------------------------------


def test_format_zeta_matches_the_paper():
  assert report.format_zeta(85528, 12000000) == "85528/12000000 (0.71%)"
  assert report.format_zeta(250245, 12000000) == "250245/12000000 (2.09%)"
  assert report.format_zeta(4553084, 50000000) == "4553084/50000000 (9.11%)"
  assert report.format_zeta(512, 512) == "512/512 (100.00%)"
  assert report.format_zeta(None, 100) == "—"
  assert report.format_zeta(5, 0) == "—"


def test_format_accuracy():
  assert report.format_accuracy(0.9899) == "0.9899"
  assert report.format_accuracy(0.831) == "0.8310"
  assert report.format_accuracy(None) == "—"


def test_alpha_order_puts_inf_last():
  labels = ["inf", "0.02", "0.006", "0.1", "0.01"]
  assert sorted(labels, key=report.alpha_sort_key) == ["0.006", "0.01", "0.02", "0.1", "inf"]


def test_pick_latest_takes_the_newest_finished_run():
  records = [
      _record("a", mode="hybrid", start_time=1, test_accuracy=0.1),
      _record("b", mode="hybrid", start_time=3, test_accuracy=0.3),
      _record("c", mode="hybrid", start_time=5, test_accuracy=0.5, status="FAILED"),
      _record("d", mode="hybrid", start_time=6, test_accuracy=None),  # Never finished.
      _record("e", mode="regulated", start_time=2, test_accuracy=0.2),
      _record("f", mode="regulated", start_time=2, test_accuracy=0.25),
      _record("g", mode=None, start_time=9, test_accuracy=0.9),
  ]
  picked = report.pick_latest(records, lambda r: r.mode)
  assert {k: r.run_id for k, r in picked.items()} == {"hybrid": "b", "regulated": "f"}


def test_total_from_params_or_from_zeta():
  assert _record("a", epochs=200, train_examples=60000).total == 12000000
  assert _record("a", participations=85528, zeta=85528 / 12000000).total == 12000000
  assert _record("a").total is None


def test_record_from_run():
  def run(tags, metrics, params, status="FINISHED"):
    return types.SimpleNamespace(
        info=types.SimpleNamespace(run_id="r1", run_name="student-hybrid", status=status,
                                   start_time=7),
        data=types.SimpleNamespace(tags=tags, metrics=metrics, params=params))

  record = report.record_from_run(run(
      {"role": "student", "dataset": "mnist", "mode": "hybrid", "alpha": "0.02",
       "model": "lenet5_half"},
      {"test_accuracy": 0.5, "zeta": 0.25, "participations": 128.0},
      {"stage_epochs": "2", "num_train_examples": "256"}))
  assert record == report.RunRecord(
      run_id="r1", run_name="student-hybrid", dataset="mnist", role="student", mode="hybrid",
      alpha="0.02", status="FINISHED", start_time=7, test_accuracy=0.5, zeta=0.25,
      participations=128, epochs=2, train_examples=256, model="lenet5_half")
  assert report.record_from_run(run({"dataset": "mnist"}, {}, {})) is None  # A parent run.


def test_tables_from_records_exact_markdown():
  records = [
      _record("t1", role="teacher", alpha="0.02", test_accuracy=0.98, epochs=2,
              train_examples=256),
      _record("t2", role="teacher", alpha="0.03", test_accuracy=0.97),
      _record("s1", mode="conventional", test_accuracy=0.9),
      _record("s2", mode="hybrid", test_accuracy=0.8, participations=128, epochs=2,
              train_examples=256),
      _record("f1", dataset="fashion_mnist", mode="regulated", test_accuracy=0.7,
              participations=10, epochs=1, train_examples=100),
  ]
  tables = report.build_tables(records)
  markdown = report.render_markdown(tables)
  lines = markdown.splitlines()
  # Table I: the paper's alphas and the runs' own, in numeric order.
  assert "| α | MNIST (runs) | MNIST (paper) |" in lines
  assert "| 0.02 | 0.9800 | 0.9897 |" in lines
  assert "| 0.03 | 0.9700 | — |" in lines
  assert "| 0.006 | — | 0.9899 |" in lines
  assert lines.index("| 0.02 | 0.9800 | 0.9897 |") < lines.index("| 0.03 | 0.9700 | — |")
  assert lines.index("| 0.03 | 0.9700 | — |") < lines.index("| 0.04 | — | 0.9902 |")
  # Tables III and IV (no CIFAR-10 runs: no Table V).
  assert "## Table III: student test accuracy on MNIST" in lines
  assert "| Conventional KD | 0.9000 | 0.9925 |" in lines
  assert "| KD with meta-data | — | 0.9247 |" in lines
  assert "| Hybrid KD | 0.8000 | 0.9804 |" in lines
  assert "## Table IV: student test accuracy on Fashion-MNIST" in lines
  assert "| Regulated KD | 0.7000 | 0.8892 |" in lines
  assert not any(line.startswith("| KD with meta-data") for line in
                 lines[lines.index("## Table IV: student test accuracy on Fashion-MNIST"):])
  assert "Table V:" not in markdown
  # Table VI.
  assert ("| MNIST | — | 85528/12000000 (0.71%) | 128/512 (25.00%) | 250245/12000000 (2.09%) |"
          in lines)
  assert ("| Fashion-MNIST | 10/100 (10.00%) | 1385966/12000000 (11.55%) | — | "
          "2096926/12000000 (17.47%) |" in lines)
  # The runs used.
  assert "| I | MNIST | teacher α=0.02 | t1 | `t1` | — | 2 | 256 |" in lines


def test_cells_from_runs_with_other_settings_are_marked_and_listed():
  records = [
      _record("t1", role="teacher", alpha="0.02", test_accuracy=0.98, epochs=6,
              train_examples=256, start_time=1),
      _record("t2", role="teacher", alpha="0.04", test_accuracy=0.97, epochs=3,
              train_examples=4096, start_time=2),
      _record("t3", role="teacher", alpha="0.08", test_accuracy=0.96, epochs=6,
              train_examples=256, start_time=3),
      _record("s1", mode="conventional", test_accuracy=0.9, epochs=6, train_examples=256,
              teacher_alpha="0.02", distill_alpha="0.02", start_time=1),
      _record("s2", mode="hybrid", test_accuracy=0.8, participations=128, epochs=6,
              train_examples=256, teacher_alpha="0.02", distill_alpha="0.02", start_time=1),
      _record("s3", mode="regulated", test_accuracy=0.7, participations=64, epochs=6,
              train_examples=256, teacher_alpha="0.04", distill_alpha="0.04", start_time=2),
  ]
  tables = report.build_tables(records)
  assert tables.mixed == {
      "t2": "epochs 3 (the others: 6), train examples 4096 (the others: 256)",
      "s3": "α 0.04 (the others: 0.02), distill α 0.04 (the others: 0.02)"}
  lines = report.render_markdown(tables).splitlines()
  assert "| 0.04 | 0.9700 ⚠ | 0.9902 |" in lines
  assert "| 0.02 | 0.9800 | 0.9897 |" in lines
  assert "| Regulated KD | 0.7000 ⚠ | 0.9859 |" in lines
  assert "| Hybrid KD | 0.8000 | 0.9804 |" in lines
  assert ("| MNIST | 64/1536 (4.17%) ⚠ | 85528/12000000 (0.71%) | 128/1536 (8.33%) | "
          "250245/12000000 (2.09%) |") in lines
  assert report.mixed_lines(tables) == [
      "Table I (MNIST), teacher α=0.04: run `t2` (t2) differs: epochs 3 (the others: 6), "
      "train examples 4096 (the others: 256)",
      "Table III (MNIST), Regulated KD: run `s3` (s3) differs: α 0.04 (the others: 0.02), "
      "distill α 0.04 (the others: 0.02)",
      "Table VI (MNIST), ζ regulated: run `s3` (s3) differs: α 0.04 (the others: 0.02), "
      "distill α 0.04 (the others: 0.02)"]
  assert [f"- {line}" for line in report.mixed_lines(tables)] == [
      line for line in lines if line.startswith("- Table")]
  _, students, table6 = report.figure_data(tables)
  assert [label for label, _, _ in students if "⚠" in label] == ["MNIST: Regulated KD ⚠"]
  assert [label for label, _, _ in table6 if "⚠" in label] == ["MNIST: regulated ⚠"]
  assert report.mixed_runs(records[:1], report_tables.TEACHER_SETTINGS) == {}


def test_report_without_runs():
  tables = report.build_tables([])
  markdown = report.render_markdown(tables)
  assert "_No finished teacher runs._" in markdown
  assert "_No finished student runs._" in markdown
  assert "_No finished regulated or hybrid student runs._" in markdown
  figure = plots.report_figure(*report.figure_data(tables))
  assert len(figure.axes) == 3


def test_paper_numbers_match_the_shared_copy():
  if not os.path.exists(SHARED_PAPER_TABLES):
    pytest.skip(f"{SHARED_PAPER_TABLES} not present")
  with open(SHARED_PAPER_TABLES) as f:
    shared = json.load(f)
  for key, value in paper.PAPER_TABLES.items():
    assert shared[key] == value, key


# -- plots --------------------------------------------------------------------------------


def test_significance_histograms_one_panel_per_class_named():
  names = datasets.get_dataset_spec("fashion_mnist").class_names
  labels = np.repeat(np.arange(10), 5)
  significance = np.linspace(0, 1, 50)
  figure = plots.significance_histograms(significance, labels, names)
  visible = [ax for ax in figure.axes if ax.get_visible()]
  assert [ax.get_title() for ax in visible] == [f"{i}: {n}" for i, n in enumerate(names)]
  assert [sum(p.get_height() for p in ax.patches) for ax in visible] == [5] * 10
  mnist = plots.significance_histograms(significance, labels, tuple(str(d) for d in range(10)))
  assert [ax.get_title() for ax in mnist.axes] == [str(d) for d in range(10)]


def test_significance_histograms_lay_out_100_named_classes():
  names = tuple(f"class_{i}" for i in range(99)) + ("a_very_long_class_name_for_a_panel",)
  labels = np.repeat(np.arange(100), 3)
  figure = plots.significance_histograms(np.linspace(0, 1, 300), labels, names)
  visible = [ax for ax in figure.axes if ax.get_visible()]
  assert len(visible) == 100
  width, height = figure.get_size_inches()
  assert width <= 20 and height <= 20  # A 10 x 10 grid, not 20 rows of 5.
  assert visible[7].get_title() == "7: class_7"
  assert visible[99].get_title().startswith("99: a_very") and len(visible[99].get_title()) <= 18
  assert [sum(p.get_height() for p in ax.patches) for ax in visible] == [3] * 100


def test_participation_plot_draws_the_history():
  history = [{"epoch": 1, "participation_fraction": 0.5, "eta": 0.1},
             {"epoch": 0, "participation_fraction": 0.9, "eta": 0.0}]
  figure = plots.participation_plot(history)
  fraction, eta = figure.axes[0].get_lines()
  assert list(fraction.get_xdata()) == [0, 1]
  assert list(fraction.get_ydata()) == [0.9, 0.5]
  assert list(eta.get_ydata()) == [0.0, 0.1]


# -- real runs ------------------------------------------------------------------------------


@dataclasses.dataclass
class Runs:
  uri: str
  tmp: str
  pipeline_dir: str
  sweep_dir: str
  pipeline_parent: str
  sweep_parent: str


def _sweep_config(argv):
  """The Config `python -m tf_srkd.main <argv>` would run (flags parsed from ROOT)."""
  from tf_srkd.cli import main as main_lib  # pylint: disable=import-outside-toplevel

  cwd = os.getcwd()
  os.chdir(ROOT)  # Flagfiles name each other relative to the repository root.
  try:
    main_lib.FLAGS(["tf_srkd.main", *argv])
    return main_lib.config_from_flags()
  finally:
    main_lib.FLAGS.unparse_flags()
    os.chdir(cwd)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  from tf_srkd.tracking import mlflow_tracking  # pylint: disable=import-outside-toplevel
  from tf_srkd.run import pipeline  # pylint: disable=import-outside-toplevel

  tmp = tmp_path_factory.mktemp("report")
  server = Server(str(tmp_path_factory.mktemp("report_server")))
  try:
    server.wait_ready()
    uri = server.uri
    config = config_lib.Config.of(
        dataset="mnist", epochs=2, train_examples=256, batch_size=64, eval_batch_size=256,
        modes=("conventional", "regulated", "hybrid"), output_dir=str(tmp / "pipeline"),
        verbose=0, mlflow=True, mlflow_experiment=EXPERIMENT, mlflow_tracking_uri=uri)
    first = mlflow_tracking.connect(config, strict=True)
    pipeline.run(config, tracker=first)
    # A second invocation: one run of Table I's sweep (flags/mnist_alpha_sweep.flags), tiny,
    # with another α and another epoch count.
    sweep_dir = tmp / "sweep-0.04"
    sweep = _sweep_config([
        "--flagfile=flags/mnist_alpha_sweep.flags", "--epochs=1", "--train_examples=256",
        "--batch_size=64", "--eval_batch_size=256", "--verbose=0", "--alpha=0.04",
        f"--mlflow_experiment={EXPERIMENT}", f"--mlflow_tracking_uri={uri}",
        f"--output_dir={sweep_dir}"])
    assert (sweep.stage, sweep.tracking.mlflow, sweep.gating.alpha) == ("teacher", True, 0.04)
    second = mlflow_tracking.connect(sweep, strict=True)
    pipeline.run(config_lib.validate(sweep), tracker=second)
    yield Runs(uri, str(tmp), str(tmp / "pipeline"), str(sweep_dir), first.parent_run_id,
               second.parent_run_id)
  finally:
    server.stop()


def test_sweep_flagfile_defaults():
  config = _sweep_config(["--flagfile=flags/mnist_alpha_sweep.flags", "--output_dir=x"])
  assert (config.data.dataset, config.stage, config.tracking.mlflow, config.experiment_name) == (
      "mnist", "teacher", True, "mnist_alpha_sweep")
  assert (config.training.epochs, config.training.teacher_lr, config.gating.alpha) == (200, 0.001,
                                                                                       0.02)


@pytest.mark.slow
def test_sweep_run_is_teacher_only(runs):
  summary = io_utils.read_json(os.path.join(runs.sweep_dir, "summary.json"))
  assert summary["students"] == {}
  assert not os.path.exists(os.path.join(runs.sweep_dir, "students"))


@pytest.mark.slow
def test_report_numbers_match_summary_json(runs):
  client = mlflow.MlflowClient(tracking_uri=runs.uri)
  selection = report.fetch_records(client, [EXPERIMENT],
                                   parent_runs=[runs.pipeline_parent, runs.sweep_parent])
  tables = report.build_tables(selection.records)
  summary = io_utils.read_json(os.path.join(runs.pipeline_dir, "summary.json"))
  sweep = io_utils.read_json(os.path.join(runs.sweep_dir, "summary.json"))

  table1 = {alpha: run for alpha, run, _ in tables.table1["mnist"]}
  assert table1["0.02"].test_accuracy == summary["teacher"]["test_accuracy"]
  assert table1["0.04"].test_accuracy == sweep["teacher"]["test_accuracy"]
  assert table1["0.02"].zeta == summary["teacher"]["zeta"]

  students = {label: run for label, run, _ in tables.students["mnist"] if run is not None}
  labels = {"conventional": "Conventional KD", "regulated": "Regulated KD",
            "hybrid": "Hybrid KD"}
  assert set(students) == set(labels.values())
  for mode, label in labels.items():
    assert students[label].test_accuracy == summary["students"][mode]["test_accuracy"]

  # The two teachers trained for 2 and 1 epochs: the older one's cell is marked.
  assert tables.mixed == {table1["0.02"].run_id: "epochs 2 (the others: 1)"}
  markdown = report.render_markdown(tables)
  lines = markdown.splitlines()
  assert f"| 0.02 | {summary['teacher']['test_accuracy']:.4f} ⚠ | 0.9897 |" in lines
  assert f"| 0.04 | {sweep['teacher']['test_accuracy']:.4f} | 0.9902 |" in lines
  assert (f"| Conventional KD | {summary['students']['conventional']['test_accuracy']:.4f} "
          "| 0.9925 |") in lines
  cells = []
  for mode in ("regulated", "hybrid"):
    metrics = io_utils.read_json(os.path.join(runs.pipeline_dir, "students", mode,
                                              "metrics.json"))
    run, _ = tables.table6["mnist"][mode]
    assert run.participations == metrics["participations"]
    assert run.total == 2 * 256
    assert run.participations / run.total == pytest.approx(summary["students"][mode]["zeta"],
                                                           rel=1e-12)
    cells.append(report.format_zeta(metrics["participations"], 512))
  assert (f"| MNIST | {cells[0]} | 85528/12000000 (0.71%) | {cells[1]} | "
          "250245/12000000 (2.09%) |") in lines
  with pytest.raises(report.ReportError, match="--mixed=refuse.*epochs 2 \\(the others: 1\\)"):
    report.write_report(client, [EXPERIMENT], parent_runs=[runs.pipeline_parent,
                                                           runs.sweep_parent], mixed="refuse")


@pytest.mark.slow
def test_report_reads_one_invocation_and_says_which(runs, tmp_path):
  """Two invocations (α 0.02 with students, then α 0.04 teacher-only): by default the
  latest one, with --parent_run the one named; the Markdown and the figure say which."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  client = mlflow.MlflowClient(tracking_uri=runs.uri)
  summary = io_utils.read_json(os.path.join(runs.pipeline_dir, "summary.json"))
  sweep = io_utils.read_json(os.path.join(runs.sweep_dir, "summary.json"))
  latest = report.write_report(client, [EXPERIMENT])
  assert f"latest parent run `{runs.sweep_parent}` (mnist teacher alpha=0.04)" in latest
  lines = latest.splitlines()
  assert f"| 0.04 | {sweep['teacher']['test_accuracy']:.4f} | 0.9902 |" in lines
  assert "| 0.02 | — | 0.9897 |" in lines
  assert "_No finished student runs._" in latest and "⚠" not in latest

  figure = str(tmp_path / "chosen.png")
  chosen = report.write_report(client, [EXPERIMENT], figure=figure,
                               parent_runs=[runs.pipeline_parent])
  assert f"parent run `{runs.pipeline_parent}` (mnist all alpha=0.02)" in chosen
  lines = chosen.splitlines()
  assert f"| 0.02 | {summary['teacher']['test_accuracy']:.4f} | 0.9897 |" in lines
  assert "| 0.04 | — | 0.9902 |" in lines
  assert runs.sweep_parent not in chosen
  used = {r.run_id for r in report.fetch_records(client, [EXPERIMENT],
                                                 parent_runs=[runs.pipeline_parent]).records}
  assert len(used) == 4  # The teacher and three students.
  footer = Image.open(figure).text["Description"]
  assert runs.pipeline_parent in footer and all(run_id in footer.replace("\n", " ")
                                                for run_id in used)
  only_teachers = report.fetch_records(client, [EXPERIMENT], filter_string="tags.role = 'teacher'")
  assert {r.alpha for r in only_teachers.records} == {"0.02", "0.04"}
  assert "tags.role = 'teacher'" in only_teachers.description
  with pytest.raises(report.ReportError, match="--parent_run=nope: no such MLflow run"):
    report.fetch_records(client, [EXPERIMENT], parent_runs=["nope"])


@pytest.mark.slow
def test_report_command_writes_markdown_and_figure(runs):
  out = os.path.join(runs.tmp, "out", "report.md")
  env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
  result = subprocess.run(
      [sys.executable, "-m", "tf_srkd.cli.report", f"--experiment={EXPERIMENT}",
       f"--mlflow_tracking_uri={runs.uri}", f"--output={out}",
       f"--parent_run={runs.pipeline_parent}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  figure = os.path.join(runs.tmp, "out", "report.png")
  with open(figure, "rb") as f:
    assert f.read(8) == PNG_MAGIC
  with open(out, encoding="utf-8") as f:
    written = f.read()
  client = mlflow.MlflowClient(tracking_uri=runs.uri)
  selection = report.fetch_records(client, [EXPERIMENT], parent_runs=[runs.pipeline_parent])
  expected = report.render_markdown(
      report.build_tables(selection.records),
      sources=(f"{selection.description}\n\nExperiments: {EXPERIMENT}; tracking URI: "
               f"`{runs.uri}`; 4 finished teacher/student runs selected."),
      figure="report.png")
  assert written == expected
  refused = subprocess.run(
      [sys.executable, "-m", "tf_srkd.cli.report", f"--experiment={EXPERIMENT}",
       f"--mlflow_tracking_uri={runs.uri}", "--filter=tags.role = 'teacher'", "--mixed=refuse"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert refused.returncode == 2
  assert [line for line in refused.stderr.splitlines() if line.startswith("error:")] == [
      line for line in refused.stderr.splitlines() if "epochs 2 (the others: 1)" in line]


@pytest.mark.slow
def test_report_errors_unknown_experiment_and_missing_store(runs, tmp_path):
  client = report.open_client(runs.uri)
  with pytest.raises(report.ReportError, match="--experiment=nope: no such MLflow experiment"):
    report.fetch_records(client, ["nope"])
  with pytest.raises(report.ReportError, match="no such MLflow database"):
    report.open_client(f"sqlite:///{tmp_path}/absent.db")
  assert not os.path.exists(tmp_path / "absent.db")

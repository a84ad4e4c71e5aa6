"""tf_srkd.reporting.fidelity: paper numbers, mean ± std, verdicts, and the MLflow record."""

import pytest

from tf_srkd.reporting import fidelity

PER_SEED = [
    {"teacher": {"test_accuracy": 0.99, "zeta": 0.004},
     "regulated": {"test_accuracy": 0.9860, "zeta": 0.007},
     "hybrid": {"test_accuracy": 0.9700, "zeta": 0.010}},
    {"teacher": {"test_accuracy": 0.98, "zeta": 0.006},
     "regulated": {"test_accuracy": 0.9870, "zeta": 0.006},
     "hybrid": {"test_accuracy": 0.9900, "zeta": 0.030}},
]


def test_paper_numbers_come_from_tables_i_iii_and_vi():
  assert fidelity.paper_numbers("mnist", "teacher") == (0.9897, None)
  assert fidelity.paper_numbers("fashion_mnist", "teacher") == (0.9042, None)
  accuracy, zeta = fidelity.paper_numbers("mnist", "hybrid")
  assert accuracy == 0.9804 and zeta == pytest.approx(250245 / 12000000)


def test_summary_rows_mean_std_and_verdict():
  rows = {r["model"]: r for r in fidelity.summary_rows("mnist", PER_SEED)}
  assert rows["teacher"]["acc"] == pytest.approx(0.985)
  assert rows["teacher"]["acc_std"] == pytest.approx(0.00707107, rel=1e-5)
  assert rows["teacher"]["reached"] is False  # 0.985 < 0.9897
  # Regulated: mean 0.9865 >= 0.9859 at mean zeta 0.65 % <= 0.713 %.
  assert rows["regulated"]["reached"] is True
  # Hybrid: mean accuracy 0.98 < 0.9804 (zeta 2 % would be within 2.085 %).
  assert rows["hybrid"]["zeta"] == pytest.approx(0.02) and rows["hybrid"]["reached"] is False


def test_table_renders_every_model_and_seed():
  text = fidelity.fidelity_table("mnist", PER_SEED)
  lines = text.splitlines()
  assert lines[2].startswith("| teacher | 0.9897 | 0.9850 ± 0.0071 | -0.47 pt |")
  assert "| regulated | 0.9859 | 0.9865 ± 0.0007 | +0.06 pt | 0.713% | 0.650% ± 0.071% |" in text
  assert text.count("\n| 1 |") == 3  # Second seed: teacher, regulated, hybrid.


def test_log_to_mlflow_records_table_and_metrics(tmp_path):
  import mlflow

  uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
  run_id = fidelity.log_to_mlflow(uri, "mnist", "demo", PER_SEED, "the table")
  run = mlflow.MlflowClient(uri).get_run(run_id)
  assert run.data.tags["label"] == "demo" and run.info.run_name == "fidelity-demo"
  assert run.data.metrics["hybrid_acc_mean"] == pytest.approx(0.98)
  assert run.data.metrics["regulated_zeta_std"] == pytest.approx(0.000707107, rel=1e-5)


def test_where_samples_go():
  history = [{"participation_fraction": f} for f in (0.5, 0.3, 0.02, 0.04)]
  counts = [3, 0, 1, 4]
  significance = [0.0, 0.0, 0.5, 0.0]
  got = fidelity.where_samples_go(history, counts, significance)
  assert got["late_participation"] == pytest.approx(0.03)  # Epochs 2-3 of 4.
  assert got["zero_significance_share"] == pytest.approx(7 / 8)
  assert fidelity.where_samples_go(history) == {"late_participation": pytest.approx(0.03)}


def test_late_misclassified_share_is_the_training_error_over_participation():
  history = [{"participation_fraction": f, "accuracy": a}
             for f, a in ((0.9, 0.2), (0.5, 0.6), (0.04, 0.99), (0.02, 0.995), (0.0, 0.97))]
  got = fidelity.where_samples_go(history)
  # Epochs 2-4; epoch 4 has no participant (an idle epoch, whose `accuracy` is the cached
  # one) and adds nothing, although its accuracy is not 1.
  assert got["late_misclassified_share"] == pytest.approx((0.01 + 0.005) / (0.04 + 0.02))
  assert "late_misclassified_share" not in fidelity.where_samples_go(
      [{"participation_fraction": 0.1}] * 4)


def test_table_renders_the_late_shares():
  per_seed = [{model: dict(values, late_participation=0.01, late_misclassified_share=share)
               for (model, values), share in zip(seed.items(), (0.05, 0.35, 0.25))}
              for seed in PER_SEED]
  text = fidelity.fidelity_table("mnist", per_seed)
  header = text.splitlines()[0].split(" | ")
  column = header.index("of which misclassified (2nd half)")
  rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines()[2:5]}
  assert [rows[m][column] for m in ("teacher", "regulated", "hybrid")] == ["5%", "35%", "25%"]
  assert all(rows[m][column - 1] == "1.000%" for m in rows)

"""Paper vs ours over several seeds: the fidelity table and its MLflow record.

`bench/reproduction/fidelity.py` runs the protocol (one teacher and its students per seed)
and hands the finished runs' metrics here; this module only summarises them.
`per_seed` is a list (one entry per seed) of {model: metrics dict}, `model`
being "teacher" or a distillation mode, the metrics those of `metrics.json`.
"""

import statistics

import numpy as np

from tf_srkd.reporting import paper

#: The teacher each dataset's students are distilled from uses Table II's alpha.
TEACHER_ALPHA = {"mnist": "0.02", "fashion_mnist": "0.04", "cifar10": "0.04"}


def paper_numbers(dataset, model):
  """(accuracy, zeta) the paper reports for `model`; None where it reports none."""
  tables = paper.PAPER_TABLES
  if model == "teacher":
    by_alpha = tables["table_1_teacher_accuracy_by_alpha"]
    return dict(zip(by_alpha["alpha"], by_alpha[dataset]))[TEACHER_ALPHA[dataset]], None
  accuracy = tables["tables_3_to_5_student_test_accuracy"][dataset].get(model)
  efficiency = tables["table_6_sample_efficiency"][dataset].get(model)
  return accuracy, (efficiency[0] / efficiency[1] if efficiency else None)


def mean_std(values):
  """(mean, sample std) of the values that are not None; (None, None) if none are."""
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def where_samples_go(history, participation=None, significance=None) -> dict:
  """Where a self-regulating run spends its samples.

  Args:
    history: the per-epoch list of `metrics.json` (`participation_fraction`).
    participation: optional [N] participation counts of the run.
    significance: optional [N] teacher significance the run was weighted by.

  Returns:
    `late_participation`: mean participation fraction per epoch over the
    second half of the epochs; `late_misclassified_share`: the share of those
    epochs' participations that are samples the model misclassified at the
    gate (Algorithm 1/3 admit every misclassified sample, and the epoch's
    `accuracy` is over the gate's predictions of every sample, so it is
    sum(1 - accuracy) / sum(participation fraction); only meaningful for the
    paper's `self_regulated` gate, the one the fidelity protocol runs: other
    policies do not admit every misclassified sample); with both arrays,
    `zero_significance_share`: the share of all participations spent on
    samples of significance 0 (they pass the gate but add nothing to the loss).
  """
  result = {}
  epochs = list(history or ())
  late_epochs = epochs[len(epochs) // 2:]
  late = [e["participation_fraction"] for e in late_epochs
          if e.get("participation_fraction") is not None]
  if late:
    result["late_participation"] = statistics.fmean(late)
  both = [(1 - e["accuracy"], e["participation_fraction"]) for e in late_epochs
          if e.get("accuracy") is not None and e.get("participation_fraction")]
  if both:
    result["late_misclassified_share"] = (sum(m for m, _ in both)
                                          / sum(f for _, f in both))
  if participation is not None and significance is not None:
    participation = np.asarray(participation, np.int64)
    total = participation.sum()
    if total:
      result["zero_significance_share"] = float(
          participation[np.asarray(significance) == 0].sum() / total)
  return result


def _markdown(headers, rows):
  lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
  return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def summary_rows(dataset, per_seed):
  """One dict per model: paper and our accuracy/zeta (mean, std) and the verdict.

  The verdict `reached` is True when the mean accuracy is at least the paper's
  and the mean zeta at most the paper's (where the paper reports one).
  """
  rows = []
  for model in per_seed[0]:
    acc, acc_std = mean_std([r[model].get("test_accuracy") for r in per_seed])
    zeta, zeta_std = mean_std([r[model].get("zeta") for r in per_seed])
    paper_acc, paper_zeta = paper_numbers(dataset, model)
    reached = None
    if paper_acc is not None and acc is not None:
      reached = acc >= paper_acc and (paper_zeta is None or (zeta is not None and zeta <= paper_zeta))
    late, _ = mean_std([r[model].get("late_participation") for r in per_seed])
    zero_share, _ = mean_std([r[model].get("zero_significance_share") for r in per_seed])
    misclassified, _ = mean_std([r[model].get("late_misclassified_share") for r in per_seed])
    rows.append(dict(model=model, paper_acc=paper_acc, acc=acc, acc_std=acc_std,
                     paper_zeta=paper_zeta, zeta=zeta, zeta_std=zeta_std, reached=reached,
                     late=late, misclassified=misclassified, zero_share=zero_share))
  return rows


def fidelity_table(dataset, per_seed) -> str:
  """The paper-vs-ours Markdown table, then every seed's numbers."""
  rows = []
  for r in summary_rows(dataset, per_seed):
    rows.append([
        r["model"], f"{r['paper_acc']:.4f}" if r["paper_acc"] else "—",
        f"{r['acc']:.4f} ± {r['acc_std']:.4f}",
        f"{(r['acc'] - r['paper_acc']) * 100:+.2f} pt" if r["paper_acc"] else "—",
        f"{r['paper_zeta']:.3%}" if r["paper_zeta"] else "—",
        f"{r['zeta']:.3%} ± {r['zeta_std']:.3%}" if r["zeta"] is not None else "—",
        (f"{(r['zeta'] - r['paper_zeta']) * 100:+.3f} pt"
         if r["paper_zeta"] and r["zeta"] is not None else "—"),
        {True: "yes", False: "no", None: "—"}[r["reached"]],
        f"{r['late']:.3%}" if r["late"] is not None else "—",
        f"{r['misclassified']:.0%}" if r["misclassified"] is not None else "—",
        f"{r['zero_share']:.1%}" if r["zero_share"] is not None else "—"])
  per_run = [[str(i), model, f"{m.get('test_accuracy'):.4f}",
              f"{m['zeta']:.3%}" if m.get("zeta") is not None else "—"]
             for i, run in enumerate(per_seed) for model, m in run.items()]
  return (_markdown(["model", "paper acc", f"ours acc (mean ± std, n={len(per_seed)})", "Δ acc",
                     "paper ζ", "ours ζ (mean ± std)", "Δ ζ", "≥ paper acc at ≤ paper ζ",
                     "participation / epoch, 2nd half",
                     "of which misclassified (2nd half)", "participations at s = 0"], rows)
          + "\n\nPer seed (index in --seeds order):\n\n"
          + _markdown(["seed #", "model", "test acc", "ζ"], per_run))


def log_to_mlflow(tracking_uri, dataset, label, per_seed, text):
  """One MLflow run (experiment `fidelity-<dataset>`) with the table and mean/std metrics.

  Args:
    tracking_uri: the store to log to (None: MLflow's own default resolution).
    dataset: dataset name.
    label: names the protocol's student settings (the run is `fidelity-<label>`).
    per_seed: see the module docstring.
    text: the Markdown to store as `fidelity.md`.

  Returns:
    The MLflow run id.
  """
  import mlflow  # pylint: disable=import-outside-toplevel

  client = mlflow.MlflowClient(tracking_uri)
  name = f"fidelity-{dataset}"
  experiment = client.get_experiment_by_name(name)
  experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
  run = client.create_run(experiment_id, run_name=f"fidelity-{label}",
                          tags={"role": "fidelity", "dataset": dataset, "label": label,
                                "seeds": str(len(per_seed))})
  run_id = run.info.run_id
  for r in summary_rows(dataset, per_seed):
    for key in ("acc", "zeta"):
      if r[key] is not None:
        client.log_metric(run_id, f"{r['model']}_{key}_mean", r[key])
        client.log_metric(run_id, f"{r['model']}_{key}_std", r[f"{key}_std"])
  client.log_text(run_id, text, "fidelity.md")
  client.set_terminated(run_id)
  return run_id

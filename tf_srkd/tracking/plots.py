"""Matplotlib figures for tracking and the report (headless: the Agg backend).

Every function returns a `matplotlib.figure.Figure` built with the object API
and an Agg canvas of its own (no pyplot, no global backend switch), so callers
can hand it to `mlflow.log_figure` or `Figure.savefig` and then drop it;
nothing is shown on screen and nothing needs closing.

  significance_histograms    the paper's Figures 3-5: one panel per class
  participation_plot         participation fraction (and eta) per epoch of an SR run
  report_figure              Table I, Tables III-V and Table VI side by side
"""

import math

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import matplotlib.ticker
import numpy as np

_OURS = "tab:blue"
_PAPER = "tab:gray"


def _new_figure(**kwargs) -> Figure:
  figure = Figure(layout="constrained", **kwargs)
  FigureCanvasAgg(figure)
  return figure


#: Above this many classes the histograms switch to the compact layout.
_FEW_CLASSES = 10


def _grid(count):
  """(rows, cols) for `count` panels: at most 5 per row up to 10 classes (10 -> 2 x 5),
  then a near-square grid of at most 10 per row (100 classes -> 10 x 10)."""
  if count <= _FEW_CLASSES:
    cols = min(count, 5) if count else 1
  else:
    cols = min(10, math.ceil(math.sqrt(count)))
  return max(1, math.ceil(count / cols)), cols


def _panel_title(index, name, compact):
  """"<label>: <name>" (just the name where it is the label); long names shortened."""
  name = str(name)
  text = name if name == str(index) else f"{index}: {name}"
  limit = 18 if compact else 40
  return text if len(text) <= limit else text[:limit - 1] + "…"


def significance_histograms(significance, labels, class_names, bins=20, title=None) -> Figure:
  """Class-wise histograms of the sample significance (the paper's Figures 3-5).

  Args:
    significance: [N] significance in [0, 1] (Algorithm 2).
    labels: [N] integer labels.
    class_names: names indexed by label; one panel per class, titled
      "<label>: <name>" (just the name where it is the label, as for MNIST).
    bins: histogram bins over [0, 1].
    title: optional figure title.

  Returns:
    A figure with `len(class_names)` histogram axes, in label order.
  """
  significance = np.asarray(significance, dtype=np.float64)
  labels = np.asarray(labels)
  if significance.shape != labels.shape:
    raise ValueError(f"significance {significance.shape} and labels {labels.shape} differ in shape")
  rows, cols = _grid(len(class_names))
  compact = len(class_names) > _FEW_CLASSES
  # Many classes: smaller panels, so 100 classes fit a 10 x 10 grid of ~18 x 16 inches.
  width, height = (1.8, 1.6) if compact else (3.0, 2.6)
  fig = _new_figure(figsize=(width * cols, height * rows))
  axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
  edges = np.linspace(0.0, 1.0, bins + 1)
  for index, ax in enumerate(axes.flat):
    if index >= len(class_names):
      ax.set_visible(False)
      continue
    values = significance[labels == index]
    ax.hist(values, bins=edges, color=_OURS)
    ax.set_title(_panel_title(index, class_names[index], compact), fontsize=6 if compact else 10)
    ax.set_xlim(0.0, 1.0)
    if compact:
      ax.tick_params(labelsize=5)
    if index % cols == 0:
      ax.set_ylabel("frequency", fontsize=6 if compact else None)
    if index >= len(class_names) - cols:  # The lowest panel of each column.
      ax.set_xlabel("sample significance", fontsize=6 if compact else None)
  if title:
    fig.suptitle(title)
  return fig


def participation_plot(history, title=None) -> Figure:
  """Participation fraction per epoch (and the threshold eta) of one SR run.

  Args:
    history: per-epoch dicts with at least `epoch` and `participation_fraction`
      (and optionally `eta`), as the pipeline's `history.json`.
    title: optional axes title.

  Returns:
    A figure with one axes: the fraction line first, then eta if present.
  """
  entries = sorted(history, key=lambda e: e["epoch"])
  epochs = [int(e["epoch"]) for e in entries]
  fig = _new_figure(figsize=(6.0, 3.6))
  ax = fig.add_subplot()
  ax.plot(epochs, [float(e["participation_fraction"]) for e in entries], marker=".",
          color=_OURS, label="participation fraction")
  if entries and all("eta" in e for e in entries):
    ax.plot(epochs, [float(e["eta"]) for e in entries], linestyle="--", color=_PAPER,
            label="threshold η")
  ax.set_xlabel("epoch")
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_ylabel("fraction of the training set")
  ax.set_ylim(0.0, 1.05)
  ax.legend(loc="best")
  if title:
    ax.set_title(title)
  return fig


def _no_data(ax, text):
  ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
  ax.set_xticks([])
  ax.set_yticks([])


def _paired_bars(ax, labels, ours, paper, ylabel):
  x = np.arange(len(labels))
  width = 0.4
  nan = float("nan")
  ax.bar(x - width / 2, [nan if v is None else v for v in ours], width, color=_OURS,
         label="runs")
  ax.bar(x + width / 2, [nan if v is None else v for v in paper], width, color=_PAPER,
         label="paper")
  ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
  ax.set_ylabel(ylabel)
  ax.legend(loc="best", fontsize=8)


def report_figure(table1, table3to5, table6) -> Figure:
  """The report's combined figure: one panel per table group.

  Args:
    table1: {dataset: [(alpha_label, ours_or_None, paper_or_None), ...]}.
    table3to5: [(label, ours_or_None, paper_or_None), ...] over dataset/method.
    table6: [(label, ours_percent_or_None, paper_percent_or_None), ...].

  Returns:
    A figure with three axes (Table I, Tables III-V, Table VI); a panel with no
    runs says so instead of plotting.
  """
  fig = _new_figure(figsize=(16.0, 4.8))
  ax1, ax2, ax3 = fig.subplots(1, 3)
  ax1.set_title("Table I: teacher test accuracy per α")
  if table1:
    for index, (dataset, rows) in enumerate(sorted(table1.items())):
      color = matplotlib.colormaps["tab10"](index)
      x = np.arange(len(rows))
      ours = [np.nan if r[1] is None else r[1] for r in rows]
      paper = [np.nan if r[2] is None else r[2] for r in rows]
      ax1.plot(x, ours, marker="o", color=color, label=f"{dataset} (runs)")
      ax1.plot(x, paper, marker="x", linestyle="--", color=color, alpha=0.6,
               label=f"{dataset} (paper)")
      ax1.set_xticks(x, [r[0] for r in rows])
    ax1.set_xlabel("α")
    ax1.set_ylabel("test accuracy")
    ax1.legend(loc="best", fontsize=8)
  else:
    _no_data(ax1, "no teacher runs")
  ax2.set_title("Tables III-V: student test accuracy")
  if table3to5:
    _paired_bars(ax2, [r[0] for r in table3to5], [r[1] for r in table3to5],
                 [r[2] for r in table3to5], "test accuracy")
  else:
    _no_data(ax2, "no student runs")
  ax3.set_title("Table VI: sample efficiency ζ")
  if table6:
    _paired_bars(ax3, [r[0] for r in table6], [r[1] for r in table6], [r[2] for r in table6],
                 "ζ (% of samples × epochs)")
  else:
    _no_data(ax3, "no regulated/hybrid runs")
  return fig

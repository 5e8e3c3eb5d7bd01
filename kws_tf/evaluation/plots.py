"""PNG plots of evaluation results: the KWS confusion matrix and the DET curves
(against false accepts on windows, or false alarms per hour of audio).

Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure``
rendered by the Agg backend), so importing this module neither needs a
display nor changes pyplot's global backend. Text uses DejaVu Sans, which
ships with matplotlib and covers the Vietnamese letters. Files are written
atomically: to ``<path>.tmp``, then renamed.
"""
import os
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

_STYLE = {"font.family": "DejaVu Sans"}
_DPI = 120
_FAR_TICKS = (0, 0.5, 1, 2, 5, 10, 20, 50, 100)  # percent
_PER_HOUR_TICKS = (0, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def plot_confusion_matrix(matrix, class_names: Sequence[str], path: str,
                          title: str = "Confusion matrix") -> None:
  """Writes the confusion matrix as a PNG: colours by row-normalised fraction, counts in cells.

  Args:
    matrix: int ``[C, C]`` counts, rows true, columns predicted.
    class_names: the ``C`` class names, in index order.
    path: the PNG file to write.
    title: figure title.
  """
  matrix = np.asarray(matrix)
  num_classes = len(class_names)
  if matrix.shape != (num_classes, num_classes):
    raise ValueError(f"matrix {matrix.shape} does not match {num_classes} class names")
  # Colour is the fraction of the true class (recall along the diagonal).
  fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
  side = 2.5 + 0.55 * num_classes  # inches
  with matplotlib.rc_context(_STYLE):
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="fraction of the true class")
    axes.set_xticks(np.arange(num_classes), labels=class_names, rotation=45, ha="right")
    axes.set_yticks(np.arange(num_classes), labels=class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (row, column), count in np.ndenumerate(matrix):
      colour = "white" if fractions[row, column] > 0.5 else "black"
      axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    _save(figure, path)


def plot_det_curve(points, path: str, title: str = "DET curve") -> None:
  """Writes the detection trade-off as a PNG: FRR against FAR, both in percent.

  The FAR axis is linear from 0 to 1 % and logarithmic from 1 % to 100 %.

  Args:
    points: float ``[K, 2]`` (FAR, FRR) pairs, fractions in [0, 1], e.g.
      ``[(far, frr) for _, far, frr in metrics.det_curve(...)]``; or a mapping
      from a curve's name (its legend entry) to such pairs, one curve each.
    path: the PNG file to write.
    title: figure title.
  """
  curves = dict(points) if isinstance(points, Mapping) else {"": points}
  if not curves:
    raise ValueError("no curve to plot")
  with matplotlib.rc_context(_STYLE):
    figure = Figure(figsize=(5.5 if len(curves) == 1 else 7.5, 4.5), layout="constrained")
    axes = figure.subplots()
    for name, curve in curves.items():
      curve = np.asarray(curve, dtype=np.float64)
      if curve.ndim != 2 or curve.shape[1] != 2 or not len(curve):
        raise ValueError(f"points must be [K, 2] (FAR, FRR) with K >= 1, got shape {curve.shape}"
                         + (f" for {name!r}" if name else ""))
      # FAR ascending, FRR descending at equal FAR; steps-post then draws the
      # least FRR reachable at each FAR.
      curve = curve[np.lexsort((-curve[:, 1], curve[:, 0]))]
      axes.plot(100 * curve[:, 0], 100 * curve[:, 1], drawstyle="steps-post",
                marker="." if len(curves) == 1 else None, linewidth=1.5, label=name or None)
    # Linear up to 1 % FAR (it has the zeros), logarithmic above: the low-FAR
    # operating points get room.
    axes.set_xscale("symlog", linthresh=1.0)
    axes.set_xticks(_FAR_TICKS, labels=[f"{t:g}" for t in _FAR_TICKS])
    axes.set_xlim(0, 100)
    axes.set_ylim(0, 100)
    axes.set_xlabel("false accepts (% of negative examples)")
    axes.set_ylabel("false rejects (% of keyword examples)")
    axes.set_title(title)
    axes.grid(True, alpha=0.4)
    if len(curves) > 1:
      axes.legend(fontsize=7, loc="upper right")
    _save(figure, path)


def plot_det_per_hour(points, path: str, rates: Sequence[float] = (),
                      title: str = "DET curve, always on") -> None:
  """Writes the always-on trade-off as a PNG: per name, the lowest FRR (percent) of the
  points with at most each number of false alarms per hour.

  The x axis is linear from 0 to 1 false alarm per hour and logarithmic above,
  up to the largest rate of the points (at least 10); the ``rates`` get
  dashed vertical lines.

  Args:
    points: a mapping from a curve's name (its legend entry) to float ``[K, 2]``
      (false alarms per hour, FRR as a fraction) pairs, e.g. of
      ``kws_tf.evaluation.always_on.curve``.
    path: the PNG file to write.
    rates: false alarms per hour to mark.
    title: figure title.
  """
  if not points:
    raise ValueError("no curve to plot")
  with matplotlib.rc_context(_STYLE):
    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    axes = figure.subplots()
    largest = 10.0
    for name, curve in points.items():
      curve = np.asarray(curve, dtype=np.float64)
      if curve.ndim != 2 or curve.shape[1] != 2 or not len(curve):
        raise ValueError(f"points of {name!r} must be [K, 2] (false alarms per hour, FRR) "
                         f"with K >= 1, got shape {curve.shape}")
      # The least FRR of any threshold with at most each rate (the operating
      # points of kws_tf.evaluation.always_on): a threshold sweep of a detector
      # with a refractory time is not monotone in its false alarms.
      curve = curve[np.lexsort((curve[:, 1], curve[:, 0]))]
      curve[:, 1] = np.minimum.accumulate(curve[:, 1])
      largest = max(largest, float(curve[:, 0].max()))
      axes.plot(curve[:, 0], 100 * curve[:, 1], drawstyle="steps-post", linewidth=1.5,
                label=name)
    for rate in rates:
      axes.axvline(rate, color="grey", linestyle="--", linewidth=0.8)
    axes.set_xscale("symlog", linthresh=1.0)
    ticks = [t for t in _PER_HOUR_TICKS if t <= largest]
    axes.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
    axes.set_xlim(0, largest)
    axes.set_ylim(0, 100)
    axes.set_xlabel("false alarms per hour of audio")
    axes.set_ylabel("false rejects (% of spoken keywords)")
    axes.set_title(title)
    axes.grid(True, alpha=0.4)
    axes.legend(fontsize=7, loc="lower left")
    _save(figure, path)


def _save(figure: Figure, path: str) -> None:
  """PNG to ``path + ".tmp"``, then renamed to ``path``; no temporary file is left on error."""
  tmp = path + ".tmp"
  try:
    figure.savefig(tmp, format="png", dpi=_DPI)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)

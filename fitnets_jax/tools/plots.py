"""Figures of runs and of what the methods compare, as matplotlib Figures.

Every function returns a `matplotlib.figure.Figure` built without pyplot, so it works the same in
a script (`save(fig, "x.png")`), in the results report and in a notebook (a Figure left as a
cell's last value is shown). The arrays come from `fitnets_jax.tools.explore` or a run's files.
"""

import numpy as np

from fitnets_jax import files, metrics


def figure(width, height, rows=1, cols=1, **kwargs):
  """(Figure, axes) without pyplot's global state; `axes` is squeezed as in plt.subplots."""
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width, height))
  return fig, fig.subplots(rows, cols, **kwargs)


def save(fig, path, dpi=100):
  """Writes `fig` to `path` (PNG by its extension); returns `path`."""
  with files.open_path(path, "wb") as f:
    fig.savefig(f, dpi=dpi, format=str(path).rsplit(".", 1)[-1])
  return path


def stage_curves(records):
  """{stage: {"train": [(global step, loss, accuracy or None)], "test": [(global step, accuracy)]}} of a
  run's metrics, steps made global by each stage's length (its last logged step) in order."""
  curves = {}
  for step, r in metrics.global_steps(records):
    stage = curves.setdefault(r["stage"], {"train": [], "test": []})
    if r.get("split") == "train":
      stage["train"].append((step, r.get("loss"), r.get("accuracy")))
    elif r.get("split") == "test" and r.get("accuracy") is not None:
      stage["test"].append((step, r["accuracy"]))
  return curves


def curves(records, title=""):
  """Train loss (top) and train/test accuracy (bottom) of every stage of one run (its metrics.jsonl
  records) against the global step, one colour per stage."""
  fig, (loss_ax, acc_ax) = figure(7, 5.5, 2, 1, sharex=True)
  for i, (stage, curve) in enumerate(stage_curves(records).items()):
    color = f"C{i}"
    train = [(s, l, a) for s, l, a in curve["train"] if l is not None]
    if train:
      loss_ax.plot([s for s, _, _ in train], [l for _, l, _ in train], color=color, label=stage)
    accs = [(s, a) for s, _, a in curve["train"] if a is not None]
    if accs:
      acc_ax.plot(*zip(*accs), color=color, alpha=0.6, label=f"{stage} train")
    if curve["test"]:
      acc_ax.plot(*zip(*curve["test"]), "o", color=color, label=f"{stage} test")
  loss_ax.set_ylabel("train loss")
  loss_ax.set_yscale("log")
  loss_ax.legend(fontsize=8)
  acc_ax.set_ylabel("accuracy")
  acc_ax.set_xlabel("step (all stages)")
  acc_ax.legend(fontsize=8, ncol=2)
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def accuracy_vs_macs(rows):
  """Every report row's mean test accuracy (± std) against its MACs (log scale); rows of equal MACs
  are drawn slightly apart. Rows: {kind, method, model, macs, mean, std} (`report.rows_of`)."""
  fig, ax = figure(7, 4.5)
  shown = [row for row in rows if row["mean"] is not None]
  for i, r in enumerate(shown):
    marker = "s" if r["kind"] == "teacher" else "o"
    alike = [j for j, other in enumerate(shown) if other["macs"] == r["macs"]]  # side by side, not on top
    x = r["macs"] * 1.03 ** (alike.index(i) - (len(alike) - 1) / 2)
    ax.errorbar(
      x,
      100 * r["mean"],
      yerr=100 * (r["std"] or 0.0),
      fmt=marker,
      color=f"C{i}",
      capsize=3,
      label=f"{r['method']}: {r['model']}",
    )
  ax.set_xscale("log")
  ax.set_xlabel("MACs per example")
  ax.set_ylabel("test accuracy (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def accuracy_vs_depth(table):
  """Each method's mean test accuracy (± std over seeds) against the student's weight layers, from
  `report.by_depth`'s {layers: {method: row}} (FitNets Figure 3's axes)."""
  fig, ax = figure(6, 4)
  methods = list(dict.fromkeys(m for row in table.values() for m in row))
  for i, method in enumerate(methods):
    points = [
      (layers, row[method]) for layers, row in table.items() if method in row and row[method]["mean"] is not None
    ]
    ax.errorbar(
      [layers + 0.15 * (i - (len(methods) - 1) / 2) for layers, _ in points],  # side by side, not on top
      [100 * r["mean"] for _, r in points],
      yerr=[100 * (r["std"] or 0.0) for _, r in points],
      fmt="-o",
      color=f"C{i}",
      capsize=3,
      label=method,
    )
  ax.set_xticks(list(table))
  ax.set_xlabel("weight layers of the student")
  ax.set_ylabel("test accuracy (%)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  return fig


def accuracy_bars(accuracies, title="test accuracy"):
  """A bar per {label: accuracy in [0, 1]}, the value written on each bar; the axis starts near the
  lowest value so small differences stay visible."""
  fig, ax = figure(1.3 * len(accuracies) + 2, 3.5)
  labels, values = list(accuracies), [100 * v for v in accuracies.values()]
  bars = ax.bar(labels, values, color=[f"C{i}" for i in range(len(values))])
  ax.bar_label(bars, fmt="%.2f", fontsize=9)
  low = min(values)
  ax.set_ylim(max(0.0, low - max(2.0, 0.5 * (max(values) - low))), min(100.0, max(values) + 1.0))
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(title)
  fig.tight_layout()
  return fig


def feature_grid(maps, channels=8, title=""):
  """Rows of feature maps: {row label: (h, w, c) array of one example}; columns are its first
  `channels` channels. Each column shares one colour scale across rows, so rows compare directly."""
  rows = list(maps)
  n = min(channels, min(m.shape[-1] for m in maps.values()))
  fig, axes = figure(1.2 * n + 1.5, 1.25 * len(rows) + 0.6, len(rows), n, squeeze=False)
  for c in range(n):
    column = [np.asarray(maps[r])[..., c] for r in rows]
    low, high = min(float(m.min()) for m in column), max(float(m.max()) for m in column)
    for i, m in enumerate(column):
      ax = axes[i, c]
      ax.imshow(m, cmap="viridis", vmin=low, vmax=high)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(f"channel {c}", fontsize=8)
      if c == 0:
        ax.set_ylabel(rows[i], fontsize=8, rotation=0, ha="right", va="center")
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def image_rows(images, title="", cmap="viridis", labels=None):
  """Rows of 2-D images: {row label: [(h, w) arrays]}, one colour scale per image; `labels` names
  the columns."""
  rows = list(images)
  n = max(len(v) for v in images.values())
  fig, axes = figure(1.35 * n + 1.5, 1.35 * len(rows) + 0.6, len(rows), n, squeeze=False)
  for i, row in enumerate(rows):
    for j in range(n):
      ax = axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      if j < len(images[row]):
        ax.imshow(np.asarray(images[row][j]), cmap=cmap)
      else:
        ax.axis("off")
      if i == 0 and labels:
        ax.set_title(labels[j], fontsize=8)
      if j == 0:
        ax.set_ylabel(row, fontsize=8, rotation=0, ha="right", va="center")
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def heatmaps(matrices, title=""):
  """Rows of matrices, e.g. FSP matrices: {row label: [2-D arrays]} with one column per index (a
  section); each column shares one colour scale across rows."""
  rows = list(matrices)
  n = len(matrices[rows[0]])
  fig, axes = figure(2.6 * n + 1.2, 2.4 * len(rows) + 0.6, len(rows), n, squeeze=False)
  for j in range(n):
    column = [np.asarray(matrices[r][j]) for r in rows]
    low, high = min(float(m.min()) for m in column), max(float(m.max()) for m in column)
    for i, m in enumerate(column):
      ax = axes[i, j]
      image = ax.imshow(m, cmap="magma", vmin=low, vmax=high)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f"{rows[i]}: {j + 1} ({m.shape[0]}×{m.shape[1]})", fontsize=8)
    fig.colorbar(image, ax=axes[:, j].tolist(), shrink=0.8)
  fig.suptitle(title)
  return fig


def lines(series, xlabel="step", ylabel="", title="", marker="o"):
  """One line per {label: [(x, y)]}."""
  fig, ax = figure(6.5, 3.6)
  for i, (label, points) in enumerate(series.items()):
    if points:
      ax.plot(*zip(*points), marker=marker, markersize=3, color=f"C{i}", label=label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def exits(exit_rows, ensemble=None, title="accuracy of each exit against its cost"):
  """BYOT's early-exit trade-off: each exit's test accuracy against the MACs it costs
  (summary.json's `exits`: {exit, after, macs, test_accuracy}), and the ensemble's accuracy."""
  fig, ax = figure(6, 3.8)
  macs = [e["macs"] for e in exit_rows]
  accs = [100 * e["test_accuracy"] for e in exit_rows]
  ax.plot(macs, accs, "o-", color="C0", label="exit")
  for e, x, y in zip(exit_rows, macs, accs):
    ax.annotate(f"{e['exit']} ({e['after']})", (x, y), textcoords="offset points", xytext=(4, -12), fontsize=8)
  if ensemble is not None:
    ax.axhline(100 * ensemble, color="C1", linestyle="--", label="ensemble of the exits")
  ax.set_xlabel("MACs per example")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig

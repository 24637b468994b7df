"""Small matplotlib figures for Dagster metadata, rendered as inline PNG Markdown.

Figures are built with the object API on an Agg canvas (no ``pyplot``, so no global figure
state, no GUI backend and nothing happens at import) and turned into
``![name](data:image/png;base64,...)`` Markdown, which the Dagster UI shows inline.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GROUP_ORDER: tuple[str, ...] = ("common", "rare", "target")
GROUP_COLORS = {"common": "#9e9e9e", "rare": "#1f77b4", "target": "#d62728"}
OTHER_COLOR = "#bcbd22"  # rows without a known group
FIGSIZE = (5.0, 3.6)
DPI = 80


def new_figure(figsize: tuple[float, float] = FIGSIZE) -> Figure:
    """A figure attached to an Agg canvas (rendering without a display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib: imported where a figure is drawn
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def png_markdown(fig: Figure, name: str) -> str:
    """``![name](data:image/png;base64,...)``: an image the Dagster UI renders inline."""
    data = base64.b64encode(png_bytes(fig)).decode("ascii")
    alt = name.replace("[", "(").replace("]", ")")
    return f"![{alt}](data:image/png;base64,{data})"


def _groups_in_order(groups: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(str(g) for g in groups))
    return [g for g in GROUP_ORDER if g in present] + sorted(g for g in present if g not in GROUP_ORDER)


def embedding_map(coords: np.ndarray, groups: Sequence[str], outliers: Sequence[bool], title: str) -> Figure:
    """2-D map of crops coloured by group (common / rare / target); outliers get a black ring."""
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    groups = np.asarray([str(g) for g in groups], dtype=object)
    outliers = np.asarray(outliers, dtype=bool)
    fig = new_figure()
    ax = fig.add_subplot()
    for group in _groups_in_order(groups):
        mask = groups == group
        ax.scatter(coords[mask, 0], coords[mask, 1], s=14, c=GROUP_COLORS.get(group, OTHER_COLOR),
                   label=f"{group} ({int(mask.sum())})", alpha=0.8, linewidths=0)
    if outliers.any():
        ax.scatter(coords[outliers, 0], coords[outliers, 1], s=48, facecolors="none", edgecolors="black",
                   linewidths=0.8, label=f"outlier ({int(outliers.sum())})")
    _finish_map(ax, title)
    return fig


def cluster_map(coords: np.ndarray, labels: Sequence[int], names: dict[int, str], title: str) -> Figure:
    """2-D map of crops coloured by cluster id (-1, density noise, in light grey)."""
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    labels = np.asarray(labels, dtype=int)
    fig = new_figure()
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    for i, label in enumerate(sorted(set(labels.tolist()))):
        mask = labels == label
        color = "#dddddd" if label < 0 else cmap(i % 10)
        name = names.get(label, "noise" if label < 0 else str(label))
        ax.scatter(coords[mask, 0], coords[mask, 1], s=14, color=color, alpha=0.85, linewidths=0,
                   label=f"{label}: {name[:28]} ({int(mask.sum())})")
    _finish_map(ax, title)
    return fig


def _finish_map(ax, title: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, loc="best", framealpha=0.7, markerscale=0.8)


def score_histogram(scores: Sequence[float], groups: Sequence[str], bins: int = 20) -> Figure:
    """Histogram of ``top_score`` per group (stacked), over the scores' range."""
    scores = np.asarray(scores, dtype=float)
    groups = np.asarray([str(g) for g in groups], dtype=object)
    ok = np.isfinite(scores)
    fig = new_figure()
    ax = fig.add_subplot()
    order = _groups_in_order(groups[ok])
    if ok.any():
        lo, hi = float(scores[ok].min()), float(scores[ok].max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-3, bins + 1)
        ax.hist([scores[ok & (groups == g)] for g in order], bins=edges, stacked=True,
                color=[GROUP_COLORS.get(g, OTHER_COLOR) for g in order],
                label=[f"{g} ({int((ok & (groups == g)).sum())})" for g in order])
        ax.legend(fontsize=7)
    ax.set_xlabel("top concept score", fontsize=8)
    ax.set_ylabel("crops", fontsize=8)
    ax.set_title("Concept score distribution by group", fontsize=9)
    return fig


def class_counts_plot(report: pd.DataFrame) -> Figure:
    """Per class: GT instances in the mined split vs the random-split mean (± std)."""
    df = report.sort_values("class_name")
    x = np.arange(len(df))
    width = 0.4
    fig = new_figure((max(4.0, 0.55 * len(df) + 1.5), 3.6))
    ax = fig.add_subplot()
    ax.bar(x - width / 2, df["mined"].to_numpy(dtype=float), width, label="mined", color=GROUP_COLORS["target"])
    ax.bar(x + width / 2, df["random_mean"].to_numpy(dtype=float), width, yerr=df["random_std"].to_numpy(dtype=float),
           label="random (mean ± std)", color=GROUP_COLORS["common"], capsize=2)
    ax.set_xticks(x, [str(c) for c in df["class_name"]], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("GT instances", fontsize=8)
    ax.set_title("Per-class instances: mined split vs random", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def tsne_map(X: np.ndarray, max_points: int, perplexity: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """2-D t-SNE of at most ``max_points`` seeded-random rows of ``X`` (for plots); None if too few."""
    n = len(X)
    m = min(n, max_points)
    if m < 4:
        return None
    from sklearn.manifold import TSNE

    index = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
    perplexity = min(perplexity, (m - 1) / 3)
    coords = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(X[index])
    return coords.astype(np.float32), index

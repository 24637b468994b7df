"""What `embedding_clusters` reports about its clusters: sizes tallied over every crop, plots.

:class:`ClusterTally` is fed one batch of crops at a time (with their labels), so the cluster
table covers all crops while memory holds only counters and the crops on the 2-D map.
"""

from __future__ import annotations

from collections import Counter

import dagster as dg
import numpy as np
import pandas as pd

from conceptmine_assets.lib.plots import cluster_map, embedding_map, png_markdown, score_histogram
from conceptmine_assets.lib.tables import markdown_table


class ClusterTally:
    """Per (method, label): crops, outliers and groups; plus the crops on the map."""

    def __init__(self, methods: list[str], coords: dict[str, tuple[float, float]]):
        self.methods, self.coords = methods, coords
        self.sizes: Counter = Counter()
        self.outliers: Counter = Counter()
        self.groups: Counter = Counter()
        self.num_crops = self.num_unscored = self.num_outliers = 0
        self.on_map: list[tuple[str, float, float, str, bool, int]] = []

    def add(self, rows: pd.DataFrame, labels: list[np.ndarray]) -> None:
        groups = rows["group"].fillna("unscored").astype(str).tolist()
        outlier = rows["is_outlier"].astype(bool).tolist()
        self.num_crops += len(rows)
        self.num_unscored += int(rows["group"].isna().sum())
        self.num_outliers += int(sum(outlier))
        for method, lab in zip(self.methods, labels):
            for label, group, out in zip(lab.tolist(), groups, outlier):
                self.sizes[(method, label)] += 1
                self.outliers[(method, label)] += out
                self.groups[(method, label, group)] += 1
        for i, d in enumerate(rows["detection_id"]):
            if d in self.coords:
                x, y = self.coords[d]
                self.on_map.append((d, x, y, groups[i], outlier[i], int(labels[0][i])))

    def table(self, names: dict) -> str:
        """Markdown: one row per method and cluster with size, outliers, groups and both names."""
        rows = []
        for method, label in sorted(self.sizes):
            groups = sorted(((g, n) for (m, lab, g), n in self.groups.items() if m == method and lab == label),
                            key=lambda p: (-p[1], p[0]))
            member, text = names[method].get(label, (None, None))
            rows.append({
                "method": method, "cluster": "noise" if label == -1 else label, "size": self.sizes[(method, label)],
                "outliers": self.outliers[(method, label)], "groups": ", ".join(f"{g} {n}" for g, n in groups),
                "by members": member or "n/a (not in the sample)", "by text": text or "n/a",
            })
        return markdown_table(pd.DataFrame(rows)) if rows else "no clusters"


def cluster_plots(tally: ClusterTally, sample: pd.DataFrame, kmeans_names: dict, k: int, map_source: str) -> dict:
    """Embedding map by group with outliers ringed, k-means cluster map (crops on the map), and
    the top-score distribution by group (sample)."""
    plots = {}
    if tally.on_map:
        m = pd.DataFrame(tally.on_map, columns=["detection_id", "x", "y", "group", "is_outlier", "label"])
        m = m.sort_values("detection_id")
        xy = m[["x", "y"]].to_numpy()
        plots["embedding_map"] = dg.MetadataValue.md(png_markdown(embedding_map(
            xy, m["group"], m["is_outlier"], f"Crops by group, outliers ringed ({map_source})"), "embedding map"))
        short = {label: (pair[0] or "").split(",")[0] for label, pair in kmeans_names.items()}
        plots["cluster_map"] = dg.MetadataValue.md(png_markdown(cluster_map(
            xy, m["label"].to_numpy(), short, f"k-means clusters (k={k})"), "k-means cluster map"))
    plots["score_distribution"] = dg.MetadataValue.md(png_markdown(
        score_histogram(sample["top_score"], sample["group"].fillna("unscored")), "score distribution"))
    return plots

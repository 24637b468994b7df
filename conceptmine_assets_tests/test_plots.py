"""The explainability plots render to inline PNG Markdown (also for empty inputs)."""

import numpy as np
import pandas as pd
import pytest

from conceptmine_assets.lib import plots
from conceptmine_assets_tests.helpers import PNG_MAGIC, decode_png


@pytest.mark.parametrize(
    "make",
    [
        lambda: plots.embedding_map(np.random.default_rng(0).normal(size=(30, 2)), ["common"] * 20 + ["target"] * 10,
                                    [i % 7 == 0 for i in range(30)], "map"),
        lambda: plots.cluster_map(np.random.default_rng(0).normal(size=(10, 2)), [0] * 5 + [-1] * 5, {0: "car"}, "c"),
        lambda: plots.score_histogram([0.2, 0.5, np.nan, 0.9], ["rare", "common", "common", "weird"]),
        lambda: plots.score_histogram([], []),
        lambda: plots.class_counts_plot(pd.DataFrame({"class_name": ["car", "truck"], "mined": [3, 2],
                                                      "random_mean": [2.5, 0.4], "random_std": [1.0, 0.5]})),
        lambda: plots.class_counts_plot(pd.DataFrame(columns=["class_name", "mined", "random_mean", "random_std"])),
    ],
)
def test_plots_render_to_inline_png(make):
    png = decode_png(plots.png_markdown(make(), "a [plot]"))
    assert png.startswith(PNG_MAGIC) and len(png) > 1000

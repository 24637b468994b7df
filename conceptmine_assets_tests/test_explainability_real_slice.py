"""`embedding_clusters`, `gallery` and the mining-quality report's plot end to end on the real slice
(the session's ``real_run``)."""

import dagster as dg
import pandas as pd

from conceptmine_assets.assets.embedding_clusters import CLUSTER_COLUMNS
from conceptmine_assets.assets.gallery import gallery
from conceptmine_assets.lib.gallery import ITEM_COLUMNS
from conceptmine_assets_tests.helpers import PNG_MAGIC, REAL_SCENE, decode_png, pipeline_env


def test_explain_assets_on_the_real_slice(real_run):
    store, result = real_run["store"], real_run["result"]
    assert result.success
    crops = pd.read_parquet(store / "crops" / f"{REAL_SCENE}.parquet")
    clusters = pd.read_parquet(store / "embedding_clusters.parquet")
    assert list(clusters.columns) == CLUSTER_COLUMNS
    assert sorted(clusters["detection_id"]) == sorted(crops["detection_id"]) and len(crops) > 20
    md = result.asset_materializations_for_node("embedding_clusters")[0].metadata
    k = md["kmeans_k"].value
    assert 2 <= k <= 10 and clusters["kmeans_cluster"].nunique() == k
    assert md["kmeans_calinski_harabasz"].value > 0 and md["kmeans_davies_bouldin"].value > 0
    assert md["text_naming"].value.startswith("not available")  # offline profile: spaces differ
    assert clusters["kmeans_text_name"].isna().all() and clusters["kmeans_name"].str.contains("%").all()
    assert md["map_source"].value.startswith("outlier_reference t-SNE") and clusters["map_x"].notna().all()
    for key in ("embedding_map", "cluster_map", "score_distribution"):
        assert decode_png(md[key].value).startswith(PNG_MAGIC)
    # the crops' top concepts name the clusters: each cluster's first name is its most frequent top concept
    for label, part in clusters.groupby("kmeans_cluster"):
        top = part["top_concept"].value_counts()
        assert part["kmeans_name"].iloc[0].split(" ")[0] in set(top[top == top.max()].index)


def test_gallery_on_the_real_slice_is_idempotent(real_run):
    store, result = real_run["store"], real_run["result"]
    split = pd.read_parquet(store / "mined_split.parquet")
    # the one sample, for its best evidence: target or rare crops that are outliers (ranked, rare first)
    assert len(split) == 1 and split["reason"].iloc[0] in ("target_outlier", "rare_outlier")
    items = pd.read_parquet(store / "gallery.parquet")
    assert list(items.columns) == ITEM_COLUMNS
    mined = items[items["section"] == "mined"]
    assert sorted(mined["detection_id"]) == sorted(split["detection_ids"].iloc[0])
    assert mined["group"].isin(["target", "rare"]).all() and len(mined) <= 3 and items["has_image"].all()
    assert split["crop_scores"].iloc[0].tolist() == sorted(split["crop_scores"].iloc[0], reverse=True)
    page = real_run["gallery"].read_text()
    assert page.count('<figure class="item"') == len(items) and page.count("data:image/jpeg;base64,") == len(items)
    md = result.asset_materializations_for_node("gallery")[0].metadata
    assert md["html_path"].value == str(real_run["gallery"]) and md["num_items_without_image"].value == 0
    before = real_run["gallery"].read_bytes()
    from conceptmine_assets.definitions import ASSET_MODULES, build_resources
    from conceptmine_assets.settings import Settings

    with pipeline_env(real_run["dataroot"], real_run["store"].parent), dg.DagsterInstance.get() as instance:
        again = dg.materialize(dg.load_assets_from_modules(ASSET_MODULES), selection=[gallery], instance=instance,
                               resources=build_resources(Settings.from_env()),
                               run_config={"ops": {"gallery": {"config": {"output_dir": str(real_run["gallery"].parent)}}}})
    assert again.success and real_run["gallery"].read_bytes() == before
    # no temporary file left: the page and its content record (lib/integrity.py)
    assert sorted(p.name for p in real_run["gallery"].parent.iterdir()) == [".index.html.sha256", "index.html"]


def test_mining_quality_report_has_the_per_class_plot(real_run):
    md = real_run["report_metadata"]
    assert md is not None and decode_png(md["per_class_plot"].value).startswith(PNG_MAGIC)

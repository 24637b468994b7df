"""The gallery's items and HTML page from hand-made crops (pure), and the SQL-chosen candidates
giving the same items as the whole store."""

import base64

import numpy as np
import pandas as pd

from conceptmine_assets.lib.gallery import ITEM_COLUMNS, gallery_items, render_gallery, top_concepts
from conceptmine_assets.lib.reasons import why_selected


def crop_row(det: str, sample: str, group: str, score: float, cls: str = "car", **extra) -> dict:
    return {
        "detection_id": det, "scene_name": "scene-x", "sample_token": sample, "channel": "CAM_FRONT",
        "class_name": cls, "caption": f"a {cls}", "caption_status": "ok", "caption_backend": "template",
        "top_concept": cls, "top_score": score, "group": group, "concept_names": ["car", "truck", "cone"],
        "concept_scores": np.array([0.2, score, 0.1], dtype=np.float32), "is_outlier": False,
        "outlier_detectors": [], "quality_flags": [], "lidar_points": 10, "lidar_median_depth": 7.5,
        "image_jpeg": b"\xff\xd8jpeg-" + det.encode(), **extra,
    }


def hand_made() -> tuple[pd.DataFrame, pd.DataFrame]:
    crops = pd.DataFrame([
        crop_row("a1", "sA", "target", 0.7, "truck", is_outlier=True, outlier_detectors=["iforest", "knn"]),
        crop_row("a2", "sA", "common", 0.9),
        crop_row("b1", "sB", "common", 0.8),
        crop_row("b2", "sB", "rare", 0.6, "cone"),
        crop_row("b3", "sB", "target", 0.5, "truck"),
        crop_row("c1", "sC", "rare", 0.4, "cone", lidar_points=None, lidar_median_depth=None),
    ])
    split = pd.DataFrame({
        "sample_token": ["sA", "sB"], "scene_name": ["scene-x"] * 2, "reason": ["target_outlier", "random"],
        "rank": [0, 1], "detection_ids": [["a1", "gone"], []],
    })
    return split, crops


def test_gallery_items_mined_then_all_crops():
    split, crops = hand_made()
    items, missing = gallery_items(split, crops, max_crops_per_sample=2, all_crops_limit=4)
    assert missing == 1  # "gone" is not a stored crop
    mined = items[items["section"] == "mined"]
    assert mined["detection_id"].tolist() == ["a1", "b3", "b2"]  # qualifying crop; random sample: target first
    assert mined["reason"].tolist() == ["target_outlier", "random", "random"]
    assert "outlier by iforest+knn" in mined["why"].iloc[0]
    everything = items[items["section"] == "all"]
    assert everything["detection_id"].tolist() == ["a1", "b3", "b2", "c1"]  # target, rare by score, common cut
    assert everything["reason"].tolist() == ["target_outlier", "random", "random", None]  # the sample's reason
    assert items["position"].tolist() == list(range(len(items)))
    assert set(ITEM_COLUMNS) <= set(items.columns) and items["has_image"].all()


def test_gallery_html_escapes_text_and_counts_items():
    split, crops = hand_made()
    crops.loc[0, "caption"] = '<script>alert("x")</script> & co'
    crops.loc[0, "class_name"] = 'truck"><b>'
    items, _ = gallery_items(split, crops, all_crops_limit=0)
    page = render_gallery(items, title="<Gallery>", summary="s & t")
    assert page.count('<figure class="item"') == len(items) == 4
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page
    assert 'data-class="truck&quot;&gt;&lt;b&gt;"' in page and "&lt;Gallery&gt;" in page
    assert page.count("data:image/jpeg;base64,") == 4
    assert base64.b64encode(b"\xff\xd8jpeg-a1").decode() in page
    assert "LiDAR: 10 points, median depth 7.5 m" in page
    assert "src=\"http" not in page and "<link" not in page  # self-contained
    assert 'id="section-all"' not in page  # no all-crops section asked for


def test_gallery_edge_cases():
    _, crops = hand_made()
    empty = pd.DataFrame(columns=["sample_token", "scene_name", "reason", "rank", "detection_ids"])
    items, missing = gallery_items(empty, crops, all_crops_limit=100)
    assert missing == 0 and (items["section"] == "all").sum() == 6
    page = render_gallery(items)
    assert "Mined split (0)" in page and "no items" in page and "LiDAR: no sweep for this frame" in page
    assert top_concepts(["a", "b", "c"], [0.1, 0.5, 0.5], n=2) == [("b", 0.5), ("c", 0.5)]
    assert why_selected(None, {"group": None}, "all") == "group unscored; its sample is not in the mined split"
    assert why_selected("rare", {"group": "target"}, "all").endswith("its sample is in the mined split (rare)")


def test_gallery_candidates_pick_the_same_items_as_the_whole_store(store, instance, tmp_path):
    """The SQL-chosen candidates (bounded) give gallery_items exactly what the whole crop table gives."""
    from conceptmine_assets.assets.gallery import _FROM, _LIGHT, GalleryConfig, candidates
    from conceptmine_assets.resources.store_sql import connect, stored_tables
    from conceptmine_assets_tests.store_helpers import run_split, seed_store

    seed_store(store)
    run_split(store, instance, target_frac=0.1, rare_frac=0.05, random_frac=0.1, output_dir=str(tmp_path / "s"))
    tables = stored_tables(str(store))
    config = GalleryConfig(max_crops_per_sample=1, max_all_crops=5, max_per_group_class=1, samples_per_page=3)
    with connect(tables["mined_split"], tables["concept_scores"], tables["outlier_flags"]) as con:
        split = con.execute("SELECT sample_token, scene_name, reason, rank, detection_ids FROM mined_split").df()
        found = candidates(con, config)
        everything = con.execute(f"SELECT {_LIGHT} {_FROM}").df()
    everything["is_outlier"] = everything["is_outlier"].astype(bool)
    args = (config.max_crops_per_sample, config.max_all_crops, config.max_per_group_class, config.samples_per_page)
    fast, _ = gallery_items(split, found, *args)
    exact, _ = gallery_items(split, everything, *args)
    assert len(found) < len(everything)
    pd.testing.assert_frame_equal(fast[ITEM_COLUMNS], exact[ITEM_COLUMNS])
    assert set(fast["page"]) == set(range(1, 4)) and (fast.loc[fast["section"] == "all", "page"] == 1).all()


def test_gallery_says_each_mined_crops_evidence_score_and_parts():
    split, crops = hand_made()
    split["detection_ids"] = [["a1"], []]
    split["duplicate_of"] = ["zz9", None]
    for column, values in (("crop_scores", [[0.812], []]), ("crop_outlier", [[0.97], []]), ("crop_rarity", [[0.85], []]),
                           ("crop_confidence", [[0.7], []]), ("crop_detector_confidence", [[0.95], []])):
        split[column] = values
    items, _ = gallery_items(split, crops)
    why = items.loc[items["detection_id"] == "a1", "why"].iloc[0]
    assert ("evidence score 0.812 = outlier 0.97, rarity 0.85, concept 0.70, x detector confidence 0.95" in why
            and "repeats chosen crop zz9" in why), why
    assert "evidence score 0.812" in render_gallery(items)  # the page shows it


def test_the_explorer_says_a_mined_crops_evidence_score():
    from conceptmine_assets.lib.explain import why_mined

    split = {"reason": "rare_outlier", "rank": 0, "detection_ids": ["d1", "d2"], "duplicate_of": "d0",
             "crop_scores": [0.8, 0.5], "crop_outlier": [0.99, 0.5], "crop_rarity": [0.86, 0.3],
             "crop_confidence": [0.82, 0.7], "crop_detector_confidence": [0.95, 0.9]}
    text = why_mined({"detection_id": "d1", "top_concept": "animal_on_road", "top_score": 0.82, "group": "rare"},
                     {"outlier_detectors": ["small_cluster"]}, split, True)
    assert "evidence score 0.800 = outlier 0.99, rarity 0.86, concept 0.82, x detector confidence 0.95" in text
    assert "repeats chosen crop d0" in text
    assert "evidence score" not in why_mined({"detection_id": "d9"}, None, split, False)

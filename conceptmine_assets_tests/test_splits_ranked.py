"""The ranked strategy and the evidence score on hand-made tables: the score's parts, rank order by
score, near-duplicate suppression, rare-first budgets, and that the tier strategies are unchanged."""

import duckdb
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from conceptmine_assets.lib.diverse import DiversePicker, candidates
from conceptmine_assets.lib.evidence import EvidenceParams, evidence_sql, register_reviews
from conceptmine_assets.lib.outliers import DETECTORS
from conceptmine_assets.lib.splits import SplitParams, select_ranked

DIM = 16


def unit(seed: int, near: np.ndarray | None = None, noise: float = 0.02) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(DIM) if near is None else near + noise * rng.standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def store(rows: list[dict], reviews: pd.DataFrame | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with concept_scores, outlier_flags and embeddings views over
    ``rows`` (one dict per crop) and the evidence view."""
    df = pd.DataFrame(rows)
    cs = df[["detection_id", "sample_token", "group", "top_concept", "top_score"]].assign(
        scene_name="scene-0", class_name="x", caption="a thing")
    of = df[["detection_id", "is_outlier", "outlier_detectors", "outlier_evidence"]]
    emb = pd.DataFrame({"detection_id": df["detection_id"], "embedding": df["vector"].map(list)})
    con = duckdb.connect()
    for name, table in (("cs", cs), ("of", of), ("emb", emb)):
        con.register(name, table)
    # tables, not views over the registered frames: the ranked stream reads on a cursor of its own
    con.execute("CREATE TABLE concept_scores AS SELECT * FROM cs")
    con.execute("CREATE TABLE outlier_flags AS SELECT * FROM of")
    con.execute("CREATE TABLE embeddings AS SELECT detection_id, embedding::FLOAT[] AS embedding FROM emb")
    con.execute("CREATE TABLE detections AS SELECT detection_id, 1.0::FLOAT AS confidence FROM cs")
    register_reviews(con, reviews, {"animal_on_road": "rare", "truck": "target", "car": "common", "bus": "rare"})
    return con


def row(sample: str, group: str, concept: str, outlier: bool, vector: np.ndarray, i: int = 0,
        evidence: float | None = None, top: float = 0.8) -> dict:
    return {"detection_id": f"{sample}/{i}", "sample_token": sample, "group": group, "top_concept": concept,
            "top_score": top, "is_outlier": outlier, "outlier_detectors": list(DETECTORS[:3]) if outlier else [],
            "outlier_evidence": (0.95 if outlier else 0.4) if evidence is None else evidence, "vector": vector}


def universe(n: int) -> pd.DataFrame:
    return pd.DataFrame({"sample_token": [f"s{i:02d}" for i in range(n)], "scene_name": "scene-0"})


def test_evidence_score_parts_follow_the_documented_formula():
    truck = unit(0)
    rows = [row(f"s{i:02d}", "target", "truck", True, unit(10 + i)) for i in range(8)]
    rows.append(row("s08", "rare", "animal_on_road", True, unit(1), evidence=0.99))
    rows.append(row("s09", "common", "car", False, truck, top=1.4))  # a cosine above 1 is clipped
    with store(rows) as con:
        con.execute("UPDATE detections SET confidence = 0.5 WHERE detection_id = 's07/0'")
        ev = con.execute(evidence_sql(EvidenceParams())).df().set_index("detection_id")
    n = len(rows)
    cat = ev.loc["s08/0"]
    assert cat["rarity"] == pytest.approx(np.log(n / 1) / np.log(n))
    assert cat["outlier"] == pytest.approx(0.99)
    assert cat["confidence"] == pytest.approx(0.8)
    assert cat["score"] == pytest.approx(1.0 * (0.4 * cat["outlier"] + 0.4 * cat["rarity"] + 0.2 * 0.8))
    truck0 = ev.loc["s00/0"]
    assert truck0["rarity"] == pytest.approx(np.log(n / 8) / np.log(n))
    assert truck0["score"] == pytest.approx(0.9 * (0.4 * truck0["outlier"] + 0.4 * truck0["rarity"] + 0.2 * 0.8))
    assert ev.loc["s09/0", "confidence"] == 1.0 and ev.loc["s09/0", "score"] == 0.0  # common: weight 0
    s07 = ev.loc["s07/0"]  # the detector's confidence scales the whole score
    assert s07["confidence"] == pytest.approx(0.8) and s07["detector_confidence"] == pytest.approx(0.5)
    assert s07["score"] == pytest.approx(np.sqrt(0.5) * truck0["score"], rel=1e-6)
    assert cat["score"] > truck0["score"]  # the rare concept outranks the frequent target class


def test_ranked_takes_samples_by_score_and_defers_near_duplicates():
    """Six near-copies of one truck (strong outliers), a cat, a bench and a plain truck: a budget
    of 4 takes the cat, the bench, ONE copy of the truck and the plain truck; the other copies are
    deferred, and only taken once nothing new is left."""
    truck = unit(0)
    rows = [row(f"s{i:02d}", "target", "truck", True, unit(100 + i, near=truck), evidence=0.97 - 0.01 * i)
            for i in range(6)]
    rows += [row("s06", "rare", "animal_on_road", True, unit(1), evidence=0.9),
             row("s07", "rare", "static_object", True, unit(2), evidence=0.7),
             row("s08", "target", "truck", False, unit(3)),
             row("s09", "common", "car", True, unit(4))]
    # pad the store with common crops so that concept frequencies are realistic
    rows += [row(f"s{10 + i:02d}", "common", "car", False, unit(200 + i)) for i in range(30)]
    params = SplitParams(target_frac=0.1, random_frac=0.0)  # 40 samples: 4 slots
    with store(rows) as con:
        con.execute(f"CREATE VIEW evidence AS {evidence_sql(params)}")
        split, caps = select_ranked(con, universe(40), params, batch_rows=3)  # batches split samples
    assert caps == {"target": 4, "rare": 0, "random": 0}
    assert split["sample_token"].tolist() == ["s06", "s07", "s00", "s08"]
    assert split["reason"].tolist() == ["rare_outlier", "rare_outlier", "target_outlier", "target"]
    assert split["score"].iloc[:3].is_monotonic_decreasing  # within the outlier tier, by score
    assert split["duplicate_of"].isna().all()

    params = SplitParams(target_frac=0.2, random_frac=0.0)  # 8 slots: candidates run out
    with store(rows) as con:
        con.execute(f"CREATE VIEW evidence AS {evidence_sql(params)}")
        split, _ = select_ranked(con, universe(40), params)
    assert split["sample_token"].tolist()[:4] == ["s06", "s07", "s00", "s08"]
    assert split["sample_token"].tolist()[4:] == ["s01", "s02", "s03", "s04"]  # deferred copies, in score order
    copies = {f"s{i:02d}/0" for i in range(6)}  # each names the chosen copy it is nearest to
    assert all(d in copies and d != f"{t}/0" for d, t in zip(split["duplicate_of"].iloc[4:], split["sample_token"].iloc[4:]))
    assert split["reason"].iloc[4:].tolist() == ["target_outlier"] * 4

    params = SplitParams(target_frac=0.1, random_frac=0.0, duplicate_cosine=1.0)  # diversity off
    with store(rows) as con:
        con.execute(f"CREATE VIEW evidence AS {evidence_sql(params)}")
        split, _ = select_ranked(con, universe(40), params)
    assert split["sample_token"].tolist() == ["s06", "s07", "s00", "s01"]


def test_ranked_rare_reserve_random_fill_and_random_share():
    rows = [row("s00", "target", "truck", False, unit(0)), row("s01", "rare", "bus", False, unit(1)),
            row("s02", "rare", "barrier", True, unit(2))]
    rows += [row(f"s{3 + i:02d}", "common", "car", False, unit(10 + i)) for i in range(17)]
    params = SplitParams(target_frac=0.2, rare_frac=0.05, random_frac=0.1, seed=4)  # 20: 4 + 1 + 2
    with store(rows) as con:
        con.execute(f"CREATE VIEW evidence AS {evidence_sql(params)}")
        split, caps = select_ranked(con, universe(20), params)
    assert caps == {"target": 4, "rare": 1, "random": 2}
    # the reserve takes the best rare sample; then outliers first; 2 target slots no candidate fills
    assert split["sample_token"].tolist()[:3] == ["s02", "s01", "s00"]
    assert split["reason"].tolist() == ["rare_outlier", "rare", "target", "random_fill", "random_fill",
                                        "random", "random"]
    assert split["sample_token"].is_unique and split["rank"].tolist() == list(range(7))
    assert split.loc[split["reason"].str.startswith("random"), "score"].isna().all()


def test_ranked_is_deterministic_and_independent_of_row_order():
    rows = [row(f"s{i:02d}", "target" if i % 3 else "rare", f"c{i % 5}", i % 2 == 0, unit(i)) for i in range(30)]
    params = SplitParams(target_frac=0.3, random_frac=0.2)
    results = []
    for order in (rows, rows[::-1]):
        with store(order) as con:
            con.execute(f"CREATE VIEW evidence AS {evidence_sql(params)}")
            results.append(select_ranked(con, universe(30), params)[0])
    pd.testing.assert_frame_equal(*results)


def test_candidates_regroup_samples_across_batches():
    rows = pd.DataFrame({"sample_token": ["a", "a", "b", "b", "b", "c"], "tier": 0, "sample_score": 0.5, "k": 1,
                         "detection_id": [f"d{i}" for i in range(6)], "group": "rare", "score": 0.5,
                         "embedding": [[1.0, 0.0]] * 5 + [None]})
    for cut in range(1, 6):
        got = list(candidates([rows.iloc[:cut], rows.iloc[cut:]]))
        assert [c.sample_token for c in got] == ["a", "b", "c"]
        assert [len(c.detection_ids) for c in got] == [2, 3, 1]
        assert got[2].has_vector.tolist() == [False] and got[0].has_vector.tolist() == [True, True]


def test_a_sample_without_embeddings_is_never_a_duplicate():
    picker = DiversePicker(0.9)
    rows = pd.DataFrame({"sample_token": ["a", "b"], "tier": 0, "sample_score": [0.9, 0.8], "k": 1,
                         "detection_id": ["da", "db"], "group": "target", "score": [0.9, 0.8],
                         "embedding": [[1.0, 0.0], None]})
    assert picker.pick(candidates([rows]), 2) == 0
    assert [p.sample_token for p in picker.chosen] == ["a", "b"]


@pytest.mark.parametrize("fields, match", [
    ({"weight_outlier": 0.0, "weight_rarity": 0.0, "weight_confidence": 0.0}, "nothing ranks"),
    ({"duplicate_cosine": 0.0}, "greater than 0"), ({"max_evidence_crops": 0}, "greater than or equal to 1"),
    ({"target_weight": 1.5}, "less than or equal to 1")])
def test_bad_evidence_settings_are_refused(fields, match):
    with pytest.raises(ValidationError, match=match):
        SplitParams(**fields)


@pytest.mark.parametrize("penalty, expected", [(0.1, ["s00", "s01", "s02"]), (1.0, ["s00", "s02", "s03"])])
def test_a_strong_rare_duplicate_may_beat_a_weak_new_candidate(penalty, expected):
    """Two views of one cat (rare, strong) and a common-ish truck: with a small penalty the second
    cat still outranks the truck; with penalty 1 it waits until the new candidates of both tiers run out."""
    cat = unit(0)
    rows = [row("s00", "rare", "animal_on_road", True, unit(1, near=cat), evidence=0.99),
            row("s01", "rare", "animal_on_road", True, unit(2, near=cat), evidence=0.98),
            row("s02", "target", "truck", True, unit(3), evidence=0.6)]
    rows += [row(f"s{3 + i:02d}", "target", "truck", False, unit(10 + i)) for i in range(3)]
    rows += [row(f"s{6 + i:02d}", "common", "car", False, unit(20 + i)) for i in range(14)]
    params = SplitParams(target_frac=0.15, random_frac=0.0, duplicate_penalty=penalty)  # 20 samples: 3 slots
    with store(rows) as con:
        con.execute(f"CREATE VIEW evidence AS {evidence_sql(params)}")
        split, _ = select_ranked(con, universe(20), params)
    assert split["sample_token"].tolist() == expected
    if "s01" in expected:
        assert split.set_index("sample_token").loc["s01", "duplicate_of"] == "s00/0"


def _reviews(rows: list[tuple]) -> pd.DataFrame:
    """Effective reviews: (detection_id or None, sample_token, verdict, concept)."""
    return pd.DataFrame([{"detection_id": d, "sample_token": s, "verdict": v, "concept": c} for d, s, v, c in rows])


def test_reviews_feed_back_into_ranked_selection():
    """A rejected crop never selects its sample; a confirmed one (or sample) comes first with
    reason `confirmed`; a relabel replaces the concept (and its group, rarity and score)."""
    rows = [row("s00", "rare", "animal_on_road", True, unit(0), evidence=0.99),  # the best candidate
            row("s01", "target", "truck", True, unit(1)),
            row("s02", "target", "truck", False, unit(2)),
            row("s03", "common", "car", False, unit(3)),  # a car a reviewer knows is a rare object
            row("s04", "rare", "bus", False, unit(4))]
    rows += [row(f"s{5 + i:02d}", "common", "car", False, unit(10 + i)) for i in range(15)]
    params = SplitParams(target_frac=0.15, random_frac=0.0)  # 20 samples: 3 slots
    with store(rows) as con:
        con.execute(f"CREATE VIEW evidence AS {evidence_sql(params)}")
        before, _ = select_ranked(con, universe(20), params)
    assert before["sample_token"].tolist() == ["s00", "s01", "s04"]
    reviews = _reviews([("s00/0", "s00", "reject", None), (None, "s03", "confirmed", None),
                        ("s04/0", "s04", "relabel", "truck")])
    with store(rows, reviews) as con:
        con.execute(f"CREATE VIEW evidence AS {evidence_sql(params)}")
        after, _ = select_ranked(con, universe(20), params)
        relabelled = con.execute("SELECT top_concept, \"group\" FROM evidence WHERE detection_id = 's04/0'").fetchall()
    # s04's unique "bus" is now one more truck: no longer rarer than s02's (ties: sample token)
    assert after["sample_token"].tolist() == ["s03", "s01", "s02"]
    assert after["reason"].tolist() == ["confirmed", "target_outlier", "target"]
    assert "s00" not in set(after["sample_token"])  # rejected evidence never selects
    assert relabelled == [("truck", "target")]

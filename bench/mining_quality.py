"""Mining quality on the planted benchmark: do the outlier flags and the mined split find the
planted rare clusters, better than chance, without filling the budget with near-duplicates?

    .venv/bin/python bench/mining_quality.py                 # 40 scenes (~67k crops)
    .venv/bin/python bench/mining_quality.py --scenes 8      # a quick look;  --work DIR keeps the data

The store is the scale benchmark's synthetic one (bench/scale_data.py: 40 samples x 6 cameras x
~7 crops per scene, 512-d embeddings from 16 broad clusters and 4 small tight planted rare
clusters, 30 % of each keyframe's crops seen again in the next one with a near-identical
embedding), but the outlier flags are the real ones: the project's detectors are fitted on a
50,000-row reservoir sample (the production default: the same reference size as at 850 scenes,
so the planted clusters hold as many reference rows as there) and every crop is scored with
them (``lib/outliers.flag_columns``). Then each strategy selects with the project's own code
(``lib/splits``, ``lib/evidence``) at the shipped budgets (random 10 % + target 10 %).

It prints:
- per outlier detector, and for alternatives, at an equal flag budget (each score's top 10 %),
  the recall of the planted crops; and the shipped union's flag rate and planted recall;
- per strategy (ranked, priority, paper), the share of planted crops and of planted objects
  (first sightings and their repeats) whose sample is in the split, against the mean of 20
  random splits of the same size; and the share of mined samples whose best crop (highest
  evidence score) is a near-duplicate (embedding cosine >= 0.92) of another mined sample's best
  crop, against the same share in random sets of as many samples.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BUDGET = 0.10
DUPLICATE = 0.92


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def rescore(store: Path, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Fit the reference as `outlier_reference` does and rewrite every scene's outlier_flags with
    the real detectors; the per-crop scores and flags (with planted / object / class columns)."""
    import pyarrow.parquet as pq

    from conceptmine_assets.lib.outliers import DETECTORS, OutlierParams, fit_reference, flag_columns
    from conceptmine_assets.lib.tables import stack_vectors, to_arrow
    from conceptmine_assets.resources.store_sql import connect, reservoir_sample, stored_tables
    from conceptmine_assets.schemas import KEY_COLUMNS, OUTLIER_FLAGS

    tables = stored_tables(str(store))
    started = time.perf_counter()
    with connect(tables["embeddings"]) as con:
        sample = reservoir_sample(con, "SELECT detection_id, embedding FROM embeddings", 50_000, seed)
    X = stack_vectors(sample["embedding"], len(sample["embedding"].iloc[0]))
    reference = fit_reference(X, sample["detection_id"].to_numpy(dtype=object), "bench", OutlierParams(seed=seed))
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    rows = []
    for path in sorted((store / "embeddings").glob("*.parquet")):
        emb = pd.read_parquet(path)
        Xs = stack_vectors(emb["embedding"], reference.dim)
        columns = flag_columns(reference, Xs, emb["detection_id"].to_numpy(dtype=object))
        out = emb[KEY_COLUMNS].copy()
        for name, values in columns.items():
            out[name] = pd.Series(values, index=out.index, dtype=object) if name == "outlier_detectors" else values
        out["quality_flags"] = pd.Series([[] for _ in range(len(out))], index=out.index, dtype=object)
        out["is_quality_outlier"] = False
        pq.write_table(to_arrow(out[OUTLIER_FLAGS.names], "outlier_flags", str(path)), store / "outlier_flags" / path.name)
        keep = ["detection_id", "sample_token", "class_name", *[f"{d}_score" for d in DETECTORS], "is_outlier"]
        rows.append(out[keep].assign(embedding=emb["embedding"].to_numpy()))
    crops = pd.concat(rows, ignore_index=True)
    return crops, {"reference_rows": reference.size, "fit_s": round(fit_s, 1), "score_s": round(time.perf_counter() - started, 1),
                   "thresholds": {k: round(v, 4) for k, v in reference.thresholds.items()}}


def flag_recall(crops: pd.DataFrame, planted: set[str]) -> dict:
    """Planted recall at an equal budget (each score's top 10 %), per detector and alternatives."""
    from sklearn.cluster import MiniBatchKMeans

    from conceptmine_assets.lib.outliers import DETECTORS

    is_planted = crops["detection_id"].isin(planted).to_numpy()
    X = np.stack(crops["embedding"].to_numpy()).astype(np.float32)
    scores = {d: crops[f"{d}_score"].to_numpy(dtype=float) for d in DETECTORS}
    centroid = np.zeros(len(crops))
    for _, idx in crops.groupby("class_name").indices.items():
        c = X[idx].mean(axis=0)
        centroid[idx] = 1 - X[idx] @ (c / np.linalg.norm(c))
    scores["class centroid distance (alternative)"] = centroid
    km = MiniBatchKMeans(64, random_state=0, n_init=3).fit(X[np.random.default_rng(0).permutation(len(X))[:50_000]])
    labels = km.predict(X)
    mass = np.bincount(labels, minlength=64) / len(X)
    scores["k-means(64) small-cluster mass (alternative)"] = -mass[labels]
    out = {}
    for name, s in scores.items():
        flagged = s > np.quantile(s, 1 - BUDGET)
        out[name] = round(float(flagged[is_planted].mean()), 3)
    union = crops["is_outlier"].to_numpy(dtype=bool)
    return {"equal_budget_recall": out, "union_flag_rate": round(float(union.mean()), 3),
            "union_planted_recall": round(float(union[is_planted].mean()), 3),
            "union_recall_over_rate": round(float(union[is_planted].mean() / max(union.mean(), 1e-9)), 2)}


def select(store: Path, strategy: str, seed: int = 0, **evidence) -> pd.DataFrame:
    """The split ``mined_split`` makes with this strategy (its own code, shipped budgets, no reviews)."""
    from conceptmine_assets.assets.splits import select_in_store
    from conceptmine_assets.lib.splits import SplitParams
    from conceptmine_assets.resources.store_sql import connect, stored_tables

    params = SplitParams(random_frac=BUDGET, target_frac=BUDGET, strategy=strategy, seed=seed, **evidence)
    t = stored_tables(str(store))
    with connect(t["frames"], t["detections"], t["concept_scores"], t["outlier_flags"], t["embeddings"]) as con:
        return select_in_store(con, params, str(store), None, {})[0]


def duplicate_share(samples: set[str], best: pd.DataFrame) -> float:
    """Share of ``samples`` (those with a target/rare crop) whose best crop (highest evidence
    score) is a near-duplicate (embedding cosine >= 0.92) of another one's best crop."""
    part = best[best["sample_token"].isin(samples)]
    if len(part) < 2:
        return 0.0
    X = np.stack(part["embedding"].to_numpy()).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    sims = X @ X.T
    np.fill_diagonal(sims, -1.0)
    return float((sims >= DUPLICATE).any(axis=1).mean())


def split_quality(store: Path, crops: pd.DataFrame, planted: pd.DataFrame, penalties: list[float]) -> dict:
    from conceptmine_assets.resources.store_sql import connect, stored_tables

    from conceptmine_assets.lib.evidence import evidence_sql, register_reviews
    from conceptmine_assets.lib.splits import SplitParams

    t = stored_tables(str(store))
    with connect(t["detections"], t["concept_scores"], t["outlier_flags"]) as con:
        register_reviews(con)
        scored = con.execute(f"SELECT detection_id, score FROM ({evidence_sql(SplitParams())}) "
                             "WHERE \"group\" IN ('target', 'rare')").df()
    best = crops.merge(scored, on="detection_id").sort_values(["sample_token", "score"], ascending=[True, False])
    best = best.drop_duplicates("sample_token")
    universe = crops["sample_token"].unique()
    out = {}
    runs = [("ranked", {})] + [(f"ranked, duplicate_penalty {p}", {"duplicate_penalty": p}) for p in penalties]
    for label, evidence in runs + [("priority", {}), ("paper", {})]:
        started = time.perf_counter()
        split = select(store, label.split(",")[0], **evidence)
        seconds = time.perf_counter() - started
        chosen = set(split["sample_token"])
        mined = set(split.loc[~split["reason"].str.startswith("random"), "sample_token"])
        crop_recall = float(planted["sample_token"].isin(chosen).mean())
        object_recall = float(planted.assign(hit=planted["sample_token"].isin(chosen)).groupby("object")["hit"].any().mean())
        rng = np.random.default_rng(0)
        randoms = [set(rng.choice(universe, len(chosen), replace=False)) for _ in range(20)]
        random_crop = float(np.mean([planted["sample_token"].isin(r).mean() for r in randoms]))
        random_object = float(np.mean([planted.assign(hit=planted["sample_token"].isin(r)).groupby("object")["hit"].any().mean()
                                       for r in randoms]))
        rand_mined = [set(rng.choice(universe, len(mined), replace=False)) for _ in range(5)]
        out[label] = {
            "samples": len(chosen), "mined": len(mined), "select_s": round(seconds, 2),
            "planted_crop_recall": round(crop_recall, 3), "random_crop_recall": round(random_crop, 3),
            "crop_recall_over_random": round(crop_recall / max(random_crop, 1e-9), 2),
            "planted_object_recall": round(object_recall, 3), "random_object_recall": round(random_object, 3),
            "repeating_samples_mined": round(duplicate_share(mined, best), 3),
            "repeating_samples_random": round(float(np.mean([duplicate_share(r, best) for r in rand_mined])), 3),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--work", help="keep the data here (a store generated there before is reused)")
    parser.add_argument("--penalties", type=float, nargs="*", default=[0.0, 1.0],
                        help="also run ranked with these duplicate penalties (the default's is in lib/evidence.py)")
    args = parser.parse_args(argv)
    from bench.scale_stages import generate

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="conceptmine-mining-"))
    try:
        started = time.perf_counter()
        if not (work / "planted.parquet").exists():
            generate(work, args.scenes)
        _print(f"generated {args.scenes} scenes in {time.perf_counter() - started:.0f} s")
        planted = pd.read_parquet(work / "planted.parquet")
        crops, fit = rescore(work / "store")
        _print(f"real outlier flags: {json.dumps(fit)}")
        flags = flag_recall(crops, set(planted["detection_id"]))
        _print(f"crops {len(crops)}, planted crops {len(planted)} ({planted['object'].nunique()} objects)")
        _print(f"outlier flags: {json.dumps(flags, indent=1)}")
        split = split_quality(work / "store", crops, planted, args.penalties)
        _print(f"split: {json.dumps(split, indent=1)}")
        ranked = split["ranked"]
        _print("BENCH " + json.dumps({  # the headline figures, one line (bench/scale.py reads it)
            "flags_recall_over_rate": flags["union_recall_over_rate"], "flag_rate": flags["union_flag_rate"],
            "split_recall_over_random": ranked["crop_recall_over_random"],
            "object_recall": ranked["planted_object_recall"], "random_object_recall": ranked["random_object_recall"],
            "repeating_mined": ranked["repeating_samples_mined"], "repeating_random": ranked["repeating_samples_random"],
            "paper_recall_over_random": split["paper"]["crop_recall_over_random"]}))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

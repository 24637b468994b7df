"""The mining score: why one crop outranks another, and the ranked, diverse selection built on it.

**Per crop** (every concept-scored crop; columns of :data:`EVIDENCE_COLUMNS`, all kept so the split
rows, the gallery and ``conceptmine sql`` can say why)::

    outlier    = outlier_evidence                        calibrated outlier evidence, 0..1
    rarity     = ln(N / n_concept) / ln(N)               how rare the top concept is, 0..1
    confidence = clip(top_score, 0, 1)                   how well the top concept fits
    score      = group_weight * sqrt(detector_confidence)
                 * (w_o*outlier + w_r*rarity + w_c*confidence) / (w_o + w_r + w_c)

- ``outlier_evidence`` (``outlier_flags``) is the highest, over the outlier detectors, of the
  crop's score as a percentile of the reference's own scores: comparable across detectors whose
  raw scores are not, and a crop only one detector can see (a tight rare group: small_cluster)
  keeps its full evidence. Which detectors fired decides the tier (below) and is listed with
  every crop. (Measured on ``bench/mining_quality.py``'s planted benchmark, 40 scenes: the mean
  percentile with the share of detectors that fired put 47 % of the planted crops' samples in the
  split, the highest percentile 65 %, and with the square root of the detector's confidence
  below, 72 %; random splits of the same size, 20 %.) A crop without an ``outlier_flags`` row has
  no outlier evidence (0).
- ``N`` is the number of concept-scored crops in the whole store and ``n_concept`` how many of
  them share this crop's top concept (inverse document frequency, normalised to 0..1): the only
  cat among 1.4M crops scores ~0.95, a concept on a third of them ~0.08.
- ``detector_confidence`` is the detection's confidence (1 for dataset annotations or a crop
  without a detections row). Its square root scales everything: a detection the detector
  half-believes has a doubtful class, so its concept's rarity is doubtful too (seen on real
  pixels: a highway barrier detected as a 0.46 "train", the only train in the store, outranked a
  0.95 cat before this factor); the square root keeps a true but faint detection in the race.
- ``group_weight``: ``rare_weight`` (1.0) for group rare, ``target_weight`` (0.9) for group
  target, 0 for common, so at equal evidence a rare concept ranks first.

**Per sample**: its score is the best score of the crops that qualify it (see below), and those
crops, best first, are its *evidence* (at most ``max_evidence_crops``).

**Ranked selection** (``strategy: ranked``, the default) is :mod:`conceptmine_assets.lib.diverse`:
samples in score order, near-duplicates of chosen crops counting ``duplicate_penalty`` less.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


EVIDENCE_COLUMNS = ["outlier", "rarity", "confidence", "detector_confidence", "group_weight", "score"]


class EvidenceParams(BaseModel):
    """The mining score's weights and the diversity rule (``SplitParams`` inherits them)."""

    model_config = ConfigDict(frozen=True)

    weight_outlier: float = Field(0.4, ge=0.0, le=1.0, description="Weight of the calibrated outlier evidence "
                                  "(detector percentiles on the reference, and how many detectors fired).")
    weight_rarity: float = Field(0.4, ge=0.0, le=1.0, description="Weight of the top concept's rarity across the "
                                 "whole store (normalised inverse frequency).")
    weight_confidence: float = Field(0.2, ge=0.0, le=1.0, description="Weight of the concept score itself (top_score). "
                                     "(The detector's confidence scales the whole score.)")
    rare_weight: float = Field(1.0, ge=0.0, le=1.0, description="Multiplier of a rare-group crop's score.")
    target_weight: float = Field(0.9, ge=0.0, le=1.0, description="Multiplier of a target-group crop's score "
                                 "(below rare: at equal evidence the rare concept is mined first).")
    duplicate_cosine: float = Field(0.92, gt=0.0, le=1.0, description="A sample whose evidence crops all have an "
                                    "embedding cosine at least this with crops already chosen is a near-duplicate. "
                                    "1.0: only exact copies.")
    duplicate_penalty: float = Field(0.25, ge=0.0, le=1.0, description="A near-duplicate competes with its score "
                                     "minus this: a strong rare object may still be taken twice, a copy of a "
                                     "frequent one waits behind every new candidate. 1.0: duplicates always last.")
    max_evidence_crops: int = Field(3, ge=1, le=16, description="Evidence crops per sample (best first) that the "
                                    "split lists and the diversity rule compares.")

    @model_validator(mode="after")
    def _some_weight(self) -> EvidenceParams:
        if self.weight_outlier + self.weight_rarity + self.weight_confidence <= 0:
            raise ValueError("weight_outlier, weight_rarity and weight_confidence are all 0: nothing ranks the crops")
        return self


def _lit(x: float) -> str:
    return repr(float(x))


REVIEW_TABLES = {  # what register_reviews creates (empty without reviews): the evidence view reads them
    "crop_review": "detection_id VARCHAR, verdict VARCHAR, concept VARCHAR",
    "sample_review": "sample_token VARCHAR, verdict VARCHAR",
    "concept_groups": "name VARCHAR, grp VARCHAR",
}


def register_reviews(con, effective=None, groups: dict[str, str] | None = None) -> None:
    """The reviews in force (``lib/reviews.effective_reviews``; None: none) and the vocabulary's
    concept groups (for relabels) as the tables the evidence view joins."""
    import pyarrow as pa

    for name, columns in REVIEW_TABLES.items():
        con.execute(f"CREATE OR REPLACE TABLE {name} ({columns})")
    if effective is not None and len(effective):
        crops = effective[effective["detection_id"].notna()]
        samples = effective[effective["detection_id"].isna()]
        def text(values) -> pa.Array:
            return pa.array([v if isinstance(v, str) else None for v in values], pa.string())

        con.register("_crops", pa.table({c: text(crops[c]) for c in ("detection_id", "verdict", "concept")}))
        con.register("_samples", pa.table({c: text(samples[c]) for c in ("sample_token", "verdict")}))
        con.execute("INSERT INTO crop_review SELECT * FROM _crops")
        con.execute("INSERT INTO sample_review SELECT * FROM _samples")
        con.unregister("_crops")
        con.unregister("_samples")
    if groups:
        con.register("_groups", pa.table({"name": list(groups), "grp": list(groups.values())}))
        con.execute("INSERT INTO concept_groups SELECT * FROM _groups")
        con.unregister("_groups")


def evidence_sql(params: EvidenceParams) -> str:
    """One row per concept-scored crop (views ``concept_scores``, ``outlier_flags`` and
    ``detections``; the review tables of :func:`register_reviews`) with its group, concept,
    caption, outlier facts, its review and the score's parts (:data:`EVIDENCE_COLUMNS`).

    Reviews: a crop's own review wins over its sample's. ``relabel`` replaces the top concept
    (and takes that concept's group); ``confirmed`` makes a common crop rare; ``reject`` is kept
    as the ``review`` column (the candidates leave it out)."""
    total = params.weight_outlier + params.weight_rarity + params.weight_confidence
    return f"""
WITH reviewed AS (
  SELECT c.*, coalesce(r.verdict, sr.verdict) AS review,
         CASE WHEN r.verdict = 'relabel' THEN r.concept ELSE c.top_concept END AS concept,
         CASE WHEN r.verdict = 'relabel' THEN coalesce(g.grp, c."group")
              WHEN coalesce(r.verdict, sr.verdict) = 'confirmed' AND c."group" = 'common' THEN 'rare'
              ELSE c."group" END AS grp
  FROM concept_scores c
  LEFT JOIN crop_review r ON r.detection_id = c.detection_id
  LEFT JOIN sample_review sr ON sr.sample_token = c.sample_token
  LEFT JOIN concept_groups g ON g.name = r.concept
),
freq AS (SELECT concept, count(*) AS n FROM reviewed GROUP BY ALL),
total AS (SELECT greatest(count(*), 2) AS n FROM reviewed),
parts AS (
  SELECT c.detection_id, c.sample_token, c.scene_name, c.class_name, c.grp AS "group", c.concept AS top_concept,
         c.top_score, c.caption, c.review,
         coalesce(o.is_outlier, false) AS is_outlier,
         coalesce(o.outlier_detectors, []::VARCHAR[]) AS outlier_detectors,
         coalesce(o.outlier_evidence, 0.0) AS outlier,
         greatest(ln(total.n / coalesce(freq.n, 1)) / ln(total.n), 0.0) AS rarity,
         least(greatest(coalesce(c.top_score, 0.0), 0.0), 1.0) AS confidence,
         least(greatest(coalesce(d.confidence, 1.0), 0.0), 1.0) AS detector_confidence,
         CASE c.grp WHEN 'rare' THEN {_lit(params.rare_weight)} WHEN 'target' THEN {_lit(params.target_weight)}
              ELSE 0.0 END AS group_weight
  FROM reviewed c
  LEFT JOIN outlier_flags o ON o.detection_id = c.detection_id
  LEFT JOIN detections d ON d.detection_id = c.detection_id
  LEFT JOIN freq ON freq.concept IS NOT DISTINCT FROM c.concept
  CROSS JOIN total
)
SELECT *, group_weight * sqrt(detector_confidence) * ({_lit(params.weight_outlier)} * outlier
       + {_lit(params.weight_rarity)} * rarity + {_lit(params.weight_confidence)} * confidence) / {_lit(total)} AS score
FROM parts
"""


def candidates_sql(params: EvidenceParams, groups: tuple[str, ...] = ("target", "rare")) -> str:
    """The ranked candidates (view ``evidence`` = :func:`evidence_sql`, table ``universe`` of
    training-set sample tokens, view ``embeddings``): per sample with a crop of ``groups`` that no
    review rejects, its tier (0: a reviewer confirmed it; 1: an outlier; 2: the rest), score and
    evidence crops (best first, with their embedding), in selection order."""
    in_groups = ", ".join(f"'{g}'" for g in groups)
    return f"""
WITH cand AS (
  SELECT e.* FROM evidence e SEMI JOIN universe u ON u.sample_token = e.sample_token
  WHERE e."group" IN ({in_groups}) AND e.review IS DISTINCT FROM 'reject'
),
tiered AS (
  SELECT sample_token, CASE WHEN bool_or(review = 'confirmed') THEN 0 WHEN bool_or(is_outlier) THEN 1 ELSE 2 END
         AS tier
  FROM cand GROUP BY ALL
),
qualifying AS (
  SELECT c.*, t.tier FROM cand c JOIN tiered t USING (sample_token)
  WHERE t.tier = 2 OR (t.tier = 1 AND c.is_outlier) OR (t.tier = 0 AND c.review = 'confirmed')
),
ranked AS (
  SELECT *, row_number() OVER (PARTITION BY sample_token ORDER BY score DESC, detection_id) AS k,
         max(score) OVER (PARTITION BY sample_token) AS sample_score
  FROM qualifying
)
SELECT r.sample_token, r.tier, r.sample_score, r.k, r.detection_id, r."group" AS "group", r.score, emb.embedding
FROM ranked r LEFT JOIN embeddings emb ON emb.detection_id = r.detection_id
WHERE r.k <= {int(params.max_evidence_crops)}
ORDER BY r.tier, r.sample_score DESC, r.sample_token, r.k
"""

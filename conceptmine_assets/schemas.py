"""Arrow schemas of every stored table: the single contract between stages.

The Parquet IO manager conforms each ``pandas.DataFrame`` output whose asset name is a key of
``SCHEMAS`` to that schema (missing or extra columns are an error naming asset and scene), so
an empty partition is still written with the right columns and types. Vector columns are
declared as ``list<float32>`` here and stored as ``fixed_size_list<float32>[dim]`` (the IO
manager fixes the size from the data, or from ``df.attrs["vector_dims"]`` for empty frames).
"""

from __future__ import annotations

import pyarrow as pa

_str = pa.string()
_f32 = pa.float32()
_f64 = pa.float64()
_i32 = pa.int32()
_i64 = pa.int64()
_vec = pa.list_(_f32)
_f64s = pa.list_(_f64)
_strs = pa.list_(_str)

# The key columns of every per-detection table (detections, crops, embeddings, outlier_flags,
# captions, concept_scores): detection_id is unique; scene_name is the partition key.
_DET_KEYS = [
    ("detection_id", _str),
    ("scene_name", _str),
    ("sample_token", _str),
    ("sample_data_token", _str),
    ("channel", _str),
    ("class_name", _str),
]

KEY_COLUMNS: list[str] = [name for name, _ in _DET_KEYS]

FRAMES = pa.schema(
    [
        ("scene_name", _str),
        ("scene_token", _str),
        ("sample_token", _str),
        ("sample_data_token", _str),
        ("channel", _str),
        ("timestamp", _i64),
        ("image_path", _str),  # relative to the dataroot
        ("width", _i32),
        ("height", _i32),
        ("camera_intrinsic", _f64s),  # 3x3, row-major
        ("sensor2ego_translation", _f64s),
        ("sensor2ego_rotation", _f64s),  # quaternion w, x, y, z
        ("ego2global_translation", _f64s),
        ("ego2global_rotation", _f64s),
        ("lidar_sample_data_token", _str),  # LIDAR_TOP of the same sample; null if none
        ("image_ok", pa.bool_()),
        ("image_error", _str),  # why the image is unusable; null when image_ok
    ]
)

DETECTIONS = pa.schema(
    _DET_KEYS
    + [
        ("detector", _str),  # model identity, e.g. "yolo:yolov8l.pt" or "annotations"
        ("source_class", _str),  # class name as the detector/dataset spells it
        ("confidence", _f32),
        ("x1", _f32),
        ("y1", _f32),
        ("x2", _f32),
        ("y2", _f32),
        ("annotation_token", _str),  # annotations backend only
        ("category", _str),  # nuScenes category, annotations backend only
        ("attributes", _strs),  # nuScenes attribute names, annotations backend only
        ("visibility", _str),  # nuScenes visibility token, annotations backend only
    ]
)

CROPS = pa.schema(
    _DET_KEYS
    + [
        ("confidence", _f32),
        ("x1", _f32),
        ("y1", _f32),
        ("x2", _f32),
        ("y2", _f32),
        ("crop_x1", _i32),  # padded crop window in original pixels
        ("crop_y1", _i32),
        ("crop_x2", _i32),
        ("crop_y2", _i32),
        ("image_jpeg", pa.binary()),
        ("lidar_points", _i32),  # LIDAR_TOP points projected inside the box; null if no LiDAR
        ("lidar_median_depth", _f32),  # metres; null if no LiDAR or no points
        ("brightness", _f32),  # mean luma 0..1
        ("overexposed_frac", _f32),  # share of pixels with luma >= 250/255 (glare)
        ("dark_frac", _f32),  # share of pixels with luma <= 5/255
        ("blur_laplacian_var", _f32),  # variance of the Laplacian; low means blurred
    ]
)

EMBEDDINGS = pa.schema(
    _DET_KEYS
    + [
        ("model_id", _str),
        ("embedding", _vec),  # L2-normalised
    ]
)

OUTLIER_FLAGS = pa.schema(
    _DET_KEYS
    + [
        ("iforest_score", _f32),  # higher = more anomalous
        ("iforest_flag", pa.bool_()),
        ("lof_score", _f32),
        ("lof_flag", pa.bool_()),
        ("knn_score", _f32),
        ("knn_flag", pa.bool_()),
        ("small_cluster_score", _f32),
        ("small_cluster_flag", pa.bool_()),
        ("iforest_pct", _f32),  # each score's percentile among the reference members' (0..1)
        ("lof_pct", _f32),
        ("knn_pct", _f32),
        ("small_cluster_pct", _f32),
        ("outlier_evidence", _f32),  # the highest of the four percentiles: calibrated evidence (lib/evidence.py)
        ("is_outlier", pa.bool_()),
        ("outlier_detectors", _strs),  # which detectors fired
        ("quality_flags", _strs),  # glare / dark / blur
        ("is_quality_outlier", pa.bool_()),
    ]
)

CAPTIONS = pa.schema(
    _DET_KEYS
    + [
        ("status", _str),  # ok | failed | class_name (not selected for the VLM)
        ("backend", _str),
        ("model_id", _str),
        ("raw_answer", _str),
        ("vlm_class", _str),  # parsed class (vocabulary name or "others"); null if none
        ("description", _str),
        ("caption", _str),  # the text used for concept scoring
        ("error", _str),
        ("attempts", _i32),  # timings (latency) go to the materialisation's metadata, never here
        ("text_model_id", _str),  # the embedder's text model that encoded the caption
        ("caption_embedding", _vec),  # L2-normalised text embedding of `caption` (search, scoring)
    ]
)

CONCEPT_SCORES = pa.schema(
    _DET_KEYS
    + [
        ("caption", _str),
        ("vlm_class", _str),
        ("top_concept", _str),
        ("top_score", _f32),
        ("second_concept", _str),
        ("second_score", _f32),
        ("margin", _f32),
        ("joint_label", _str),  # "a|b" when the top two are within the joint margin
        ("top_superclass", _str),
        ("group", _str),  # common | rare | target
        ("weight_text", _f32),
        ("score_mode", _str),  # text+image | text_only
        ("vocabulary_version", _str),
        ("concept_names", _strs),
        ("concept_scores", _vec),
    ]
)

MINED_SPLIT = pa.schema(
    [
        ("sample_token", _str),
        ("scene_name", _str),
        ("reason", _str),  # target_outlier | target | rare_outlier | rare | random | random_fill
        ("rank", _i64),
        ("score", _f64),  # ranked: the sample's evidence score (its best crop's); null otherwise
        ("duplicate_of", _str),  # ranked: the chosen crop this sample's evidence repeats (taken last)
        ("detection_ids", _strs),  # the crops that qualified the sample, best evidence first, and why:
        ("top_concepts", _strs),
        ("top_scores", pa.list_(_f64)),
        ("captions", _strs),
        ("outlier_detectors", _strs),
        ("crop_scores", pa.list_(_f64)),  # each crop's evidence score and its parts (lib/evidence.py)
        ("crop_outlier", pa.list_(_f64)),
        ("crop_rarity", pa.list_(_f64)),
        ("crop_confidence", pa.list_(_f64)),
        ("crop_detector_confidence", pa.list_(_f64)),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "frames": FRAMES,
    "detections": DETECTIONS,
    "crops": CROPS,
    "embeddings": EMBEDDINGS,
    "outlier_flags": OUTLIER_FLAGS,
    "captions": CAPTIONS,
    "concept_scores": CONCEPT_SCORES,
    "mined_split": MINED_SPLIT,
}

VECTOR_COLUMNS = {"embedding", "caption_embedding"}


def column_schema(name: str) -> dict:
    """Asset metadata that shows a stored table's columns in the Dagster UI."""
    import dagster as dg

    columns = [dg.TableColumn(f.name, str(f.type)) for f in SCHEMAS[name]]
    return {"dagster/column_schema": dg.TableSchema(columns=columns)}

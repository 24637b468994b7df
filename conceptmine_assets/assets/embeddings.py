"""`embeddings`: one L2-normalised image embedding per crop, for outlier detection and concept scoring."""

import io
import time

import dagster as dg
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.scenes import MODEL_SCENES_PER_RUN, SceneTables, concat_scenes, split_scenes
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.devices import steady_heap
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.schemas import EMBEDDINGS, KEY_COLUMNS, column_schema

MAX_IDS_IN_ERROR = 20


def decode_crop(data: bytes | None, scene: str, detection_id: str) -> Image.Image:
    """The RGB image of one crop's ``image_jpeg`` bytes; a clear error naming scene and crop."""
    if data is None or len(data) == 0:
        raise ConceptmineError(f"scene {scene}: crop {detection_id} has no image_jpeg bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ConceptmineError(f"scene {scene}: crop {detection_id} image_jpeg is not a readable image: {exc}") from exc


def check_finite(vectors: np.ndarray, detection_ids: list[str], scene: str) -> None:
    """Refuse NaN/inf embeddings (they would poison every distance downstream)."""
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        ids = [detection_ids[i] for i in np.flatnonzero(bad)]
        shown = ", ".join(ids[:MAX_IDS_IN_ERROR]) + (" ..." if len(ids) > MAX_IDS_IN_ERROR else "")
        raise ConceptmineError(f"scene {scene}: {len(ids)} embedding(s) contain NaN or inf: detection ids {shown}")


def embed_crops(crops: pd.DataFrame, embedder: EmbedderResource) -> np.ndarray:
    """(n, d) image embeddings of the crops, decoding only one batch of JPEGs at a time.

    Batches never mix scenes: a crop's last bits depend on the other crops of its forward pass
    (measured with MobileNetV2: 8 % of the rows change when a batch of 32 starts 5 crops later),
    so a scene run alone and in a run of several scenes stores the same vectors."""
    out = np.zeros((len(crops), embedder.load().image_dim), dtype=np.float32)
    scenes = crops["scene_name"].to_numpy()
    with steady_heap():  # one batch's pages serve the next (resources/devices.py)
        for scene in dict.fromkeys(scenes):
            rows = np.flatnonzero(scenes == scene)
            for start in range(0, len(rows), embedder.batch_size):
                part = crops.iloc[rows[start : start + embedder.batch_size]]
                images = [decode_crop(b, scene, d) for b, d in zip(part["image_jpeg"], part["detection_id"])]
                out[rows[start : start + embedder.batch_size]] = embedder.encode_images(images)
    return out


def embeddings_frame(crops: pd.DataFrame, vectors: np.ndarray, model_id: str) -> pd.DataFrame:
    """The stored table: crop keys, model identity and one vector per row."""
    df = crops[KEY_COLUMNS].reset_index(drop=True)
    df["model_id"] = model_id
    df["embedding"] = pd.Series(list(vectors), index=df.index, dtype=object)  # object even when empty
    df = df[EMBEDDINGS.names]
    df.attrs["vector_dims"] = {"embedding": int(vectors.shape[1])}
    return df


@dg.asset(
    deps=["embedding_model"],
    partitions_def=scene_partitions,
    code_version="1",
    kinds={"pytorch", "parquet"},
    group_name="perception",
    metadata=column_schema("embeddings"),
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=MODEL_SCENES_PER_RUN),
)
def embeddings(context: dg.AssetExecutionContext, crops: SceneTables, embedder: EmbedderResource) -> SceneTables:
    """One row per crop of the scene (key: detection_id, plus scene_name, sample_token,
    sample_data_token, channel, class_name): the crop's L2-normalised float32 image embedding
    from the ``embedder`` resource and that model's identity (``model_id``). A crop whose JPEG
    does not decode, or whose vector is NaN/inf, fails the run naming scene and detection ids."""
    scene = ", ".join(context.partition_keys)
    crops = concat_scenes(crops)
    started, cpu = time.perf_counter(), time.process_time()
    loaded = embedder.load()  # once per process and configuration
    load_s = time.perf_counter() - started
    model_id = embedder.image_model_id
    vectors = embed_crops(crops, embedder)
    encode_s = time.perf_counter() - started - load_s
    check_finite(vectors, crops["detection_id"].tolist(), scene)
    df = embeddings_frame(crops, vectors, model_id)
    if df.empty:
        context.log.warning(f"scene {scene}: no crops to embed")
    context.log.info(f"scene {scene}: embedded {len(df)} crops with {model_id} in {encode_s:.2f} s")
    context.add_output_metadata(
        {
            "num_embeddings": len(df),
            "model_id": model_id,
            "dim": loaded.image_dim,
            "shared_space": embedder.shared_space,
            "device": loaded.device,
            "load_seconds": round(load_s, 3),
            "seconds": round(time.perf_counter() - started, 3),
            "cpu_seconds": round(time.process_time() - cpu, 3),  # of the whole process: every thread's
            "ms_per_crop": round(1000 * encode_s / len(df), 2) if len(df) else None,
        }
    )
    return split_scenes(df, context.partition_keys)

"""Caption parsing, the template / qwen2_vl (tiny random twin) / openai (real HTTP server on
127.0.0.1) captioner backends, and the `captions` asset (selection, budget, failures)."""

import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conceptmine_assets.resources.vocabulary import VocabularyResource
from PIL import Image

from conceptmine_assets.assets.captions import CaptionsConfig, captions, crop_table, select_for_vlm
from conceptmine_assets.lib.vocabulary import load_vocabulary
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.lib.captioning import CaptionRequest, match_class, parse_answer, template_caption
from conceptmine_assets.resources.captioner import CaptionerResource, TemplateCaptioner
from conceptmine_assets.resources.openai_captioner import OpenAICaptioner
from conceptmine_assets.resources.qwen2_vl_captioner import Qwen2VLCaptioner
from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
from conceptmine_assets.resources.storage import ParquetIOManager
from conceptmine_assets.schemas import CAPTIONS, CROPS, DETECTIONS, OUTLIER_FLAGS
from conceptmine_assets_tests.helpers import materialize_scene, write_table
from conceptmine_assets_tests.tiny_qwen2_vl import build_tiny_qwen2_vl

SCENE = "scene-test-0001"

# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "raw, vlm_class, description",
    [
        ('{"class": "truck", "description": "A white truck parked by the kerb."}', "truck",
         "A white truck parked by the kerb."),
        ('{"class": "others", "description": "a shopping cart"}', "others", "a shopping cart"),
        ('Sure! Here you go:\n```json\n{"class": "Construction Vehicle", "description": "an excavator"}\n```\nHope this helps.',
         "construction_vehicle", "an excavator"),
        ("{'class': 'bicycles', 'description': 'two bikes on a rack'}", "bicycle", "two bikes on a rack"),
        ('{"label": "traffic-cone", "caption": "orange cone"}', "traffic_cone", "orange cone"),
        ("{class: motorcycle, description: a moped with a rider}", "motorcycle", "a moped with a rider"),
        ('{"class": "truck", "description": "a tanker truck', "truck", "a tanker truck"),  # cut off
        ("class: others\ndescription: a person pushing a cart", "others", "a person pushing a cart"),
        ("Class = Bus; Description = a red double-decker", "bus", "a red double-decker"),
        ("Truck. A white box-truck parked by the kerb.", "truck", "A white box-truck parked by the kerb."),
        ("It looks like a construction-vehicle, maybe a digger.", "construction_vehicle",
         "It looks like a construction-vehicle, maybe a digger."),
        ("others", "others", None),
        ("pedestrians", "pedestrian", None),
        ('{"class": "spaceship", "description": "a silver saucer"}', None, "a silver saucer"),  # not a class
        ("a blurry blob", None, "a blurry blob"),
        ("\x12\x12@@##  !!", None, None),  # garbage
        ("\x12\x16s\x1f\u07fd>\x15E!\ufffd\x01", None, None),  # random bytes with stray letters
        ("", None, None),
        (None, None, None),
    ],
)
def test_parse_answer(raw, vlm_class, description):
    parsed = parse_answer(raw)
    assert (parsed.vlm_class, parsed.description) == (vlm_class, description)
    assert parsed.usable == (vlm_class is not None or description is not None)


@pytest.mark.parametrize(
    "value, expected",
    [("Truck", "truck"), ("construction vehicle", "construction_vehicle"), ("BARRIERS", "barrier"),
     ("buses", "bus"), ("Other", "others"), ("none", "others"), ("tree", None), (3, None), (None, None)],
)
def test_match_class(value, expected):
    assert match_class(value, ["truck", "construction_vehicle", "barrier", "bus"]) == expected


def test_parse_answer_uses_the_given_classes():
    assert parse_answer('{"class": "excavator"}', ["excavator", "truck"]).vlm_class == "excavator"
    assert parse_answer('{"class": "excavator"}').vlm_class is None


# ---------------------------------------------------------------- template backend


@pytest.mark.parametrize(
    "class_name, category, attributes, expected",
    [
        ("truck", "vehicle.truck", ["vehicle.parked"], "a parked truck"),
        ("pedestrian", "human.pedestrian.adult", ["pedestrian.moving"], "a moving pedestrian"),
        ("pedestrian", "human.pedestrian.construction_worker", ["pedestrian.standing"], "a standing construction worker"),
        ("pedestrian", "human.pedestrian.adult", ["pedestrian.sitting_lying_down"], "a pedestrian sitting or lying down"),
        ("bicycle", "vehicle.bicycle", ["cycle.with_rider"], "a bicycle with a rider"),
        ("construction_vehicle", None, [], "a construction vehicle"),
        ("others", "vehicle.emergency.ambulance", ["vehicle.moving"], "a moving ambulance"),
        ("traffic_cone", None, None, "a traffic cone"),
        ("animal", "animal", [], "an animal"),
    ],
)
def test_template_caption(class_name, category, attributes, expected):
    assert template_caption(class_name, category, attributes) == expected


def test_template_backend_is_offline_and_deterministic():
    cap = TemplateCaptioner()
    reqs = [CaptionRequest("d1", None, "truck", "vehicle.truck", ("vehicle.parked",)), CaptionRequest("d2", None, "car")]
    first, second = cap.caption(reqs), cap.caption(reqs)
    assert [r.caption for r in first] == ["a parked truck", "a car"]
    assert [(r.status, r.vlm_class, r.attempts) for r in first] == [("ok", None, 0)] * 2
    assert [r.caption for r in second] == [r.caption for r in first]
    assert cap.model_id.startswith("template@") and cap.caption([]) == []


# ---------------------------------------------------------------- images


def jpeg(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


# ---------------------------------------------------------------- qwen2_vl (tiny random twin)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


def _reference_answers(model_dir: Path, prompt: str, images: list[bytes], max_new_tokens: int) -> list[str]:
    """Generate one image at a time straight with transformers (no batching, no resource)."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir).eval()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    out = []
    for data in images:
        inputs = processor(text=[text], images=[Image.open(io.BytesIO(data)).convert("RGB")], return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        out.append(processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
    return out


def test_qwen2_vl_backend_generates_through_the_real_code_path(tiny_qwen):
    cap = Qwen2VLCaptioner(model=str(tiny_qwen), device="cpu", batch_size=2, max_new_tokens=16)
    images = [jpeg(64, 40, 1), jpeg(30, 90, 2), jpeg(120, 60, 3)]
    reqs = [CaptionRequest(f"d{i}", b, "truck") for i, b in enumerate(images)]
    reqs.insert(1, CaptionRequest("bad", b"not a jpeg", "car"))
    started = time.perf_counter()
    results = cap.caption(reqs)
    elapsed = time.perf_counter() - started
    assert len(results) == 4
    bad = results[1]
    assert (bad.status, bad.attempts, bad.caption) == ("failed", 1, "car")
    assert "unreadable crop image" in bad.error
    good = [results[0], results[2], results[3]]
    expected = _reference_answers(tiny_qwen, cap.prompt_for("truck"), images, 16)
    assert [r.raw_answer for r in good] == expected  # batched, left-padded == one by one
    assert all(len(r.raw_answer) > 0 for r in good)
    for r in good:  # status follows the parse of the raw answer; random weights answer noise
        parsed = parse_answer(r.raw_answer)
        assert r.status == ("ok" if parsed.usable else "failed")
        assert r.vlm_class == parsed.vlm_class and r.latency_s > 0 and r.attempts == 1
    assert cap.model_id.startswith(f"qwen2_vl:{tiny_qwen.name}@")
    assert elapsed < 60


def test_qwen2_vl_missing_model_is_a_load_error(tmp_path):
    from conceptmine_assets.errors import ModelLoadError

    cap = Qwen2VLCaptioner(model=str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(ModelLoadError, match="no-such-model"):
        cap.caption([CaptionRequest("d", jpeg(32, 32, 0), "car")])


# ---------------------------------------------------------------- openai (real HTTP server)

GOOD_ANSWER = '{"class": "construction_vehicle", "description": "a yellow excavator"}'


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            n = len(server.requests)
        mode = server.mode
        if mode == "flaky" and n < 3:
            mode = "http503"
        if mode == "busy" and n == 1:  # 429 with Retry-After once, then a good answer
            self.send_response(429)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "slow":
            time.sleep(1.0)
            mode = "good"
        if mode == "http503":
            self.send_error(503, "overloaded")
            return
        if mode == "http401":
            self.send_error(401, "bad key")
            return
        if mode == "malformed":
            payload = b'{"choices": [ this is not json'
        elif mode == "empty_content":
            payload = json.dumps({"choices": [{"message": {"content": "  "}}]}).encode()
        else:
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": GOOD_ANSWER}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.mode, srv.requests, srv.lock = "good", [], threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def openai(url: str, **kw) -> OpenAICaptioner:
    settings = dict(base_url=url, model="qwen2-vl", api_key="sk-test", timeout_s=0.3,
                    max_attempts=3, backoff_s=0.01, backoff_max_s=0.02, concurrency=2)
    return OpenAICaptioner(**{**settings, **kw})


def _url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/v1"


def test_openai_good_answer_is_parsed_and_request_is_well_formed(server):
    img = jpeg(40, 30, 0)
    results = openai(_url(server)).caption([CaptionRequest("d1", img, "truck"), CaptionRequest("d2", img, "car")])
    assert [(r.status, r.vlm_class, r.description, r.attempts) for r in results] == [
        ("ok", "construction_vehicle", "a yellow excavator", 1)] * 2
    assert results[0].raw_answer == GOOD_ANSWER and results[0].caption == "a yellow excavator"
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    content = req["body"]["messages"][0]["content"]
    assert req["body"]["model"] == "qwen2-vl"
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    import base64

    assert base64.b64decode(url.split(",", 1)[1]) == img
    assert "construction_vehicle" in content[1]["text"] and "others" in content[1]["text"]


def test_openai_retries_with_backoff_then_succeeds(server):
    server.mode = "flaky"  # 503 twice, then a good answer
    [r] = openai(_url(server)).caption([CaptionRequest("d1", jpeg(40, 30, 0), "truck")])
    assert (r.status, r.attempts, r.vlm_class) == ("ok", 3, "construction_vehicle")
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    "mode, error",
    [("malformed", "malformed response"), ("slow", "within 0.3s"), ("http503", "HTTP 503"),
     ("empty_content", "unusable answer")],
)
def test_openai_failing_server_is_survived(server, mode, error):
    server.mode = mode
    reqs = [CaptionRequest(f"d{i}", jpeg(40, 30, i), "truck") for i in range(3)]
    results = openai(_url(server), max_attempts=2).caption(reqs)
    assert [(r.status, r.attempts, r.caption) for r in results] == [("failed", 2, "truck")] * 3
    assert all(error in r.error for r in results)
    assert len(server.requests) == 6


def test_openai_honours_retry_after(server):
    server.mode = "busy"
    started = time.perf_counter()
    [r] = openai(_url(server), timeout_s=5).caption([CaptionRequest("d1", jpeg(40, 30, 0), "truck")])
    waited = time.perf_counter() - started
    assert (r.status, r.attempts) == ("ok", 2)
    assert waited >= 0.95  # Retry-After: 1 s, not the 0.01 s backoff


def test_openai_without_a_key_sends_no_authorization(server):
    [r] = openai(_url(server), api_key=None).caption([CaptionRequest("d1", jpeg(40, 30, 0), "truck")])
    assert r.status == "ok" and server.requests[0]["auth"] is None


def test_openai_refused_connection_is_survived():
    [r] = openai(closed_port_url(), max_attempts=3).caption([CaptionRequest("d1", jpeg(40, 30, 0), "truck")])
    assert (r.status, r.attempts) == ("failed", 3)
    assert "cannot reach" in r.error and "refused" in r.error.lower()


def test_openai_client_error_is_not_retried(server):
    server.mode = "http401"
    [r] = openai(_url(server)).caption([CaptionRequest("d1", jpeg(40, 30, 0), "truck")])
    assert (r.status, r.attempts) == ("failed", 1) and "HTTP 401" in r.error
    assert len(server.requests) == 1


# ---------------------------------------------------------------- the asset

KEYS = dict(scene_name=SCENE, sample_token="s0", sample_data_token="sd0", channel="CAM_FRONT")
# detection_id, class_name, confidence, is_outlier, detectors, category, attributes
CROP_SPECS = [
    ("d-car", "car", 0.9, False, [], "vehicle.car", ["vehicle.moving"]),
    ("d-truck", "truck", 0.8, False, [], "vehicle.truck", ["vehicle.parked"]),
    ("d-odd-car", "car", 0.7, True, ["iforest", "lof"], "vehicle.car", ["vehicle.stopped"]),
    ("d-ped", "pedestrian", 0.95, False, [], "human.pedestrian.adult", ["pedestrian.moving"]),
    ("d-other", "others", 0.6, False, [], "movable_object.pushable_pullable", []),
    ("d-bus", "bus", 0.5, True, ["knn"], "vehicle.bus.rigid", []),
]


def _write_table(store: Path, asset: str, df: pd.DataFrame) -> None:
    write_table(store, asset, df, SCENE)


def _upstream_frames(specs=CROP_SPECS) -> dict[str, pd.DataFrame]:
    crops, dets, flags = [], [], []
    for i, (det, cls, conf, out, detectors, cat, attrs) in enumerate(specs):
        base = {**KEYS, "detection_id": det, "class_name": cls}
        box = dict(x1=10.0, y1=10.0, x2=50.0, y2=40.0)
        crops.append({**base, **box, "confidence": conf, "crop_x1": 5, "crop_y1": 5, "crop_x2": 55, "crop_y2": 45,
                      "image_jpeg": jpeg(50, 40, i), "lidar_points": None, "lidar_median_depth": None,
                      "brightness": 0.5, "overexposed_frac": 0.0, "dark_frac": 0.0, "blur_laplacian_var": 100.0})
        dets.append({**base, **box, "detector": "annotations", "source_class": cat, "confidence": conf,
                     "annotation_token": f"ann-{det}", "category": cat, "attributes": attrs, "visibility": "4"})
        flags.append({**base, "iforest_score": 0.1, "iforest_flag": "iforest" in detectors, "lof_score": 0.1,
                      "lof_flag": "lof" in detectors, "knn_score": 0.1, "knn_flag": "knn" in detectors,
                      "is_outlier": out, "outlier_detectors": detectors, "quality_flags": [],
                      "is_quality_outlier": False})
    return {
        "crops": pd.DataFrame(crops, columns=CROPS.names),
        "detections": pd.DataFrame(dets, columns=DETECTIONS.names),
        "outlier_flags": pd.DataFrame(flags, columns=OUTLIER_FLAGS.names),
    }


@pytest.fixture
def upstream_store(store: Path) -> Path:
    for name, df in _upstream_frames().items():
        _write_table(store, name, df)
    return store


OFFLINE_EMBEDDER = OfflineEmbedder(device="cpu")  # caption text embeddings (MiniLM)
UPSTREAM = [dg.AssetSpec(n, partitions_def=scene_partitions) for n in ("crops", "detections", "outlier_flags")]


def _without_vectors(schema):
    """The schema less caption_embedding (stored as a fixed-size list, declared as a list)."""
    return schema.remove(schema.get_field_index("caption_embedding"))


def _materialize(store: Path, instance, captioner: CaptionerResource, config: dict | None = None):
    result = materialize_scene(
        [captions, *UPSTREAM], SCENE, instance,
        {"io_manager": ParquetIOManager(base_path=str(store)), "captioner": captioner,
         "vocabulary": VocabularyResource(), "embedder": OFFLINE_EMBEDDER},
        run_config={"ops": {"captions": {"config": config or {}}}},
        selection=[captions],
    )
    assert result.success
    md = result.asset_materializations_for_node("captions")[0].metadata
    return pq.read_table(store / "captions" / f"{SCENE}.parquet"), md


def test_selection_order_and_budget():
    frames = _upstream_frames()
    table = crop_table(frames["crops"], frames["detections"], frames["outlier_flags"])
    chosen, over, why = select_for_vlm(table, load_vocabulary(), CaptionsConfig(max_per_scene=3))
    ids = table["detection_id"].tolist()
    # outliers first (2 detectors before 1), then target, then rare, then unknown; common inliers never
    assert [ids[p] for p in chosen] == ["d-odd-car", "d-bus", "d-truck"]
    assert [ids[p] for p in over] == ["d-other"]
    assert dict(why) == {"outlier": 2, "target": 1}
    chosen, _, _ = select_for_vlm(table, load_vocabulary(), CaptionsConfig(max_per_scene=None, caption_outliers=False))
    assert [ids[p] for p in chosen] == ["d-truck", "d-bus", "d-other"]


def test_captions_asset_template_backend(upstream_store, instance):
    table, md = _materialize(upstream_store, instance, TemplateCaptioner(), {"max_per_scene": 3})
    assert _without_vectors(table.schema) == _without_vectors(CAPTIONS)
    df = table.to_pandas().set_index("detection_id")
    assert df.index.tolist() == [s[0] for s in CROP_SPECS]  # one row per crop, crop order
    assert df["status"].to_dict() == {"d-car": "class_name", "d-truck": "ok", "d-odd-car": "ok",
                                      "d-ped": "class_name", "d-other": "class_name", "d-bus": "ok"}
    assert df.loc["d-truck", "caption"] == "a parked truck"
    assert df.loc["d-odd-car", "caption"] == "a stopped car"
    assert df.loc["d-ped", "caption"] == "pedestrian" and df.loc["d-other", "caption"] == "others"
    assert df.loc["d-truck", "backend"] == "template" and pd.isna(df.loc["d-car", "backend"])
    assert (md["num_ok"].value, md["num_class_name"].value, md["num_failed"].value) == (3, 3, 0)
    # every caption is stored with its text embedding, as the embedder encodes it
    expected = OFFLINE_EMBEDDER.encode_texts(df["caption"].tolist())
    assert np.allclose(np.stack(df["caption_embedding"].to_numpy()), expected, atol=1e-5)
    assert set(df["text_model_id"]) == {OFFLINE_EMBEDDER.text_model_id}
    assert md["num_over_budget"].value == 1 and md["num_sent_to_captioner"].value == 3
    # idempotent: a re-run rewrites the same table
    again, _ = _materialize(upstream_store, instance, TemplateCaptioner(), {"max_per_scene": 3})
    assert again.equals(table)  # no timings in stored rows


def test_captions_asset_survives_a_down_server(upstream_store, instance):
    captioner = openai(closed_port_url(), max_attempts=2)
    table, md = _materialize(upstream_store, instance, captioner, {"max_per_scene": 10})
    df = table.to_pandas().set_index("detection_id")
    sent = ["d-truck", "d-odd-car", "d-other", "d-bus"]
    assert set(df.loc[sent, "status"]) == {"failed"} and set(df.loc[sent, "attempts"]) == {2}
    assert all("cannot reach" in e for e in df.loc[sent, "error"])
    assert df.loc["d-bus", "caption"] == "bus"  # failed crops keep their class name as caption
    assert md["num_failed"].value == 4 and "cannot reach" in md["failures"].value


def test_captions_asset_with_openai_server(upstream_store, instance, server):
    table, md = _materialize(upstream_store, instance, openai(_url(server)), {"max_per_scene": 2})
    df = table.to_pandas().set_index("detection_id")
    assert df.loc["d-odd-car", "vlm_class"] == "construction_vehicle"
    assert df.loc["d-bus", "description"] == "a yellow excavator"
    assert md["num_ok"].value == 2 and len(server.requests) == 2
    assert md["captions_per_s"].value > 0


def test_captions_asset_with_qwen2_vl_twin(upstream_store, instance, tiny_qwen):
    captioner = Qwen2VLCaptioner(model=str(tiny_qwen), device="cpu", max_new_tokens=8)
    table, md = _materialize(upstream_store, instance, captioner, {"max_per_scene": 2})
    df = table.to_pandas().set_index("detection_id")
    sent = df.loc[["d-odd-car", "d-bus"]]
    assert set(sent["backend"]) == {"qwen2_vl"} and set(sent["model_id"]) == {captioner.model_id}
    assert sent["raw_answer"].map(len).min() > 0
    assert md["num_ok"].value + md["num_failed"].value == 2


def test_captions_asset_crop_without_flags_is_an_inlier_and_counted(store, instance):
    frames = _upstream_frames()
    frames["outlier_flags"] = frames["outlier_flags"][frames["outlier_flags"]["detection_id"] != "d-odd-car"]
    for name, df in frames.items():
        _write_table(store, name, df)
    table, md = _materialize(store, instance, TemplateCaptioner(), {"max_per_scene": None})
    df = table.to_pandas().set_index("detection_id")
    assert df.loc["d-odd-car", "status"] == "class_name"  # a car with no flags row is a common inlier
    assert md["num_without_outlier_flags"].value == 1


def test_captions_asset_empty_scene(store, instance):
    for name, df in _upstream_frames(specs=[]).items():
        _write_table(store, name, df)
    table, md = _materialize(store, instance, TemplateCaptioner())
    assert table.num_rows == 0 and _without_vectors(table.schema) == _without_vectors(CAPTIONS)
    assert md["num_crops"].value == 0 and md["captions_per_s"].value is None


def test_captions_over_several_scenes_in_one_run(store, instance):
    """A multi-scene run keeps the per-scene budget and stores one file per scene."""
    scenes = [SCENE, "scene-test-0002"]
    for scene in scenes:
        for name, df in _upstream_frames().items():
            df = df.assign(scene_name=scene, detection_id=df["detection_id"] + f"@{scene}")
            write_table(store, name, df, scene)
    instance.add_dynamic_partitions("nuscenes_scenes", scenes)
    result = dg.materialize(
        [captions, *UPSTREAM], selection=[captions], instance=instance,
        resources={"io_manager": ParquetIOManager(base_path=str(store)), "captioner": TemplateCaptioner(),
                   "vocabulary": VocabularyResource(), "embedder": OFFLINE_EMBEDDER},
        run_config={"ops": {"captions": {"config": {"max_per_scene": 2}}}},
        tags={"dagster/asset_partition_range_start": scenes[0], "dagster/asset_partition_range_end": scenes[1]},
    )
    assert result.success and len(result.asset_materializations_for_node("captions")) == 2
    for scene in scenes:
        table = pq.read_table(store / "captions" / f"{scene}.parquet").to_pandas()
        assert set(table["scene_name"]) == {scene} and len(table) == len(CROP_SPECS)
        assert (table["status"] == "ok").sum() == 2  # the budget holds per scene, not per run

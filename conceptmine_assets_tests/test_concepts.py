"""Concept vocabulary, scoring formulas (hand-made vectors with known answers) and the
`concept_scores` asset (MiniLM text-only offline profile; tiny open_clip twin for text+image)."""

import io
import textwrap
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conceptmine_assets.resources.vocabulary import VocabularyResource
from PIL import Image

from conceptmine_assets.assets.concepts import concept_scores
from conceptmine_assets.lib.concepts import (
    adaptive_weight_text,
    assign_group,
    cosine,
    fuse,
    max_logit,
    rank_concepts,
    score_concepts,
    text_weights,
    top_superclass,
)
from conceptmine_assets.lib.vocabulary import (
    Concept,
    Vocabulary,
    VocabularyError,
    build_vocabulary,
    default_vocabulary_path,
    load_vocabulary,
)
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
from conceptmine_assets.resources.open_clip_embedder import OpenClipEmbedder
from conceptmine_assets.resources.storage import ParquetIOManager
from conceptmine_assets.schemas import CAPTIONS, CONCEPT_SCORES, EMBEDDINGS
from conceptmine_assets_tests.helpers import materialize_scene, tiny_clip_config_path, write_table

SCENE = "scene-test-0001"

# ---------------------------------------------------------------- vocabulary


def test_packaged_vocabulary_has_the_paper_defaults():
    vocab = load_vocabulary()
    by_group = {g: {c.name for c in vocab.concepts if c.group == g} for g in ("target", "common")}
    assert by_group["target"] == {"construction_vehicle", "bicycle", "motorcycle", "trailer", "truck"}
    assert by_group["common"] == {"car", "pedestrian", "traffic_light", "traffic_sign"}
    base = {"pedestrian", "car", "truck", "bicycle", "motorcycle", "bus", "train", "traffic_light", "traffic_sign",
            "construction_vehicle", "trailer", "barrier", "traffic_cone", "static_object"}
    assert base <= set(vocab.names)
    rare = {"excavator", "bulldozer", "forklift", "cement_mixer", "road_roller", "cargo_bike", "tandem_bicycle",
            "scooter", "moped", "car_carrier", "tanker_truck", "flatbed_trailer", "tow_truck", "accident_scene",
            "road_debris", "fallen_tree", "animal_on_road", "person_pushing_cart"}
    assert rare <= {c.name for c in vocab.concepts if c.group == "rare"}
    assert vocab.superclass_of("excavator") == "construction_vehicle"
    assert vocab.identity.startswith("v1+") and len(vocab.identity) == len("v1+") + 12
    assert vocab.source == default_vocabulary_path()


def test_vocabulary_resolves_detector_and_dataset_labels():
    vocab = load_vocabulary()
    assert vocab.resolve("person") == "pedestrian"
    assert vocab.resolve("Traffic Light") == "traffic_light"
    assert vocab.resolve("vehicle.construction") == "construction_vehicle"
    assert vocab.resolve("animal") == "animal_on_road"
    assert vocab.resolve("others") is None
    assert vocab.is_target("truck") and vocab.is_target("excavator")  # excavator via its superclass
    assert not vocab.is_target("car") and not vocab.is_target(None)
    assert [vocab.candidate_kind(c) for c in ("truck", "bus", "car", "others")] == ["target", "rare", "common", "unknown"]


def test_prompt_table_is_name_plus_alternatives():
    vocab = load_vocabulary()
    prompts, owners = vocab.prompt_table("a photo of a {}")
    i = vocab.names.index("traffic_cone")
    mine = [p for p, o in zip(prompts, owners) if o == i]
    assert mine[0] == "a photo of a traffic cone"
    assert "a photo of a pylon" in mine
    assert len(mine) == len(set(mine))
    assert set(owners.tolist()) == set(range(len(vocab.concepts)))


def test_extra_outlier_concepts_append_and_change_only_the_identity():
    base = load_vocabulary()
    extra = load_vocabulary(extra=["Person in a dinosaur costume", "mattress on the road"])
    assert extra.names[: len(base.names)] == base.names
    assert extra.names[-2:] == ["person_in_a_dinosaur_costume", "mattress_on_the_road"]
    assert extra.concept("mattress_on_the_road").group == "rare"
    assert extra.version == base.version and extra.identity != base.identity
    assert load_vocabulary(extra=["mattress on the road"]).identity == load_vocabulary(extra=["mattress on the road"]).identity


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "my_vocab.yaml"
    path.write_text(textwrap.dedent(body))
    return path


GOOD = """
version: "2"
concepts:
  - {name: truck, group: target, alternatives: [lorry]}
  - {name: car, group: common}
  - {name: tanker_truck, group: rare, superclass: truck, alternatives: [fuel tanker]}
"""


def test_user_vocabulary_file_loads_and_hash_follows_content(tmp_path):
    path = _write(tmp_path, GOOD)
    vocab = load_vocabulary(path)
    assert vocab.names == ["truck", "car", "tanker_truck"]
    assert vocab.superclass_of("car") == "car"
    before = vocab.identity
    path.write_text(path.read_text().replace("fuel tanker", "fuel truck"))
    assert load_vocabulary(path).identity != before
    assert load_vocabulary(path).identity.startswith("2+")


@pytest.mark.parametrize(
    "body, message",
    [
        ("version: 1\nconcepts:\n  - {name: car, group: common}\n  - {name: car, group: rare}\n", "duplicate concept names ['car']"),
        ("version: 1\nconcepts:\n  - {name: car, group: usual}\n", "group 'usual'"),
        ("version: 1\nconcepts:\n  - {name: car, group: common, superclass: vehicle}\n", "superclass 'vehicle', which is not a concept"),
        (
            "version: 1\nconcepts:\n  - {name: a, group: rare, superclass: b}\n  - {name: b, group: rare, superclass: c}\n"
            "  - {name: c, group: rare}\n",
            "superclasses must be top-level",
        ),
        ("version: 1\nconcepts:\n  - {name: car, group: common, synonyms: [auto]}\n", "unknown keys ['synonyms']"),
        ("version: 1\nconcepts:\n  - {name: Traffic Cone, group: rare}\n", "must be snake_case"),
        ("version: 1\nconcepts:\n  - {name: car, group: common, alternatives: auto}\n", "list of non-empty strings"),
        (
            "version: 1\nconcepts:\n  - {name: car, group: common, aliases: [vehicle]}\n"
            "  - {name: truck, group: target, aliases: [vehicle]}\n",
            "names both 'car' and 'truck'",
        ),
        ("concepts:\n  - {name: car, group: common}\n", "missing or empty 'version'"),
        ("version: 1\nconcepts: []\n", "'concepts' must be a non-empty list"),
        ("version: 1\nconcepts: [\n", "not valid YAML"),
        ("- just a list\n", "expected a mapping"),
    ],
)
def test_vocabulary_validation_errors_name_the_file(tmp_path, body, message):
    path = _write(tmp_path, body)
    with pytest.raises(VocabularyError) as err:
        load_vocabulary(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_vocabulary_file_is_a_clear_error(tmp_path):
    with pytest.raises(VocabularyError, match="nope.yaml: cannot read"):
        load_vocabulary(tmp_path / "nope.yaml")


def test_extra_concept_clashing_with_a_concept_is_an_error(tmp_path):
    with pytest.raises(VocabularyError, match=r"\(\+ 1 extra concepts\): duplicate concept names \['truck'\]"):
        load_vocabulary(_write(tmp_path, GOOD), extra=["Truck"])


# ---------------------------------------------------------------- formulas


@pytest.mark.parametrize(
    "cos, expected",
    [(-1.0, 0.2), (-0.2, 0.2), (0.15, 0.5), (0.5, 0.8), (1.0, 0.8), (0.01, 0.2 + 0.6 * 0.3)],
)
def test_adaptive_weight_text(cos, expected):
    assert adaptive_weight_text(cos) == pytest.approx(expected)


def test_adaptive_weight_is_vectorised_and_bounded():
    w = adaptive_weight_text(np.linspace(-1, 1, 101))
    assert w.shape == (101,) and w.min() >= 0.1 and w.max() <= 0.8
    assert np.all(np.diff(w) >= 0)


@pytest.mark.parametrize(
    "similarity, owners, n, expected",
    [
        ([[0.1, 0.9, 0.3], [0.5, 0.2, 0.4]], [0, 0, 1], 2, [[0.9, 0.3], [0.5, 0.4]]),
        ([[0.1, 0.9, 0.3]], [1, 0, 1], 2, [[0.9, 0.3]]),
        ([[-0.4, -0.1]], [0, 0], 1, [[-0.1]]),
        ([[0.2, 0.3]], [0, 0], 2, [[0.3, -np.inf]]),  # a group with no prompt never wins
    ],
)
def test_max_logit(similarity, owners, n, expected):
    np.testing.assert_allclose(max_logit(np.array(similarity), np.array(owners), n), expected)


def test_max_logit_rejects_mismatched_owners():
    with pytest.raises(ValueError, match="does not match"):
        max_logit(np.zeros((1, 3)), np.array([0, 1]), 2)


@pytest.mark.parametrize(
    "w, expected",
    [(0.5, [[0.5, 0.5]]), (0.8, [[0.8, 0.2]]), (1.0, [[1.0, 0.0]]), (np.array([0.25]), [[0.25, 0.75]])],
)
def test_fuse(w, expected):
    np.testing.assert_allclose(fuse(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), w), expected)


def test_fuse_text_only_ignores_weight():
    np.testing.assert_allclose(fuse(np.array([[0.3, 0.7]]), None, 0.5), [[0.3, 0.7]])


E = np.eye(3)


@pytest.mark.parametrize(
    "w, expected",
    [(0.5, [0.5, 0.5]), (0.8, [0.8, 0.2]), (1.0, [1.0, 0.0])],
)
def test_score_concepts_max_logit_then_fuse(w, expected):
    # concept A = prompts e0, e1 ; concept B = prompt e2. Caption = e1, crop = e2.
    prompts, owners = E, np.array([0, 0, 1])
    scores = score_concepts(E[[1]], prompts, owners, 2, np.array([w]), crop_emb=E[[2]])
    # max-logit: A's caption cosine is 1 (its second prompt), a mean ensemble would give 0.5
    np.testing.assert_allclose(scores[0], expected)


def test_score_concepts_text_only():
    caption = np.array([[1.0, 1.0, 0.0]])  # cos 0.707 with e0 and e1
    scores = score_concepts(caption, E, np.array([0, 1, 1]), 2, np.array([1.0]))
    np.testing.assert_allclose(scores[0], [np.sqrt(0.5), np.sqrt(0.5)])


def test_cosine_normalises_rows():
    np.testing.assert_allclose(cosine(np.array([[3.0, 4.0]]), np.array([[6.0, 8.0], [-4.0, 3.0]])), [[1.0, 0.0]], atol=1e-12)


def test_text_weights():
    cap = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    crop = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # cos 1, 0, -1
    np.testing.assert_allclose(text_weights(3, 0.5, False, cap, None), [1, 1, 1])
    np.testing.assert_allclose(text_weights(3, 0.5, False, cap, crop), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(text_weights(3, 0.5, True, cap, crop), [0.8, 0.2 + 0.6 * 0.2 / 0.7, 0.2])
    np.testing.assert_allclose(text_weights(3, 0.5, False, cap, crop, np.array([True, False, True])), [0.5, 1, 0.5])
    # adaptive per crop, and 0 for a label-only caption (unless there is no image: then only text)
    mask = np.array([True, False, True])
    np.testing.assert_allclose(text_weights(3, 0.5, mask, cap, crop), [0.8, 0.5, 0.2])
    label_only = np.array([False, True, True])
    np.testing.assert_allclose(text_weights(3, 0.5, mask, cap, crop, np.array([True, True, False]), label_only),
                               [0.8, 0.0, 1.0])


def _mini_vocab() -> Vocabulary:
    concepts = [
        Concept("truck", "target", "truck", ("lorry",)),
        Concept("tanker_truck", "rare", "truck", ("fuel tanker",)),
        Concept("car", "common", "car", ()),
        Concept("excavator", "rare", "construction_vehicle", ()),
        Concept("construction_vehicle", "target", "construction_vehicle", ()),
        Concept("traffic_cone", "rare", "traffic_cone", ()),
    ]
    return build_vocabulary("t", concepts, "<test>", b"test")


@pytest.mark.parametrize(
    "scores, forced, expected",
    [
        ([0.2, 0.7, 0.5, 0.1, 0.1, 0.0], None, "truck"),  # merged truck = max(0.2, 0.7) beats car 0.5
        ([0.2, 0.3, 0.5, 0.1, 0.1, 0.0], None, "car"),
        ([0.1, 0.1, 0.3, 0.45, 0.2, 0.4], None, "construction_vehicle"),  # via excavator
        ([0.2, 0.7, 0.5, 0.1, 0.1, 0.0], "traffic_cone", "traffic_cone"),  # VLM fixed the concept
    ],
)
def test_superclass_merging(scores, forced, expected):
    vocab = _mini_vocab()
    supers, index = vocab.superclass_table()
    assert supers == ["truck", "car", "construction_vehicle", "traffic_cone"]
    merged = max_logit(np.array([scores]), index, len(supers))[0]
    np.testing.assert_allclose(merged[0], max(scores[0], scores[1]))
    assert top_superclass(np.array(scores), vocab, forced) == expected


NAMES = ["truck", "tanker_truck", "car", "excavator"]


@pytest.mark.parametrize(
    "scores, vlm, top, second, margin, joint",
    [
        ([0.6, 0.3, 0.2, 0.1], None, "truck", "tanker_truck", 0.3, None),
        ([0.6, 0.58, 0.2, 0.1], None, "truck", "tanker_truck", 0.02, "truck|tanker_truck"),
        ([0.6, 0.55, 0.2, 0.1], None, "truck", "tanker_truck", 0.05, "truck|tanker_truck"),  # boundary: within
        ([0.2, 0.3, 0.6, 0.1], "excavator", "excavator", "car", -0.5, None),  # VLM override wins
        ([0.2, 0.3, 0.12, 0.1], "excavator", "excavator", "tanker_truck", -0.2, None),
        ([0.3, 0.2, 0.1, 0.27], "excavator", "excavator", "truck", -0.03, "excavator|truck"),
        ([0.5, 0.5, 0.1, 0.0], None, "truck", "tanker_truck", 0.0, "truck|tanker_truck"),  # tie: stable order
    ],
)
def test_rank_concepts(scores, vlm, top, second, margin, joint):
    r = rank_concepts(np.array(scores), NAMES, vlm, 0.05 + 1e-9)
    assert (r.top, r.second, r.joint_label) == (top, second, joint)
    assert r.top_score == pytest.approx(scores[NAMES.index(top)])
    assert r.margin == pytest.approx(margin)


def test_joint_label_needs_a_margin_strictly_below_the_threshold():
    r = rank_concepts(np.array([0.75, 0.5]), ["a", "b"], None, 0.25)  # exactly representable: margin == 0.25
    assert r.margin == 0.25 and r.joint_label is None
    assert rank_concepts(np.array([0.75, 0.5]), ["a", "b"], None, 0.2500001).joint_label == "a|b"


def test_vlm_others_is_the_top_concept_and_makes_the_crop_rare():
    vocab = _mini_vocab()
    scores = np.array([0.2, 0.1, 0.6, 0.1, 0.1, 0.0])
    r = rank_concepts(scores, vocab.names, "others", 0.05)
    assert (r.top, r.top_score, r.second, r.second_score, r.margin, r.joint_label) == ("others", 0.6, "car", 0.6, None, None)
    assert top_superclass(scores, vocab, "others") == "others"
    assert assign_group(vocab, "car", "others", "others") == "rare"  # the best concept, car, is common
    assert assign_group(vocab, "truck", "others", "others") == "target"  # a target detector class stays target


def test_rank_single_concept_has_no_second():
    r = rank_concepts(np.array([0.4]), ["car"], None, 0.05)
    assert (r.top, r.second, r.margin, r.joint_label) == ("car", None, None, None)


@pytest.mark.parametrize(
    "class_name, vlm, top, group",
    [
        ("truck", None, "car", "target"),  # detector class is target
        ("car", "construction_vehicle", "construction_vehicle", "target"),  # VLM class is target
        ("car", "excavator", "excavator", "target"),  # VLM class maps to a target superclass
        ("car", None, "car", "common"),
        ("others", None, "car", "common"),
        ("car", None, "tanker_truck", "rare"),  # top concept outside the common list
        ("car", None, "traffic_cone", "rare"),
        (None, None, "excavator", "rare"),
    ],
)
def test_assign_group(class_name, vlm, top, group):
    assert assign_group(_mini_vocab(), class_name, vlm, top) == group


# ---------------------------------------------------------------- the asset


def _write_table(store: Path, asset: str, df: pd.DataFrame) -> None:
    write_table(store, asset, df, SCENE)


KEYS = dict(scene_name=SCENE, sample_token="s0", sample_data_token="sd0", channel="CAM_FRONT")


def _captions(rows: list[tuple[str, str, str, str | None]], backend: str = "test", described: bool = True) -> pd.DataFrame:
    """rows: (detection_id, class_name, caption, vlm_class); ``described``: the caption is a description."""
    out = []
    for det, cls, caption, vlm in rows:
        out.append({**KEYS, "detection_id": det, "class_name": cls, "status": "ok" if vlm else "class_name",
                    "backend": backend, "model_id": "test", "raw_answer": None, "vlm_class": vlm,
                    "description": caption if described else None, "caption": caption, "error": None, "attempts": 1,
                    "latency_s": 0.0,
                    "text_model_id": "test", "caption_embedding": np.ones(4, np.float32)})
    df = pd.DataFrame(out, columns=CAPTIONS.names)
    df.attrs["vector_dims"] = {"caption_embedding": 4}
    return df


def _embeddings(ids: list[str], classes: list[str], vectors: np.ndarray, model_id: str) -> pd.DataFrame:
    df = pd.DataFrame({**{k: [v] * len(ids) for k, v in KEYS.items()}, "detection_id": ids, "class_name": classes,
                       "model_id": model_id,
                       "embedding": pd.Series(list(vectors.astype(np.float32)), dtype=object)})
    return df[EMBEDDINGS.names]


UPSTREAM = [dg.AssetSpec(name, partitions_def=scene_partitions) for name in ("captions", "embeddings")]


def _run(store: Path, instance, embedder: EmbedderResource, config: dict | None = None):
    config = dict(config or {})
    vocabulary = VocabularyResource(path=config.pop("vocabulary_path", None),
                                    extra_concepts=config.pop("extra_concepts", []))
    result = materialize_scene(
        [concept_scores, *UPSTREAM], SCENE, instance,
        {"io_manager": ParquetIOManager(base_path=str(store)), "embedder": embedder, "vocabulary": vocabulary},
        run_config={"ops": {"concept_scores": {"config": config}}},
        selection=[concept_scores],
    )
    assert result.success
    return result, pq.read_table(store / "concept_scores" / f"{SCENE}.parquet")


@pytest.fixture(scope="module")
def offline_embedder() -> EmbedderResource:
    return OfflineEmbedder(device="cpu")


def test_concept_scores_offline_text_only(store, instance, offline_embedder):
    caps = _captions([
        ("d1", "car", "a parked truck", None),
        ("d2", "car", "a red car", None),
        ("d3", "others", "an orange traffic cone on the road", None),
        ("d4", "car", "a big yellow machine", "construction_vehicle"),
    ])
    _write_table(store, "captions", caps)
    _write_table(store, "embeddings", _embeddings(["d1", "d2", "d3", "d4"], ["car"] * 4, np.eye(4, 8), "some-image-model"))
    result, table = _run(store, instance, offline_embedder, {"extra_concepts": ["mattress on the road"]})
    df = table.to_pandas().set_index("detection_id")
    assert table.schema.names == CONCEPT_SCORES.names
    assert set(df["score_mode"]) == {"text_only"} and set(df["weight_text"]) == {1.0}
    assert df.loc["d1", "top_concept"] == "truck"
    assert df.loc["d2", "top_concept"] == "car"
    assert df.loc["d3", "top_concept"] == "traffic_cone"
    assert df.loc["d4", "top_concept"] == "construction_vehicle"  # the VLM's class wins
    assert list(df["group"]) == ["rare", "common", "rare", "target"]  # d1: car detector, truck caption → rare
    vocab = load_vocabulary(extra=["mattress on the road"])
    assert set(df["vocabulary_version"]) == {vocab.identity}
    assert list(df.loc["d1", "concept_names"]) == vocab.names
    scores = np.asarray(df.loc["d1", "concept_scores"])
    assert scores.shape == (len(vocab.names),)
    assert df.loc["d1", "top_score"] == pytest.approx(scores.max(), abs=1e-6)
    # stored scores are the max-logit caption cosines, recomputed here independently for a few concepts
    caption = offline_embedder.encode_texts(["a red car"])
    for name in ("car", "truck", "traffic_cone"):
        prompts = offline_embedder.encode_texts(list(vocab.concept(name).prompts()))
        expected = float(cosine(caption, prompts).max())
        assert df.loc["d2", "concept_scores"][vocab.names.index(name)] == pytest.approx(expected, abs=1e-5)
    d2 = df.loc["d2"]
    assert d2["margin"] == pytest.approx(d2["top_score"] - d2["second_score"], abs=1e-6)
    assert pd.notna(d2["joint_label"]) == (d2["margin"] < 0.05)
    md = result.asset_materializations_for_node("concept_scores")[0].metadata
    assert md["num_vlm_overrides"].value == 1 and md["shared_space"].value is False


def _jpeg(color: tuple[int, int, int]) -> Image.Image:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), color).save(buf, format="JPEG")
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_concept_scores_shared_space_fuses_caption_and_crop(store, instance, tmp_path):
    embedder = tiny_clip()
    caps = _captions([("d1", "truck", "a parked truck", None), ("d2", "car", "a bicycle", None),
                      ("d3", "car", "a car", None)])
    crops = embedder.encode_images([_jpeg((200, 30, 30)), _jpeg((30, 200, 30)), _jpeg((30, 30, 200))])
    _write_table(store, "captions", caps)
    # d3 has no embedding: it must fall back to text only
    _write_table(store, "embeddings", _embeddings(["d1", "d2"], ["truck", "car"], crops[:2], embedder.image_model_id))
    vocab_path = _write(tmp_path, GOOD)  # a user vocabulary, passed by path
    _, table = _run(store, instance, embedder, {"adaptive": True, "vocabulary_path": str(vocab_path)})
    df = table.to_pandas().set_index("detection_id")
    assert list(df["score_mode"]) == ["text+image", "text+image", "text_only"]
    vocab = load_vocabulary(vocab_path)
    assert set(df["vocabulary_version"]) == {vocab.identity}
    prompts, owners = vocab.prompt_table("{}")
    p = embedder.encode_texts(prompts)
    cap = embedder.encode_texts(["a parked truck", "a bicycle"])
    w = adaptive_weight_text(np.sum(cap * crops[:2], axis=1))
    expected = w[:, None] * max_logit(cap @ p.T, owners, len(vocab.names)) + (1 - w[:, None]) * max_logit(
        crops[:2] @ p.T, owners, len(vocab.names))
    np.testing.assert_allclose(df["weight_text"].iloc[:2], w, atol=1e-5)
    np.testing.assert_allclose(np.stack(df["concept_scores"].iloc[:2]), expected, atol=1e-4)
    assert df.loc["d3", "weight_text"] == 1.0
    assert df.loc["d1", "group"] == "target"


def tiny_clip() -> OpenClipEmbedder:
    return OpenClipEmbedder(model="tiny_clip", pretrained=None, model_config_path=tiny_clip_config_path(), device="cpu")


def _vlm_scene(store: Path, embedder: OpenClipEmbedder, backend: str, described: bool = True) -> np.ndarray:
    caps = _captions([("d1", "car", "a parked truck", "truck"), ("d2", "car", "a shopping cart", "others")],
                     backend=backend, described=described)
    crops = embedder.encode_images([_jpeg((200, 30, 30)), _jpeg((30, 200, 30))])
    _write_table(store, "captions", caps)
    _write_table(store, "embeddings", _embeddings(["d1", "d2"], ["car", "car"], crops, embedder.image_model_id))
    return adaptive_weight_text(np.sum(embedder.encode_texts(["a parked truck", "a shopping cart"]) * crops, axis=1))


def test_vlm_captions_get_the_adaptive_weight_by_default(store, instance):
    embedder = tiny_clip()
    adaptive = _vlm_scene(store, embedder, "qwen2_vl")
    df = _run(store, instance, embedder)[1].to_pandas().set_index("detection_id")
    np.testing.assert_allclose(df["weight_text"], adaptive, atol=1e-5)
    assert (df.loc["d2", "top_concept"], df.loc["d2", "group"], df.loc["d2", "top_superclass"]) == ("others", "rare", "others")
    assert df.loc["d2", "top_score"] == pytest.approx(max(df.loc["d2", "concept_scores"]), abs=1e-6)
    _vlm_scene(store, embedder, "template")  # not a VLM: the fixed weight
    assert set(_run(store, instance, embedder)[1].column("weight_text").to_pylist()) == {0.5}


def test_a_vlm_answer_without_description_gets_text_weight_zero(store, instance):
    embedder = tiny_clip()
    _vlm_scene(store, embedder, "openai", described=False)
    result, table = _run(store, instance, embedder)
    assert table.column("weight_text").to_pylist() == [0.0, 0.0]
    assert result.asset_materializations_for_node("concept_scores")[0].metadata["num_label_only_captions"].value == 2


def test_concept_scores_refuses_embeddings_of_another_model(store, instance):
    embedder = tiny_clip()
    _write_table(store, "captions", _captions([("d1", "truck", "a truck", None)]))
    _write_table(store, "embeddings", _embeddings(["d1"], ["truck"], np.ones((1, 64)) / 8, "open_clip:ViT-B-32/other"))
    result = materialize_scene(
        [concept_scores, *UPSTREAM], SCENE, instance,
        {"io_manager": ParquetIOManager(base_path=str(store)), "embedder": embedder, "vocabulary": VocabularyResource()},
        selection=[concept_scores], raise_on_error=False,
    )
    assert not result.success
    assert "re-materialise embeddings with the same embedder" in str(result.all_events)


def test_concept_scores_empty_scene(store, instance, offline_embedder):
    _write_table(store, "captions", _captions([]))
    empty = _embeddings([], [], np.zeros((0, 8)), "m")
    empty.attrs["vector_dims"] = {"embedding": 8}
    _write_table(store, "embeddings", empty)
    _, table = _run(store, instance, offline_embedder)
    assert table.num_rows == 0 and table.schema.names == CONCEPT_SCORES.names

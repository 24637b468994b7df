"""Concept scoring formulas on hand-made vectors with known answers: the adaptive text weight,
max-logit over prompts, fusion, superclass merging, ranking with joint labels, and the group."""

import numpy as np
import pytest

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
from conceptmine_assets.lib.vocabulary import Concept, Vocabulary, build_vocabulary


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

"""The concept vocabulary: the packaged paper defaults, label resolution, prompts, extra outlier
concepts, and user vocabulary files with their validation errors."""

import pytest

from conceptmine_assets.lib.vocabulary import VocabularyError, default_vocabulary_path, load_vocabulary
from conceptmine_assets_tests.helpers import USER_VOCABULARY, write_vocabulary


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


def test_user_vocabulary_file_loads_and_hash_follows_content(tmp_path):
    path = write_vocabulary(tmp_path, USER_VOCABULARY)
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
    path = write_vocabulary(tmp_path, body)
    with pytest.raises(VocabularyError) as err:
        load_vocabulary(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_vocabulary_file_is_a_clear_error(tmp_path):
    with pytest.raises(VocabularyError, match="nope.yaml: cannot read"):
        load_vocabulary(tmp_path / "nope.yaml")


def test_extra_concept_clashing_with_a_concept_is_an_error(tmp_path):
    with pytest.raises(VocabularyError, match=r"\(\+ 1 extra concepts\): duplicate concept names \['truck'\]"):
        load_vocabulary(write_vocabulary(tmp_path, USER_VOCABULARY), extra=["Truck"])

"""Parsing VLM answers into a class and a description, matching class names, and the offline
template captioner."""

import pytest

from conceptmine_assets.lib.captioning import CaptionRequest, match_class, parse_answer, template_caption
from conceptmine_assets.resources.captioner import TemplateCaptioner


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


@pytest.mark.parametrize(
    "class_name, source_class, expected",
    [
        ("animal", "cat", "a cat (animal)"),  # the detector's word, the mapped class where it helps
        ("others", "boat", "a boat"),  # "others" says nothing: the detector's word alone
        ("others", None, "an unidentified object"),  # never "an others"
        ("others", "airplane", "an airplane"),
        ("car", "car", "a car"),
        ("pedestrian", "person", "a person (pedestrian)"),
        ("traffic_light", "traffic light", "a traffic light"),
        ("car", "vehicle.car", "a car"),  # a nuScenes category name is not a word
        ("static_object", "fire hydrant", "a fire hydrant (static object)"),
    ],
)
def test_template_caption_keeps_the_detectors_word(class_name, source_class, expected):
    assert template_caption(class_name, None, [], source_class) == expected


def test_template_backend_is_offline_and_deterministic():
    cap = TemplateCaptioner()
    reqs = [CaptionRequest("d1", None, "truck", "vehicle.truck", ("vehicle.parked",)), CaptionRequest("d2", None, "car")]
    first, second = cap.caption(reqs), cap.caption(reqs)
    assert [r.caption for r in first] == ["a parked truck", "a car"]
    assert [(r.status, r.vlm_class, r.attempts) for r in first] == [("ok", None, 0)] * 2
    assert [r.caption for r in second] == [r.caption for r in first]
    assert cap.model_id.startswith("template@") and cap.caption([]) == []

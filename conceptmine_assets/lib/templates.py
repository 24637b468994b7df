"""Template captions, no model: "a parked truck", "a cat (animal)", "a boat" (pure functions).

The noun is the nuScenes category's, else the detector's own class word, with the class it is
mapped to where that helps; a detection mapped to ``others`` is never "an others".
"""

from __future__ import annotations

from collections.abc import Sequence

from conceptmine_assets.lib.captioning import OTHERS

_ATTRIBUTE_WORDS = {
    "vehicle.moving": ("moving", None),
    "vehicle.stopped": ("stopped", None),
    "vehicle.parked": ("parked", None),
    "cycle.with_rider": (None, "with a rider"),
    "cycle.without_rider": (None, "without a rider"),
    "pedestrian.moving": ("moving", None),
    "pedestrian.standing": ("standing", None),
    "pedestrian.sitting_lying_down": (None, "sitting or lying down"),
}

_CATEGORY_NOUNS = {
    "human.pedestrian.child": "child",
    "human.pedestrian.construction_worker": "construction worker",
    "human.pedestrian.police_officer": "police officer",
    "human.pedestrian.personal_mobility": "person on a personal mobility device",
    "human.pedestrian.stroller": "stroller",
    "human.pedestrian.wheelchair": "wheelchair user",
    "vehicle.bus.bendy": "bendy bus",
    "vehicle.emergency.ambulance": "ambulance",
    "vehicle.emergency.police": "police car",
    "animal": "animal",
    "movable_object.debris": "piece of debris",
    "movable_object.pushable_pullable": "pushable or pullable object",
    "static_object.bicycle_rack": "bicycle rack",
}


UNKNOWN_NOUN = "unidentified object"  # a detection mapped to "others" with no word of the detector's


def detector_noun(class_name: str, source_class: str | None = None) -> str:
    """The detector's own word for the object when it says more than the mapped class ("cat" for
    animal, "boat" for others), with the mapped class in brackets where that helps ("cat
    (animal)"); the class alone otherwise. A nuScenes category name ("vehicle.car") is no word."""
    mapped = class_name.replace("_", " ")
    own = (source_class or "").strip().replace("_", " ")
    if not own or "." in own or own.lower() == mapped.lower():
        return UNKNOWN_NOUN if class_name == OTHERS else mapped
    return own if class_name == OTHERS else f"{own} ({mapped})"


def object_noun(class_name: str, category: str | None = None, source_class: str | None = None) -> str:
    """The nuScenes category's noun ("ambulance"), else :func:`detector_noun`."""
    return _CATEGORY_NOUNS.get(category or "") or detector_noun(class_name, source_class)


def template_caption(class_name: str, category: str | None = None, attributes: Sequence[str] | None = None,
                     source_class: str | None = None) -> str:
    """``"a parked truck"``, ``"a moving pedestrian"``, ``"a bicycle with a rider"``, ``"a cat
    (animal)"``: the nuScenes category's noun, else the detector's own word
    (:func:`detector_noun`), with the nuScenes attributes; deterministic."""
    noun = object_noun(class_name, category, source_class)
    before, after = [], []
    for attr in attributes if attributes is not None else ():
        adj, tail = _ATTRIBUTE_WORDS.get(attr, (None, None))
        if adj:
            before.append(adj)
        if tail:
            after.append(tail)
    phrase = " ".join([*before, noun, *after])
    article = "an" if phrase[:1].lower() in "aeiou" else "a"
    return f"{article} {phrase}"

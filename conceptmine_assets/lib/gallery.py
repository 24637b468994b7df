"""A static, self-contained HTML gallery of the mined samples' crops (and optionally all crops).

Pure functions: :func:`gallery_items` picks and orders the items from DataFrames read by the
`gallery` asset; :func:`render_gallery` turns them into one HTML page. The page needs no server
and no external file: crops are inline ``data:image/jpeg;base64`` images, the filter is a few
lines of inline JavaScript, and every text from the data goes through ``html.escape``. The
output is deterministic (no timestamps), so a re-run with the same inputs writes the same bytes.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from conceptmine_assets.lib.outliers import outlier_or_false

GROUP_RANK = {"target": 0, "rare": 1, "common": 2}
SECTIONS = {"mined": "Mined split", "all": "All crops by group"}
ITEM_COLUMNS = [
    "section", "page", "position", "sample_token", "scene_name", "detection_id", "channel", "class_name", "group",
    "top_concept", "top_score", "reason", "why", "is_outlier", "has_image",
]
_REASON_TEXT = {
    "target_outlier": "target concept and an embedding outlier",
    "target": "target concept",
    "rare_outlier": "rare concept and an embedding outlier",
    "rare": "rare concept",
    "random": "random fill (the sample was drawn at random, not for this crop)",
    "random_fill": "random leftover of the target budget (drawn at random, not for this crop)",
}


def _as_list(value: object) -> list:
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    return []


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def why_selected(reason: str | None, row: pd.Series | dict, section: str = "mined") -> str:
    """Why an item is in the gallery, in words: for the mined section the split's reason plus this
    crop's evidence; for the all-crops section its group and whether its sample was mined."""
    if section == "all":
        mined = f"its sample is in the mined split ({reason})" if reason else "its sample is not in the mined split"
        return f"group {row.get('group') or 'unscored'}; {mined}"
    text = f"{reason}: {_REASON_TEXT.get(reason, reason)}"
    if reason.startswith("random"):
        return text
    detectors = [str(d) for d in _as_list(row.get("outlier_detectors"))]
    evidence = f"top concept {row.get('top_concept')} ({_fmt(row.get('top_score'))}) in group {row.get('group')}"
    if detectors:
        evidence += f", outlier by {'+'.join(detectors)}"
    parts = row.get("evidence")
    if isinstance(parts, dict):  # the mining score and its parts (lib/evidence.py)
        evidence += (f"; evidence score {_fmt(parts['score'])} = outlier {_fmt(parts['outlier'], 2)}, "
                     f"rarity {_fmt(parts['rarity'], 2)}, concept {_fmt(parts['confidence'], 2)}, "
                     f"x detector confidence {_fmt(parts['detector_confidence'], 2)}")
    if row.get("duplicate_of"):
        evidence += f"; repeats chosen crop {row['duplicate_of']} (taken once nothing stronger was left)"
    return f"{text}; {evidence}"


EVIDENCE_LISTS = {"score": "crop_scores", "outlier": "crop_outlier", "rarity": "crop_rarity",
                  "confidence": "crop_confidence", "detector_confidence": "crop_detector_confidence"}


def _evidence_of(split_row: object, ids: list[str]) -> dict[str, dict]:
    """Per detection_id of a split row, its evidence score's parts (empty for old split files)."""
    lists = {part: _as_list(getattr(split_row, column, None)) for part, column in EVIDENCE_LISTS.items()}
    if any(len(v) != len(ids) for v in lists.values()):
        return {}
    return {d: {part: lists[part][i] for part in EVIDENCE_LISTS} for i, d in enumerate(ids)}


def _fmt(value: object, digits: int = 3) -> str:
    return "n/a" if _missing(value) else f"{float(value):.{digits}f}"


def _crop_order(crops: pd.DataFrame) -> pd.DataFrame:
    """Target before rare before common, then by descending top score, then detection_id."""
    key = crops.assign(
        _g=crops["group"].map(GROUP_RANK).fillna(len(GROUP_RANK)),
        _s=-pd.to_numeric(crops["top_score"], errors="coerce").fillna(-np.inf),
    )
    return key.sort_values(["_g", "_s", "detection_id"]).drop(columns=["_g", "_s"])


def gallery_items(
    split: pd.DataFrame, crops: pd.DataFrame, max_crops_per_sample: int = 12, all_crops_limit: int = 0,
    per_group_class: int | None = None, samples_per_page: int = 0,
) -> tuple[pd.DataFrame, int]:
    """The gallery's items (``ITEM_COLUMNS`` + the crop's info columns) and how many crops the
    split names that are not in ``crops`` (they are skipped; the caller reports the count).

    Mined section: per split row in ``rank`` order, the crops that qualified the sample
    (``detection_ids``); a random-fill sample (no qualifying crops) shows its own crops, at most
    ``max_crops_per_sample``, target first. All-crops section (``all_crops_limit`` > 0): at most
    that many crops of the store, target, rare then common, best score first, and at most
    ``per_group_class`` of each (group, class). ``page``: mined samples are split into pages of
    ``samples_per_page`` (0: one page); the all-crops section is on page 1.
    """
    by_id = crops.set_index("detection_id", drop=False)
    by_sample = dict(tuple(crops.groupby("sample_token", sort=False))) if len(crops) else {}
    rows: list[dict] = []
    missing = 0
    for i, split_row in enumerate(split.sort_values("rank").itertuples(index=False)):
        page = 1 + (i // samples_per_page if samples_per_page > 0 else 0)
        ids = [str(d) for d in _as_list(split_row.detection_ids)]
        if ids:
            present = [d for d in ids if d in by_id.index]
            missing += len(ids) - len(present)
            chosen = by_id.loc[present] if present else crops.iloc[0:0]
        else:
            chosen = _crop_order(by_sample.get(split_row.sample_token, crops.iloc[0:0]))
        evidence = _evidence_of(split_row, ids)
        repeats = getattr(split_row, "duplicate_of", None)
        for crop in chosen.head(max_crops_per_sample).to_dict("records"):
            crop = {**crop, "evidence": evidence.get(crop["detection_id"]),
                    "duplicate_of": repeats if isinstance(repeats, str) else None}
            rows.append({**crop, "section": "mined", "page": page, "reason": split_row.reason,
                         "why": why_selected(split_row.reason, crop)})
    if all_crops_limit > 0:
        reason_of = dict(zip(split["sample_token"], split["reason"]))
        ordered = _crop_order(crops)
        if per_group_class is not None:
            keys = [ordered["group"].fillna("\0"), ordered["class_name"].fillna("\0")]
            ordered = ordered[ordered.groupby(keys, sort=False).cumcount() < per_group_class]
        for crop in ordered.head(all_crops_limit).to_dict("records"):
            reason = reason_of.get(crop["sample_token"])
            rows.append({**crop, "section": "all", "page": 1, "reason": reason,
                         "why": why_selected(reason, crop, "all")})
    items = pd.DataFrame(rows, columns=list(dict.fromkeys([*ITEM_COLUMNS, *crops.columns])))
    items["reason"] = pd.Series([r if isinstance(r, str) else None for r in items["reason"]], index=items.index,
                                dtype=object)
    items["position"] = np.arange(len(items), dtype=np.int64)
    items["page"] = items["page"].astype(np.int64)
    jpegs = items["image_jpeg"] if "image_jpeg" in items else [None] * len(items)
    items["has_image"] = [isinstance(b, (bytes, bytearray)) and len(b) > 0 for b in jpegs]
    items["is_outlier"] = outlier_or_false(items["is_outlier"])
    return items, missing


def attach_images(items: pd.DataFrame, jpegs: dict[str, bytes]) -> pd.DataFrame:
    """``items`` with ``image_jpeg`` (the crop's JPEG bytes, None if absent) and ``has_image``."""
    out = items.copy()
    out["image_jpeg"] = pd.Series([jpegs.get(d) for d in out["detection_id"]], index=out.index, dtype=object)
    out["has_image"] = [bool(b) for b in out["image_jpeg"]]
    return out


def top_concepts(names: Iterable[str], scores: Iterable[float], n: int = 3) -> list[tuple[str, float]]:
    """The ``n`` best (concept, score) pairs, best first (ties by name)."""
    pairs = [(str(a), float(b)) for a, b in zip(_as_list(names), _as_list(scores))]
    return sorted(pairs, key=lambda p: (-p[1], p[0]))[:n]


def _lidar_text(points: object, depth: object) -> str:
    if _missing(points):
        return "LiDAR: no sweep for this frame"
    if int(points) == 0:
        return "LiDAR: no points in the box"
    return f"LiDAR: {int(points)} points, median depth {_fmt(depth, 1)} m"


_E = html.escape


def _item_html(item: dict) -> str:
    group = str(item.get("group") or "unscored")
    cls = str(item.get("class_name") or "unknown")
    jpeg = item.get("image_jpeg")
    if isinstance(jpeg, (bytes, bytearray)) and jpeg:
        img = (f'<img src="data:image/jpeg;base64,{base64.b64encode(bytes(jpeg)).decode("ascii")}" '
               f'alt="{_E(cls)} crop {_E(str(item["detection_id"]))}">')
    else:
        img = '<div class="noimg">no crop image</div>'
    concepts = "".join(
        f"<li>{_E(name)} <span class=num>{score:.3f}</span></li>"
        for name, score in top_concepts(item.get("concept_names"), item.get("concept_scores"))
    )
    detectors = [str(d) for d in _as_list(item.get("outlier_detectors"))]
    quality = [str(q) for q in _as_list(item.get("quality_flags"))]
    flags = []
    if detectors:
        flags.append(f"outlier: {'+'.join(detectors)}")
    if quality:
        flags.append(f"image quality: {', '.join(quality)}")
    caption = item.get("caption")
    status = item.get("caption_status")
    return (
        f'<figure class="item" data-group="{_E(group)}" data-class="{_E(cls)}" data-section="{_E(item["section"])}">'
        f"{img}<figcaption>"
        f'<div class="head"><span class="badge g-{_E(group)}">{_E(group)}</span> <b>{_E(cls)}</b>'
        f' <span class="dim">{_E(str(item.get("channel") or ""))}</span></div>'
        f'<div class="caption">{_E(str(caption)) if not _missing(caption) else "<i>no caption</i>"}'
        f'{f" <span class=dim>({_E(str(status))})</span>" if not _missing(status) else ""}</div>'
        f'<ol class="concepts">{concepts}</ol>'
        f'<div class="why">{_E(str(item["why"]))}</div>'
        f'<div class="flags">{_E("; ".join(flags) or "not an outlier")}</div>'
        f'<div class="lidar">{_E(_lidar_text(item.get("lidar_points"), item.get("lidar_median_depth")))}</div>'
        f'<div class="ids dim">{_E(str(item.get("scene_name")))} · sample {_E(str(item.get("sample_token")))}'
        f" · det {_E(str(item['detection_id']))}</div>"
        "</figcaption></figure>"
    )


_CSS = """
body{font:13px system-ui,sans-serif;margin:1em;background:#fafafa;color:#222}
h1{font-size:18px}h2{font-size:15px;margin-top:1.2em}
.filters{position:sticky;top:0;background:#fafafa;padding:.4em 0;border-bottom:1px solid #ddd;z-index:1}
.filters button{margin:0 .2em;padding:.2em .6em;border:1px solid #aaa;background:#fff;border-radius:3px;cursor:pointer}
.filters button.active{background:#333;color:#fff}
.grid{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.item{width:230px;margin:0;background:#fff;border:1px solid #ddd;border-radius:4px;padding:6px}
.item img{max-width:100%;max-height:180px;display:block;margin:auto}
[hidden]{display:none!important}
.noimg{height:80px;background:#eee;text-align:center;line-height:80px;color:#888}
.badge{padding:0 .4em;border-radius:3px;color:#fff;background:#bcbd22}
.g-target{background:#d62728}.g-rare{background:#1f77b4}.g-common{background:#9e9e9e}
.dim{color:#777}.concepts{margin:.2em 0;padding-left:1.4em}.num{color:#555}
.why{color:#7a3b00}.caption{font-style:italic;margin:.2em 0}.ids{font-size:10px;word-break:break-all}
"""

_JS = """
(function(){
  var state={group:"all",cls:"all"};
  function apply(){
    var items=document.querySelectorAll(".item"),shown=0;
    items.forEach(function(el){
      var ok=(state.group==="all"||el.dataset.group===state.group)&&(state.cls==="all"||el.dataset.class===state.cls);
      el.hidden=!ok; if(ok){shown++;}
    });
    document.getElementById("shown").textContent=String(shown);
  }
  document.querySelectorAll("button[data-group]").forEach(function(b){
    b.addEventListener("click",function(){
      state.group=b.dataset.group;
      document.querySelectorAll("button[data-group]").forEach(function(o){o.classList.toggle("active",o===b);});
      apply();
    });
  });
  document.getElementById("class-filter").addEventListener("change",function(e){state.cls=e.target.value;apply();});
  apply();
})();
"""


def page_name(page: int) -> str:
    """File name of gallery page ``page`` (1-based): ``index.html``, ``page-002.html``, ..."""
    return "index.html" if page == 1 else f"page-{page:03d}.html"


def page_links(pages: int, current: int) -> str:
    """Links to every page of a multi-page gallery (empty for one page)."""
    if pages <= 1:
        return ""
    links = (f"<b>{p}</b>" if p == current else f'<a href="{page_name(p)}">{p}</a>' for p in range(1, pages + 1))
    return f'<nav class="pages">pages: {" ".join(links)}</nav>'


def thumbnail(jpeg: bytes, max_px: int, quality: int = 80) -> bytes:
    """The crop as a JPEG of at most ``max_px`` on its longer side (unchanged if already that small).

    Raises ``PIL.UnidentifiedImageError``/``OSError`` for bytes that are not a decodable image.
    """
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as img:
        if max(img.size) <= max_px:
            return jpeg
        img = img.convert("RGB")
        img.thumbnail((max_px, max_px), Image.Resampling.BILINEAR)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=quality, optimize=False)
    return out.getvalue()


def render_gallery(items: pd.DataFrame, title: str = "conceptmine gallery", summary: str = "", nav: str = "") -> str:
    """The whole page: filters (group buttons, class select), one section per gallery section;
    ``nav``: links to the other pages (:func:`page_links`)."""
    records = items.to_dict("records")
    groups = sorted({str(r.get("group") or "unscored") for r in records}, key=lambda g: (GROUP_RANK.get(g, 9), g))
    classes = sorted({str(r.get("class_name") or "unknown") for r in records})
    buttons = '<button data-group="all" class="active">all</button>' + "".join(
        f'<button data-group="{_E(g)}">{_E(g)}</button>' for g in groups
    )
    options = '<option value="all">all classes</option>' + "".join(
        f'<option value="{_E(c)}">{_E(c)}</option>' for c in classes
    )
    sections = []
    for key, heading in SECTIONS.items():
        part = [r for r in records if r["section"] == key]
        if key == "all" and not part:
            continue
        body = "".join(_item_html(r) for r in part) or '<p class="dim">no items</p>'
        sections.append(f'<section id="section-{key}"><h2>{_E(heading)} ({len(part)})</h2>'
                        f'<div class="grid">{body}</div></section>')
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_E(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
        f"<h1>{_E(title)}</h1><p>{_E(summary)}</p>{nav}"
        f'<div class="filters">group: {buttons} class: <select id="class-filter">{options}</select>'
        f' <span class="dim"><span id="shown">{len(records)}</span> of {len(records)} shown</span></div>'
        f"{''.join(sections)}<script>{_JS}</script></body></html>\n"
    )

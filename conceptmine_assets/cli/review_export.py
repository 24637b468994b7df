"""``conceptmine reviews export --format csv|coco [--out FILE]``: the reviewed boxes for annotation tools.

The effective reviews (``lib/reviews.py``: the last review per crop or sample wins) joined with
their crops' boxes and frames through the store's read-only views; CSV (one row per review,
sample-level reviews with empty box columns) or COCO-style JSON (``lib/reviews.coco_export``).
"""

from __future__ import annotations

import json
import sys


def export_command(fmt: str, out: str | None) -> int:
    """Write the effective reviews with their boxes as CSV or COCO-style JSON."""
    from conceptmine_assets.cli import UsageError
    from conceptmine_assets.lib.reviews import coco_export, csv_frame
    from conceptmine_assets.resources.reviews_log import read_effective, reviewed_boxes
    from conceptmine_assets.resources.store_sql import open_store_views, stored_tables
    from conceptmine_assets.settings import load_settings

    store = load_settings().store
    effective = read_effective(store)
    if effective.empty:
        raise UsageError(f"no reviews under {store}/reviews yet: review crops in `conceptmine serve` first")
    views = open_store_views(store)
    try:
        reviewed = reviewed_boxes(lambda sql, params: views.execute(sql, params).df(), set(stored_tables(store)),
                                  effective)
    finally:
        views.close()
    text = (csv_frame(reviewed).to_csv(index=False) if fmt == "csv"
            else json.dumps(coco_export(reviewed), indent=1) + "\n")
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text)
        sys.stderr.write(f"{out}: {len(effective)} reviews ({fmt})\n")
    else:
        sys.stdout.write(text)
    return 0

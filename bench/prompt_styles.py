"""Both VLM prompt styles (``json`` and the paper's) through the tiny random Qwen2-VL twin on CPU:
crops sent to the VLM, answers, parse outcome and seconds per crop. The twin answers noise, so
the numbers say that both code paths run end to end and what they cost, not how good they are.

    PYTHONPATH=. .venv/bin/python bench/prompt_styles.py [--crops 24]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["car", "truck", "bicycle", "pedestrian", "motorcycle", "bus"]


def crops(n: int) -> list:
    from conceptmine_assets.lib.captioning import CaptionRequest

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        h, w = int(rng.integers(32, 160)), int(rng.integers(32, 160))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(CaptionRequest(f"d{i}", buf.getvalue(), CLASSES[i % len(CLASSES)]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the style's (64 / 150)")
    args = parser.parse_args()
    from conceptmine_assets.resources.qwen2_vl_captioner import Qwen2VLCaptioner
    from conceptmine_assets_tests.tiny_qwen2_vl import build_tiny_qwen2_vl

    requests = crops(args.crops)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_qwen2_vl(Path(tmp) / "twin")
        print("| style | crops | sent to VLM | ok | failed | class_name | s per sent crop |")
        print("|---|---|---|---|---|---|---|")
        for style in ("json", "paper"):
            captioner = Qwen2VLCaptioner(model=str(model), device="cpu", prompt_style=style,
                                         max_new_tokens=args.max_new_tokens)
            captioner.load()  # load outside the timing
            started = time.perf_counter()
            results = captioner.caption(requests)
            seconds = time.perf_counter() - started
            status = Counter(r.status for r in results)
            sent = status["ok"] + status["failed"]
            print(f"| {style} | {len(requests)} | {sent} | {status['ok']} | {status['failed']} | "
                  f"{status['class_name']} | {seconds / max(sent, 1):.3f} |")


if __name__ == "__main__":
    main()

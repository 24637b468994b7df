"""Encodings do not depend on what ran before in the process: ultralytics sets torch's CPU thread
count when it loads a detector, and torch's sums (hence the last bits of an embedding) depend on
it, so a run resumed in a fresh process differed from an uninterrupted one by ~6e-8 in
concept_scores. The embedder now encodes on a fixed thread count (``fixed_torch_threads``)."""

import subprocess
import sys

from conceptmine_assets.resources.devices import available_cpus
from conceptmine_assets_tests.helpers import REPO

# Encode texts and images with the offline embedder, after setting torch's thread count to
# argv[1] (0: leave the process default), as a detector loaded earlier would; print digests.
_CHILD = """
import hashlib, sys
import numpy as np, torch
from PIL import Image
from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
threads = int(sys.argv[1])
if threads:
    torch.set_num_threads(threads)
before = torch.get_num_threads()
emb = OfflineEmbedder(device="cpu")
texts = [f"a photo of a {w} on the road" for w in ["car", "truck", "bus", "pedestrian", "traffic cone", "stroller"] * 8]
rng = np.random.default_rng(0)
images = [Image.fromarray(rng.integers(0, 255, (96, 64, 3), dtype=np.uint8)) for _ in range(6)]
print(hashlib.sha256(emb.encode_texts(texts).tobytes()).hexdigest(), hashlib.sha256(emb.encode_images(images).tobytes()).hexdigest())
print("threads restored", torch.get_num_threads() == before)
"""


def _digests(threads: int) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(threads)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = proc.stdout.strip().splitlines()[-2:]
    assert second == "threads restored True"  # the caller's setting is back after encoding
    return first.split()


def test_encodings_do_not_depend_on_the_process_thread_count():
    other = 1 if available_cpus() > 1 else 3  # what ultralytics' select_device sets on a small machine
    assert _digests(0) == _digests(other)



def test_a_vector_does_not_depend_on_its_batch(offline):
    """Same bytes for a text or an image whatever shares its forward pass (batch size, order,
    other texts' token lengths): a multi-scene run and a one-scene run store the same vectors."""
    import numpy as np
    from PIL import Image

    from conceptmine_assets.resources.offline_embedder import OfflineEmbedder

    texts = [f"a {w} next to a {v}" for w in ["car", "truck", "traffic cone", "dog"] for v in ["tree", "red lorry", "x"]]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (80 + 8 * i, 64, 3), dtype=np.uint8)) for i in range(7)]
    ref_texts, ref_images = offline.encode_texts(texts), offline.encode_images(images)
    for batch_size in (1, 3, 5):
        other = OfflineEmbedder(device="cpu", batch_size=batch_size)
        assert np.array_equal(other.encode_texts(texts), ref_texts), batch_size
        assert np.array_equal(other.encode_images(images), ref_images), batch_size
    assert np.array_equal(offline.encode_texts(texts[::-1])[::-1], ref_texts)
    assert np.array_equal(offline.encode_texts(texts[:1]), ref_texts[:1])


def test_a_scene_gets_the_same_vectors_alone_and_with_other_scenes(offline):
    """A multi-scene run's batches never mix scenes (``embed_crops``): a crop's last bits depend
    on the other crops of its forward pass, so mixing would make them depend on the run."""
    import io

    import numpy as np
    import pandas as pd
    from PIL import Image

    from conceptmine_assets.assets.embeddings import embed_crops

    rng = np.random.default_rng(1)

    def scene(name: str, n: int) -> pd.DataFrame:
        jpegs = []
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (40 + 3 * i, 56, 3), dtype=np.uint8)).save(buf, "JPEG")
            jpegs.append(buf.getvalue())
        return pd.DataFrame({"scene_name": name, "detection_id": [f"{name}-{i}" for i in range(n)], "image_jpeg": jpegs})

    a, b = scene("scene-a", 37), scene("scene-b", 30)
    together = embed_crops(pd.concat([a, b], ignore_index=True), offline)
    assert np.array_equal(together, np.concatenate([embed_crops(a, offline), embed_crops(b, offline)]))


def test_the_steady_heap_keeps_freed_pages_and_gives_them_back_after(offline):
    """Inside ``steady_heap`` a freed 64 MB block is reused without page faults (glibc would
    mmap and unmap it: 16k faults of 4 KiB pages each time, at least 32 with 2 MiB transparent
    huge pages); after the scope, such blocks are mmapped again."""
    import platform
    import resource

    import numpy as np
    import pytest

    from conceptmine_assets.resources.devices import steady_heap

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only: elsewhere steady_heap does nothing")

    def faults_of_a_fresh_block() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.ones(64 << 20, dtype=np.uint8)  # writes every page
        del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    with steady_heap():
        with steady_heap():  # nested: only the outermost scope restores
            faults_of_a_fresh_block()
        faults_of_a_fresh_block()
        inside = faults_of_a_fresh_block()
    after = faults_of_a_fresh_block()
    assert inside < 32 <= after, (inside, after)

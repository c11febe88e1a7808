"""tools/bench_train.py's folder-of-images case: its flags and its pieces (not a timing)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import load_tool


@pytest.fixture(scope="module")
def bench():
    return load_tool("bench_train")


def test_images_flags_reach_the_image_benchmark(bench, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "image_benchmark", lambda *args: calls.append(args))
    bench.main(["--images", "--steps", "2", "--rounds", "1"])
    bench.main(["--images", "--workers", "0", "--threads", "1", "--spinning", "during-run"])
    assert calls == [(2, 1, 2, os.cpu_count(), "never"), (4, 6, 0, 1, "during-run")]


def test_jpeg_folder_and_timed_epoch(bench, tmp_path):
    from PIL import Image

    root = bench.write_jpegs(tmp_path / "jpegs", 20)
    files = sorted(root.glob("*/*.jpg"))
    assert len(files) == 20 and len({f.parent for f in files}) == 10
    with Image.open(files[0]) as im:
        assert (im.size, im.mode, im.format) == ((72, 72), "RGB", "JPEG")
    seen = []
    took, waited, steps, cpu = bench.timed_epoch(iter(range(5)), seen.append, 3)
    assert seen == [0, 1, 2] and steps == 3 and 0 <= waited <= took and cpu >= 0
    assert bench.timed_epoch(np.arange(4), lambda b: None)[2] == 4

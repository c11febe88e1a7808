"""Batch prediction on this machine: `graphcnn predict MODEL --data D --out O` and the
`graphcnn.Predictor` it runs (the Ray engine's tests are in test_ray_predict.py)."""
from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np
import pytest

from conftest import load_tool
from graphcnn import Predictor
from graphcnn.api import compile_spec
from graphcnn.cli import main
from graphcnn.deploy import batch
from graphcnn.deploy.ray_job import plan
from graphcnn.errors import RunError

TINY = """name: tiny
inputs: {image: [3, 16, 20]}
nodes:
  - {id: conv, op: conv2d, channels: 4, kernel: 3, padding: same}
  - {op: relu}
  - {id: pool, op: global_avgpool}
  - {id: fc, op: linear, features: 3}
preprocess: {resize: 18, crop: [16, 20], mean: [0.5, 0.4, 0.3], std: [0.2, 0.3, 0.25]}
labels: [cat, dog, bird]
"""


def make_images(folder, count: int, seed: int = 0):
    """`count` small PNGs of odd sizes, a third of them in a subfolder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        where = folder / "sub" if i % 3 == 0 else folder
        where.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(18, 40)), int(rng.integers(20, 40))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(where / f"img{i:03d}.png")
        paths.append(str(where / f"img{i:03d}.png"))
    return sorted(paths)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    (root / "tiny.yaml").write_text(TINY)
    model = compile_spec(root / "tiny.yaml", seed=2)
    import onnx
    onnx.save(model, str(root / "tiny.onnx"))
    paths = make_images(root / "imgs", 20)
    (root / "imgs" / "broken.png").write_text("not an image")
    (root / "imgs" / ".hidden.png").write_text("skipped")
    (root / "imgs" / "notes.txt").write_text("not listed")
    return root, paths


def predict(*argv) -> int:
    return main(["predict", *map(str, argv)])


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_folder_listing_is_recursive_sorted_and_absolute(setup):
    root, paths = setup
    listed = batch.list_images(root / "imgs")
    assert listed == sorted(paths + [str(root / "imgs" / "broken.png")])
    assert all(os.path.isabs(p) for p in listed)


def test_csv_rows_equal_one_image_predict(setup, capsys):
    """Every image once, in the listing's order, scored as `predict IMAGE --json` scores it;
    the unreadable one is a row with its error."""
    root, paths = setup
    assert predict(root / "tiny.onnx", "--data", root / "imgs", "--out", root / "p.csv",
                   "--top", "2", "--batch", "3") == 0
    assert "21 rows (1 with an error)" in capsys.readouterr().out
    rows = read_csv(root / "p.csv")
    assert list(rows[0]) == ["path", "label_1", "index_1", "score_1", "label_2", "index_2",
                             "score_2", "error"]
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == len(by_path) == 21
    broken = by_path[str(root / "imgs" / "broken.png")]
    assert "cannot identify image file" in broken["error"] and broken["score_1"] == ""
    assert predict(root / "tiny.onnx", *paths[:5], "--json", "--top", "2") == 0
    for single in json.loads(capsys.readouterr().out):
        row = by_path[single["path"]]
        assert row["error"] == ""
        for rank, item in enumerate(single["top"], 1):
            assert row[f"label_{rank}"] == item["label"]
            assert float(row[f"score_{rank}"]) == item["score"]  # repr: every bit kept


def test_parquet_equals_csv_and_top_is_capped_at_the_classes(setup):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root, _ = setup
    assert predict(root / "tiny.onnx", "--data", root / "imgs", "--out", root / "p.parquet",
                   "--batch", "7") == 0
    table = pq.read_table(root / "p.parquet")
    assert table.column_names[-4:] == ["label_3", "index_3", "score_3", "error"]  # 3 classes
    assert table.schema.field("score_1").type == pa.float64()
    assert predict(root / "tiny.onnx", "--data", root / "imgs", "--out", root / "q.csv") == 0
    rows = read_csv(root / "q.csv")
    assert [r["path"] for r in rows] == table.column("path").to_pylist()
    assert [float(r["score_1"]) if r["score_1"] else None for r in rows] == \
        table.column("score_1").to_pylist()


def test_csv_list_with_a_missing_file_and_raw_outputs(setup):
    root, paths = setup
    listing = root / "list.csv"
    names = [os.path.relpath(p, root) for p in paths[:4]] + ["imgs/gone.png"]
    listing.write_text("path,label\n" + "".join(f"{n},0\n" for n in names))
    assert predict(root / "tiny.onnx", "--data", listing, "--out", root / "raw.csv",
                   "--raw") == 0
    rows = read_csv(root / "raw.csv")
    assert [r["path"] for r in rows] == [str(root / n) for n in names]
    assert rows[-1]["error"] == f"no such image: {root / 'imgs' / 'gone.png'}"
    p = Predictor(root / "tiny.onnx")
    want = p(p.load_all(paths[:4]))
    got = np.array([json.loads(r["output"]) for r in rows[:4]], np.float32)
    np.testing.assert_array_equal(got, want)


def test_predictor_numpy_in_numpy_out(setup):
    root, paths = setup
    p = Predictor(str(root / "tiny.onnx"), threads=1)
    x = p.load_all(paths[:3])
    assert x.shape == (3, 3, 16, 20) and x.dtype == np.float32
    y = p(x)
    assert y.shape == (3, 3) and p.labels == ["cat", "dog", "bird"]
    top = p.top(y[0], k=2)
    assert top["measure"] == "probability" and len(top["top"]) == 2
    assert top["top"][0]["score"] == pytest.approx(np.max(np.exp(y[0]) / np.exp(y[0]).sum()))
    from_bytes = p.load("any-name.png", open(paths[0], "rb").read())
    np.testing.assert_array_equal(from_bytes, x[0])


def test_fixed_batch_model_is_padded(setup, tmp_path):
    root, paths = setup
    model = compile_spec(root / "tiny.yaml", seed=2, batch=4)
    fixed, free = Predictor(model), Predictor(root / "tiny.onnx")
    x = free.load_all(paths[:6])
    np.testing.assert_array_equal(fixed(x), free(x))  # runs of 4, the second padded


def test_usage_errors(setup, capsys):
    root, paths = setup
    model = root / "tiny.onnx"
    cases = [((model,), "IMAGE... or --data"),
             ((model, paths[0], "--data", root / "imgs", "--out", root / "x.csv"), "not both"),
             ((model, "--data", root / "imgs"), "--data and --out go together"),
             ((model, "--data", root / "imgs", "--out", root / "x.csv", "--workers", "2"),
              "--workers is for --engine ray"),
             ((model, "--data", root / "imgs", "--out", root / "x.txt"), ".parquet or .csv"),
             ((model, "--data", root / "imgs" / "notes.txt", "--out", root / "x.csv"),
              "not a folder, a .csv or a .parquet"),
             ((model, paths[0], "--raw"), "--raw is for --data")]
    for argv, message in cases:
        assert predict(*argv) == 1
        assert message in capsys.readouterr().err
    assert not (root / "x.csv").exists()


def test_missing_extras_name_the_install(setup, capsys, monkeypatch):
    root, _ = setup
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    assert predict(root / "tiny.onnx", "--data", root / "imgs", "--out", root / "r.parquet",
                   "--engine", "ray") == 1
    assert "pip install 'graphcnn[ray]'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert predict(root / "tiny.onnx", "--data", root / "imgs", "--out", root / "r.parquet") == 1
    err = capsys.readouterr().err
    assert "needs pyarrow" in err and "graphcnn[predict]" in err and "--out FILE.csv" in err
    assert not (root / "r.parquet").exists()


def test_interrupted_run_leaves_the_previous_file(setup, monkeypatch):
    root, _ = setup
    out = root / "keep.csv"
    out.write_text("previous\n")
    calls = []

    def stop(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)
    real = batch.result_columns
    monkeypatch.setattr(batch, "result_columns", stop)
    assert predict(root / "tiny.onnx", "--data", root / "imgs", "--out", out, "--batch", "4") == 130
    assert out.read_text() == "previous\n"
    assert [p.name for p in root.iterdir() if p.name.startswith(".keep")] == []


@pytest.mark.parametrize("cpus, workers, threads, want", [
    ([16], None, None, (8, 2)), ([16], 2, None, (2, 8)), ([16], None, 4, (4, 4)),
    ([2], None, None, (1, 2)), ([1], None, None, (1, 1)), ([8, 8], 3, None, (3, 4)),
    ([2], 2, 1, (2, 1)),
])
def test_workers_times_threads_fit_the_cores(cpus, workers, threads, want):
    assert plan(cpus, workers, threads) == want


def test_too_many_workers_is_an_error():
    with pytest.raises(RunError, match="3 workers x 2 threads do not fit"):
        plan([4], 3, 2)


def test_benchmark_tool_runs_one_local_case(setup, tmp_path):
    """tools/bench_predict.py's pieces on 3 images (a smoke test, not a timing)."""

    from PIL import Image

    root, _ = setup
    bench = load_tool("bench_predict")
    folder = bench.write_jpegs(tmp_path / "jpegs", 3)
    files = sorted(folder.glob("*/*.jpg"))
    with Image.open(files[0]) as im:
        assert len(files) == 3 and (im.size, im.format) == ((224, 224), "JPEG")
    wall, job = bench.timed(root / "tiny.onnx", folder, tmp_path / "local.csv", "local", 2, None)
    assert 0 <= job <= wall and len(read_csv(tmp_path / "local.csv")) == 3

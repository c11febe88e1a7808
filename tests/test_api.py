"""The Python API's training and compile-or-load entry points, against what the CLI does."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphcnn
from graphcnn.cli import main
from graphcnn.errors import RunError
from graphcnn.spec import NetworkSpec

ROOT = Path(__file__).resolve().parent.parent
CNN = ROOT / "specs" / "mnist1d_cnn.yaml"


@pytest.fixture()
def tiny_npz(tmp_path) -> Path:
    """64 training and 16 test rows shaped for mnist1d_cnn (40 samples, 10 classes)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=rng.standard_normal((64, 40)).astype(np.float32),
             y=rng.integers(0, 10, 64), x_test=rng.standard_normal((16, 40)).astype(np.float32),
             y_test=rng.integers(0, 10, 16))
    return path


def test_train_spec_writes_what_the_cli_writes(tiny_npz, tmp_path):
    flags = {"epochs": 1, "batch": 32}
    result = graphcnn.train_spec(CNN, tmp_path / "api.onnx", data=tiny_npz, threads=1, **flags)
    assert [r["epoch"] for r in result.history] == [1] and result.step == 2
    assert main(["train", str(CNN), "--data", str(tiny_npz), "-o", str(tmp_path / "cli.onnx"),
                 "--epochs", "1", "--batch", "32"]) == 0
    for stem in ("api", "cli"):
        assert (tmp_path / f"{stem}.ckpt.npz").is_file()
        assert (tmp_path / f"{stem}.metrics.csv").is_file()
    api_meta = json.loads((tmp_path / "api.metrics.json").read_text())
    cli_meta = json.loads((tmp_path / "cli.metrics.json").read_text())
    assert api_meta["spec"] == cli_meta["spec"] == str(CNN)
    assert api_meta["recipe"] == cli_meta["recipe"]
    assert api_meta["recipe"]["data"] == str(tiny_npz)
    for key in ("train_loss", "test_loss"):
        assert api_meta["epochs"][0][key] == pytest.approx(cli_meta["epochs"][0][key], rel=1e-5)
    assert onnx.load(tmp_path / "api.onnx").graph.output[0].name == "probs"


def test_train_spec_takes_a_network_spec_and_refuses_a_missing_folder(tiny_npz, tmp_path):
    spec = NetworkSpec.from_yaml(CNN)
    with pytest.raises(RunError, match="output folder"):
        graphcnn.train_spec(spec, tmp_path / "nowhere" / "m.onnx", data=tiny_npz, epochs=1)
    graphcnn.train_spec(spec, tmp_path / "m.onnx", data=tiny_npz, epochs=1, batch=64)
    assert json.loads((tmp_path / "m.metrics.json").read_text())["spec"] == "mnist1d_cnn"


def test_training_job_reads_relative_data_beside_the_spec(tiny_npz, tmp_path, monkeypatch):
    folder = tmp_path / "specs"
    folder.mkdir()
    shutil.copy(CNN, folder / "cnn.yaml")
    shutil.copy(tiny_npz, folder / "rows.npz")
    monkeypatch.chdir(tmp_path)
    job = graphcnn.training_job(folder / "cnn.yaml", "out.onnx", data="rows.npz", epochs=2)
    assert job.recipe.epochs == 2 and len(job.data.x) == 64
    assert job.checkpoint == Path("out.ckpt.npz")


def test_model_for_compiles_specs_and_loads_onnx_files(tmp_path):
    compiled = graphcnn.model_for(CNN)
    assert compiled.graph.output[0].name == "probs"
    assert graphcnn.model_for(NetworkSpec.from_yaml(CNN)) == compiled
    onnx.save(compiled, tmp_path / "m.onnx")
    assert graphcnn.model_for(tmp_path / "m.onnx") == compiled
    with pytest.raises(RunError, match="no such file"):
        graphcnn.model_for(tmp_path / "missing.onnx")


def test_train_spec_takes_the_cli_training_options(tmp_path):
    """val, workers, augment, schedule, label smoothing, freeze, head_classes, keep: the
    options `graphcnn train` has, as keyword arguments (a folder of 3 classes of 8x8 PNGs)."""
    from PIL import Image

    from graphcnn.train.loop import build_step
    from graphcnn.train.step import initial_state

    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "png" / f"c{c}").mkdir(parents=True)
        for i in range(12):
            pixels = (rng.random((8, 8)) * 80 + c * 80).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "png" / f"c{c}" / f"{i}.png")
    spec = ROOT / "specs" / "digits_cnn.yaml"
    options = dict(data=tmp_path / "png", epochs=2, batch=8, val=0.25, workers=1,
                   head_classes=3, freeze="conv1,bn1", schedule={"kind": "cosine", "warmup": 1},
                   label_smoothing=0.1, augment={"hflip": 0.5}, keep="best")
    result = graphcnn.train_spec(spec, tmp_path / "m.onnx", threads=1, **options)
    recipe = json.loads((tmp_path / "m.metrics.json").read_text())["recipe"]
    assert recipe["val"] == 0.25 and recipe["freeze"] == ["conv1", "bn1"]
    assert recipe["schedule"]["kind"] == "cosine" and recipe["label_smoothing"] == 0.1
    assert recipe["augment"]["hflip"] == 0.5 and recipe["keep"] == "best"
    assert [r["lr"] < 0.01 for r in result.history] == [False, True]  # warmup, then cosine
    assert (tmp_path / "m.confusion.csv").is_file() and result.values["logits.weight"].shape[0] == 3
    job = graphcnn.training_job(spec, tmp_path / "n.onnx", **options)
    job.data.close()
    assert job.data.train.workers == 1 and len(job.data.val) == 9
    start = initial_state(job.checked, build_step(job.checked, job.recipe), job.recipe.seed)
    assert np.array_equal(result.values["conv1.weight"], start["conv1.weight"])  # frozen
    assert not np.array_equal(result.values["conv2.weight"], start["conv2.weight"])
    with pytest.raises(TypeError, match="unexpected keyword argument 'epoch'"):
        graphcnn.training_job(spec, tmp_path / "n.onnx", epoch=2)

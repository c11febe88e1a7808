"""The training driver: data checks, the loop, checkpoints and resume, export, the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphcnn.api import check_spec
from graphcnn.errors import DataError, RunError, SpecError
from graphcnn.spec import NetworkSpec
from graphcnn.train.data import epoch_batches, load_data
from graphcnn.train.loop import train
from graphcnn.train.recipe import Recipe, recipe_of

ROOT = Path(__file__).resolve().parent.parent

TINY = """\
name: tiny
inputs: {x: [1, 12]}
nodes:
  - {id: conv, op: conv1d, channels: 4, kernel: 3}
  - {id: bn, op: batchnorm1d}
  - {op: relu}
  - {op: flatten}
  - {id: logits, op: linear, features: 3}
  - {id: probs, op: softmax}
outputs: [probs]
training: {optimizer: sgd, lr: 0.05, momentum: 0.9, epochs: 3, batch: 32, seed: 1}
"""


def tiny_data(n: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Class = which third of the sequence has the largest sum (learnable by conv + linear)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12)).astype(np.float32)
    y = x.reshape(n, 3, 4).sum(axis=2).argmax(axis=1)
    return {"x": x[:150], "y": y[:150], "x_test": x[150:], "y_test": y[150:]}


@pytest.fixture(scope="module")
def tiny():
    spec = NetworkSpec.from_text(TINY, "tiny.yaml")
    return spec, check_spec(spec)


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "tiny.npz"
    np.savez(path, **tiny_data())
    return path


def run(checked, recipe, data, **kw):
    return train(checked, recipe, data, threads=1, **kw)


def test_loss_drops_and_same_seed_gives_same_weights(tiny, data_file):
    spec, checked = tiny
    recipe = recipe_of(spec)
    data = load_data(data_file, checked, "cross_entropy")
    first = run(checked, recipe, data)
    assert first.history[-1]["train_loss"] < 0.8 * first.history[0]["train_loss"]
    assert first.history[-1]["test_accuracy"] > 0.5  # chance is 1/3
    assert first.step == 3 * 5  # 150 rows in batches of 32: 5 steps, the last one padded
    again = run(checked, recipe, data)
    for name, value in first.values.items():
        np.testing.assert_array_equal(value, again.values[name], err_msg=name)


def test_resume_continues_exactly(tiny, data_file, tmp_path):
    spec, checked = tiny
    recipe = recipe_of(spec)
    data = load_data(data_file, checked, "cross_entropy")
    straight = run(checked, recipe, data, checkpoint=tmp_path / "a.ckpt.npz")
    ckpt = tmp_path / "b.ckpt.npz"
    run(checked, recipe.override(epochs=2), data, checkpoint=ckpt)
    resumed = run(checked, recipe, data, checkpoint=ckpt, resume=ckpt)
    assert resumed.step == straight.step
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for name, value in straight.values.items():
        np.testing.assert_allclose(resumed.values[name], value, rtol=0, atol=1e-6, err_msg=name)
    assert "bn.running_mean" in straight.values and "conv.weight.momentum" in straight.values


def numpy_forward(values: dict, x: np.ndarray) -> np.ndarray:
    """The tiny network in evaluation mode, from the math: valid conv, batch norm with running
    statistics, relu, flatten, linear, softmax."""
    w, b = values["conv.weight"], values["conv.bias"]
    cols = np.stack([x[:, 0, i:i + 3] for i in range(10)], axis=1)  # [N, 10, 3]
    h = np.einsum("nlk,ck->ncl", cols, w[:, 0, :]) + b[None, :, None]
    mean, var = values["bn.running_mean"], values["bn.running_var"]
    h = (h - mean[:, None]) / np.sqrt(var[:, None] + 1e-5) * values["bn.weight"][:, None] \
        + values["bn.bias"][:, None]
    h = np.maximum(h, 0).reshape(len(x), -1)
    z = h @ values["logits.weight"].T + values["logits.bias"]
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def test_export_is_the_evaluation_mode_network(tiny, data_file, tmp_path):
    import onnxruntime as ort

    from graphcnn.train.trained_model import export_model

    spec, checked = tiny
    data = load_data(data_file, checked, "cross_entropy")
    result = run(checked, recipe_of(spec).override(epochs=2), data)
    assert not np.allclose(result.values["bn.running_var"], 1.0)  # statistics were tracked
    path = tmp_path / "trained.onnx"
    export_model(checked, result.values, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": data.x_test})[0]
    np.testing.assert_allclose(got, numpy_forward(result.values, data.x_test), atol=1e-5)
    accuracy = float((got.argmax(1) == data.y_test).mean())
    assert accuracy == pytest.approx(result.history[-1]["test_accuracy"])


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(x=d["x"].reshape(150, 3, 4)), "does not fit the spec's input"),
    (lambda d: d["y"].__setitem__(3, 7), "label out of range; expected 0..2; received 7"),
    (lambda d: d["x"].__setitem__((5, 2), np.nan), "NaN or Inf values (first in row 5)"),
    (lambda d: d.pop("y"), "no array 'y'"),
    (lambda d: d.pop("y_test"), "x_test and y_test come together"),
    (lambda d: d.update(y=d["y"][:100]), "different numbers of rows"),
])
def test_bad_data_is_refused(tiny, tmp_path, change, message):
    arrays = tiny_data()
    change(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as exc:
        load_data(path, tiny[1], "cross_entropy")
    assert message in str(exc.value)


def test_training_section_errors_name_the_line():
    text = TINY.replace("seed: 1}", "seed: 1, learning_rate: 0.1}")
    with pytest.raises(SpecError) as exc:
        recipe_of(NetworkSpec.from_text(text, "t.yaml"))
    assert str(exc.value).startswith("t.yaml:11:")
    assert "unknown field 'learning_rate' in training" in str(exc.value)
    with pytest.raises(SpecError, match="training.lr"):
        recipe_of(NetworkSpec.from_text(TINY.replace("lr: 0.05", "lr: -1"), "t.yaml"))
    with pytest.raises(SpecError, match="--batch"):
        Recipe().override(batch=0)


def test_padded_batches_cover_each_row_once():
    x = np.arange(10, dtype=np.float32)[:, None]
    batches = list(epoch_batches(x, np.arange(10), 4, np.random.default_rng(0)))
    real = np.concatenate([b.x[b.mask == 1, 0] for b in batches])
    assert sorted(real) == list(range(10)) and [b.real for b in batches] == [4, 4, 2]
    assert batches[-1].x.shape == (4, 1) and list(batches[-1].mask) == [1, 1, 0, 0]


def test_divergence_stops_with_the_step(tiny, data_file, tmp_path):
    spec, checked = tiny
    arrays = tiny_data()
    arrays["x"] = arrays["x"] * np.float32(1e30)
    path = tmp_path / "huge.npz"
    np.savez(path, **arrays)
    data = load_data(path, checked, "cross_entropy")
    with pytest.raises(RunError, match=r"training diverged: the loss is (nan|inf) at step \d+ \(epoch 1\)"):
        run(checked, recipe_of(spec), data, checkpoint=tmp_path / "c.ckpt.npz")


def cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "graphcnn.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=120)


def test_cli_train_end_to_end(data_file, tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    done = cli("train", spec, "--data", data_file, "-o", tmp_path / "t.onnx", "--epochs", "1",
               "--optimizer", "adam", "--lr", "0.01", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "test error" in done.stdout
    rows = (tmp_path / "t.metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,train_loss,train_accuracy,test_loss,test_accuracy")
    assert len(rows) == 2
    meta = json.loads((tmp_path / "t.metrics.json").read_text())
    assert meta["recipe"]["optimizer"] == "adam" and meta["recipe"]["lr"] == 0.01
    assert (tmp_path / "t.ckpt.npz").is_file()
    ran = cli("run", tmp_path / "t.onnx", "--batch", "2", cwd=tmp_path)
    assert ran.returncode == 0 and "probs: shape [2, 3]" in ran.stdout, ran.stderr
    bad = cli("train", spec, "--data", tmp_path / "none.npz", "-o", tmp_path / "u.onnx",
              cwd=tmp_path)
    assert bad.returncode == 1 and "no such data file" in bad.stderr


def test_compile_training_writes_the_step_model(tmp_path):
    import onnx

    from graphcnn.cli import main

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    assert main(["compile", str(spec), "--training", "--batch", "8",
                 "-o", str(tmp_path / "step.onnx")]) == 0
    model = onnx.load(tmp_path / "step.onnx")
    outputs = {o.name for o in model.graph.output}
    assert {"loss", "correct", "conv.weight.new", "bn.running_var.new"} <= outputs
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 8


def test_cli_resume_matches_a_straight_run(data_file, tmp_path):
    from graphcnn.cli import main
    from graphcnn.train.checkpoint import load_checkpoint

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    base = [str(spec), "--data", str(data_file)]
    assert main(["train", *base, "-o", str(tmp_path / "straight.onnx")]) == 0
    assert main(["train", *base, "-o", str(tmp_path / "part.onnx"), "--epochs", "2"]) == 0
    # the checkpoint's recipe (2 epochs) is resumed; --epochs overrides it
    assert main(["train", *base, "-o", str(tmp_path / "part.onnx"), "--epochs", "3",
                 "--resume", str(tmp_path / "part.ckpt.npz")]) == 0
    names = list(np.load(tmp_path / "straight.ckpt.npz").files)
    names = [n.split("/", 1)[1] for n in names if n.startswith("carried/")]
    a = load_checkpoint(tmp_path / "straight.ckpt.npz", names)
    b = load_checkpoint(tmp_path / "part.ckpt.npz", names)
    assert (a.epoch, a.step) == (b.epoch, b.step) == (3, 15)
    for name in names:
        np.testing.assert_allclose(b.values[name], a.values[name], rtol=0, atol=1e-6)
    assert len((tmp_path / "part.metrics.csv").read_text().splitlines()) == 4


def test_mse_regression_learns_a_linear_map(tmp_path):
    spec = NetworkSpec.from_text("name: reg\ninputs: {x: [4]}\nnodes:\n"
                                 "  - {id: fc, op: linear, features: 2}\n", "reg.yaml")
    checked = check_spec(spec)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 4)).astype(np.float32)
    y = x @ rng.standard_normal((4, 2)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x[:100], y=y[:100], x_test=x[100:], y_test=y[100:])
    data = load_data(tmp_path / "reg.npz", checked, "mse")
    recipe = Recipe(loss="mse", optimizer="adam", lr=0.05, epochs=20, batch=16)
    history = run(checked, recipe, data).history
    assert history[-1]["test_loss"] < 0.05 * history[0]["test_loss"]
    with pytest.raises(DataError, match="does not fit the spec's output for mse"):
        np.savez(tmp_path / "bad.npz", x=x, y=y[:, :1])
        load_data(tmp_path / "bad.npz", checked, "mse")

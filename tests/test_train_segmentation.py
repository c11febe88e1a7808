"""Per-pixel cross-entropy (segmentation): logits [N, C, *S], integer labels [N, *S], the mean
over every counted pixel (real rows, label not the ignore index), as torch's F.cross_entropy.

Oracles: a numpy reference written from the math, its gradient against finite differences,
torch's F.cross_entropy when torch is installed; the training step's loss and gradient
against the reference; a tiny segmentation network that learns.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from graphcnn.api import check_spec
from graphcnn.errors import DataError, SpecError
from graphcnn.spec import NetworkSpec
from graphcnn.train.data import load_data
from graphcnn.train.loop import train
from graphcnn.train.recipe import recipe_of
from graphcnn.train.step import build_training_step, initial_state
from graphcnn.train.trained_model import export_model

ROOT = Path(__file__).resolve().parent.parent


def reference_loss(logits, labels, ignore=None, mask=None):
    """(loss, d loss / d logits) from the math: -mean log softmax(z)[label] over the pixels
    whose row is real and whose label is not `ignore`."""
    z = logits.astype(np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.ones(len(z)) if mask is None else np.asarray(mask, np.float64)
    weight = rows.reshape((-1,) + (1,) * (labels.ndim - 1)) * np.ones(labels.shape)
    if ignore is not None:
        weight = weight * (labels != ignore)
    safe = np.where(weight > 0, labels, 0)
    onehot = np.moveaxis(np.eye(z.shape[1])[safe], -1, 1)
    count = max(weight.sum(), 1.0)
    loss = -(np.sum(logp * onehot, axis=1) * weight).sum() / count
    grad = (np.exp(logp) - onehot) * weight[:, None] / count
    return loss, grad


def test_reference_gradient_is_the_finite_difference():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 3, 4, 5))
    labels = rng.integers(0, 3, (2, 4, 5))
    labels[0, 1, :2] = 255
    _, grad = reference_loss(z, labels, 255, mask=[1, 1])
    v, eps = rng.standard_normal(z.shape), 1e-6
    plus, minus = (reference_loss(z + s * eps * v, labels, 255)[0] for s in (1, -1))
    assert (plus - minus) / (2 * eps) == pytest.approx(np.sum(grad * v), rel=1e-6)


def test_reference_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3, 4, 5, 2))
    labels = rng.integers(0, 4, (3, 5, 2))
    labels[1, 2] = 255
    zt = torch.tensor(z, requires_grad=True)
    want = torch.nn.functional.cross_entropy(zt, torch.tensor(labels), ignore_index=255)
    want.backward()
    loss, grad = reference_loss(z, labels, 255)
    assert loss == pytest.approx(want.item(), rel=1e-12)
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-10, atol=1e-14)


def logits_step(batch, channels, hw, classes, ignore_index=None, softmax=False):
    """A step whose logits are a 1x1 conv of the input (no bias): SGD with lr 1 makes
    weight - weight.new the loss gradient, which the chain rule gives from d loss / d logits.
    With `softmax`, the network ends in a softmax, whose input the loss reads as logits."""
    nodes = [{"id": "logits", "op": "conv2d", "channels": classes, "kernel": 1, "bias": False}]
    nodes += [{"id": "probs", "op": "softmax"}] if softmax else []
    text = yaml.safe_dump({"name": "seg", "inputs": {"x": [channels, *hw]}, "nodes": nodes})
    checked = check_spec(NetworkSpec.from_text(text))
    step = build_training_step(checked, batch=batch, ignore_index=ignore_index)
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return checked, step, sess


@pytest.mark.parametrize("ignore_index, mask, softmax", [
    (None, [1, 1, 1], False), (7, [1, 0, 1], False), (None, [0, 1, 1], True)])
def test_step_loss_and_gradient_match_the_reference(ignore_index, mask, softmax):
    checked, step, sess = logits_step(3, 2, (4, 3), 5, ignore_index, softmax)
    rng = np.random.default_rng(2)
    values = initial_state(checked, step, seed=0)
    x = rng.standard_normal((3, 2, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 5, (3, 4, 3))
    labels[2, 0] = 7 if ignore_index == 7 else 255  # a row of ignored pixels
    feeds = {"x": x, "labels": labels, "mask": np.array(mask, np.float32),
             "lr": np.array(1.0, np.float32), "step": np.array(1, np.int64), **values}
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    w = values["logits.weight"][:, :, 0, 0]
    z = np.einsum("oc,nchw->nohw", w, x)
    ignore = 255 if ignore_index is None else ignore_index
    loss, dz = reference_loss(z, labels, ignore, mask)
    assert out["loss"] == pytest.approx(loss, rel=1e-5)
    dw = np.einsum("nohw,nchw->oc", dz, x)
    np.testing.assert_allclose(w - out["logits.weight.new"][:, :, 0, 0], dw, atol=1e-5)
    counted = (np.array(mask)[:, None, None] * (labels != ignore)).sum()
    assert out["counted"] == counted
    assert out["correct"] == ((z.argmax(1) == labels) * np.array(mask)[:, None, None]).sum()


SEGMENT = """\
name: tiny_seg
inputs: {x: [1, 8, 8]}
nodes:
  - {id: c1, op: conv2d, channels: 6, kernel: 3, padding: same}
  - {op: relu}
  - {id: pool, op: maxpool2d, kernel: 2}
  - {id: c2, op: conv2d, channels: 6, kernel: 3, padding: same}
  - {op: relu}
  - {id: head, op: conv2d, channels: 2, kernel: 1}
  - {id: out, op: resize, like: x, mode: linear}
training: {optimizer: adam, lr: 0.02, epochs: 10, batch: 16, seed: 3}
"""


def segmentation_data(n=96, seed=0):
    """Class 1 where the smoothed input is positive; a border of ignored pixels (255)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    smooth = sum(np.roll(x[:, 0], (i, j), axis=(1, 2)) for i in (-1, 0, 1) for j in (-1, 0, 1))
    y = (smooth > 0).astype(np.int64)
    y[:, 0, :] = 255
    return {"x": x[:64], "y": y[:64], "x_test": x[64:], "y_test": y[64:]}


def test_tiny_segmentation_network_learns(tmp_path):
    spec = NetworkSpec.from_text(SEGMENT, "seg.yaml")
    checked = check_spec(spec)
    np.savez(tmp_path / "seg.npz", **segmentation_data())
    data = load_data(tmp_path / "seg.npz", checked, "cross_entropy")
    result = train(checked, recipe_of(spec), data, threads=1)
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < 0.7 * first["train_loss"]
    assert last["test_accuracy"] > 0.78  # per counted pixel; chance is about 0.5
    model = export_model(checked, result.values, tmp_path / "seg.onnx")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    predicted = sess.run(None, {"x": data.x_test})[0].argmax(axis=1)
    counted = data.y_test != 255
    assert last["test_accuracy"] == pytest.approx((predicted == data.y_test)[counted].mean())


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(y=d["y"][:, :4]), "must be integer class labels, one per pixel, [N, 8, 8]"),
    (lambda d: d["y"].__setitem__((0, 3, 3), 2), "expected 0..1 or 255 (ignored); received 2"),
    (lambda d: d.update(y=d["y"] + 0.5), "must be integer class labels"),
])
def test_bad_segmentation_labels_are_refused(tmp_path, change, message):
    checked = check_spec(NetworkSpec.from_text(SEGMENT, "seg.yaml"))
    arrays = segmentation_data()
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as exc:
        load_data(tmp_path / "bad.npz", checked, "cross_entropy")
    assert message in str(exc.value)


def test_ignore_index_is_for_cross_entropy_only():
    text = SEGMENT.replace("seed: 3}", "seed: 3, loss: mse, ignore_index: 0}")
    with pytest.raises(SpecError, match="ignore_index applies to loss: cross_entropy only"):
        NetworkSpec.from_text(text, "seg.yaml")


def test_fcn_resnet50_training_step_builds():
    """Built only (running it at 520x520 is a benchmark, not a test): per-pixel labels in,
    `counted` out, and onnx's shape inference agrees with the declared shapes."""
    import onnx

    spec = NetworkSpec.from_yaml(ROOT / "specs" / "fcn_resnet50.yaml")
    step = build_training_step(check_spec(spec), batch=2)
    shapes = step.shapes()
    assert shapes["labels"] == (2, 520, 520) and shapes["image"] == (2, 3, 520, 520)
    assert step.outputs[:3] == ["loss", "correct", "counted"]
    onnx.checker.check_model(step.model)
    onnx.shape_inference.infer_shapes(step.model, strict_mode=True)

"""A new op is a one-file change: this file alone adds an op graphcnn has never seen and uses it
through every command.

The op is softsign, y = x / (1 + |x|), with
- its backward rule, dx = dy / (1 + |x|)^2, checked against finite differences;
- `fp32_ops = FP32_ALL`: it stays float32 under `--precision fp16`;
- a portable lowering (Div/Add/Abs instead of ONNX Softsign) and a lint rule asking for it,
  so `graphcnn lint` reports it and `compile --portable` uses it;
- its own drawing family.
The op and its rule are registered for this module's tests only (the fixture takes them back,
so the rest of the suite sees the shipped op list), with `late=True`: after import, the spec
schema exists, and an op shipped for users is a plugin instead (tests/test_plugins.py).
"""
from __future__ import annotations

import contextlib
import io
import json
from typing import ClassVar, Literal

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphcnn.cli import main
from graphcnn.layers.base import FP32_ALL, Layer, register, unregister
from graphcnn.lint import Rule, register_rule, unregister_rule
from graphcnn.spec import NetworkSpec
from test_gradients import check_gradients


class Softsign(Layer):
    """y = x / (1 + |x|), elementwise."""
    op: Literal["softsign_x"] = "softsign_x"
    fp32_ops: ClassVar[frozenset[str]] = FP32_ALL
    draw_family: ClassVar[str] = "norm"

    def lower(self, g, xs, shapes, out):
        return g.op("Softsign", xs)

    def lower_portable(self, g, xs, shapes, out):
        return g.op("Div", [xs[0], self.denominator(g, xs[0])])

    def vjp(self, g, xs, shapes, out, y, dy):
        d = self.denominator(g, xs[0])
        return [g.op("Div", [dy, g.op("Mul", [d, d])])], {}

    def denominator(self, g, x: str) -> str:
        return g.op("Add", [g.scalar(1.0), g.op("Abs", [x])])


RULE = Rule("GCX01", "softsign host support", lambda node: "ONNX Softsign here"
            if isinstance(node.layer, Softsign) else None,
            "a made-up concern: some hosts lack Softsign", (), "Div, Add and Abs instead", True)

SPEC = """name: softsign_net
inputs: {x: [1, 12]}
training: {epochs: 1, batch: 4, lr: 0.1}
nodes:
  - {id: conv, op: conv1d, channels: 3, kernel: 3}
  - {id: soft, op: softsign_x}
  - {op: flatten}
  - {id: fc, op: linear, features: 2}
outputs: [fc]
"""


@pytest.fixture(scope="module", autouse=True)
def softsign_registered():
    register(Softsign, late=True)  # after the schema was built: rebuild it
    register_rule(RULE)
    yield
    unregister_rule(RULE.id)
    unregister("softsign_x")
    assert "softsign_x" not in json.dumps(NetworkSpec.model_json_schema())


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "softsign.yaml"
    path.write_text(SPEC)
    return path


def cli(*args) -> tuple[int, str]:
    """The command line in-process (the op is registered in this process only)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = main([str(a) for a in args])
    return code, buffer.getvalue()


def run_model(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def softsign_reference(x, model_path):
    """The network computed in numpy from the model's own weights."""
    weights = {t.name: onnx.numpy_helper.to_array(t)
               for t in onnx.load(str(model_path)).graph.initializer}
    w, b = weights["conv.weight"], weights["conv.bias"]
    conv = np.array([[np.correlate(row[0], w[c, 0], "valid") + b[c] for c in range(3)]
                     for row in x])
    soft = conv / (1 + np.abs(conv))
    return soft.reshape(len(x), -1) @ weights["fc.weight"].T + weights["fc.bias"]


def test_check_summary_and_compile(spec, tmp_path):
    assert "softsign_x" in json.dumps(NetworkSpec.model_json_schema())
    assert cli("check", spec)[0] == 0
    code, text = cli("summary", spec)
    assert code == 0 and "softsign_x" in text
    model = tmp_path / "m.onnx"
    assert cli("compile", spec, "-o", model)[0] == 0
    assert "Softsign" in {n.op_type for n in onnx.load(str(model)).graph.node}
    x = np.random.default_rng(0).standard_normal((2, 1, 12)).astype(np.float32)
    np.testing.assert_allclose(run_model(model, x), softsign_reference(x, model),
                               rtol=1e-5, atol=1e-5)


def test_backward_rule_matches_finite_differences():
    check_gradients([{"id": "pre", "op": "conv1d", "channels": 3, "kernel": 1},
                     {"id": "s", "op": "softsign_x"}], {"x": [2, 7]})


def test_train(spec, tmp_path):
    rng = np.random.default_rng(1)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((16, 1, 12)).astype(np.float32),
             y=rng.integers(0, 2, 16))
    out = tmp_path / "trained.onnx"
    code, text = cli("train", spec, "--data", data, "-o", out)
    assert code == 0, text
    assert run_model(out, np.zeros((1, 1, 12), np.float32)).shape == (1, 2)


def test_lint_and_portable(spec, tmp_path):
    code, text = cli("lint", spec)
    assert "GCX01" in text and "soft" in text
    plain, portable = tmp_path / "plain.onnx", tmp_path / "portable.onnx"
    assert cli("compile", spec, "-o", plain)[0] == 0
    code, text = cli("compile", spec, "-o", portable, "--portable")
    assert code == 0 and "portable: soft rewritten for GCX01" in text
    assert "Softsign" not in {n.op_type for n in onnx.load(str(portable)).graph.node}
    x = np.random.default_rng(2).standard_normal((3, 1, 12)).astype(np.float32)
    np.testing.assert_allclose(run_model(portable, x), run_model(plain, x), rtol=1e-6, atol=1e-6)


def test_fp16_keeps_it_fp32(spec, tmp_path):
    out = tmp_path / "half.onnx"
    assert cli("compile", spec, "-o", out, "--precision", "fp16")[0] == 0
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out)))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    types.update({i.name: i.type.tensor_type.elem_type for i in model.graph.input})
    soft = next(n for n in model.graph.node if n.op_type == "Softsign")
    assert types[soft.input[0]] == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


def test_draw_uses_its_family(spec, tmp_path):
    from graphcnn.draw.style import FAMILY_FILLS

    out = tmp_path / "net.dot"
    assert cli("draw", spec, "-o", out)[0] == 0
    assert FAMILY_FILLS["norm"] in out.read_text()

"""Compiled models run unchanged in another ONNX host: onnx's reference evaluator (pure numpy,
written from the operator specs) agrees with onnxruntime on every small shipped spec."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator

from graphcnn import check_spec, compile_spec
from graphcnn.runtime import session

SPECS = sorted(p for p in Path("specs").glob("*.yaml"))
MAX_MACS = 30_000_000  # the reference evaluator is plain numpy: keep to the small networks


def small_specs():
    out = []
    for path in SPECS:
        try:
            macs = check_spec(path).total_macs
        except Exception:  # a broken spec is reported by the spec tests, not here
            continue
        if macs <= MAX_MACS:
            out.append(path)
    return out


@pytest.mark.parametrize("path", small_specs(), ids=lambda p: p.stem)
def test_reference_evaluator_agrees_with_onnxruntime(path):
    model = compile_spec(path, seed=1)
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in model.graph.input:
        dims = [d.dim_value or 2 for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
    expected = session(model).run(None, feeds)
    got = ReferenceEvaluator(model).run(None, feeds)
    for a, b in zip(expected, got):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(a).max())))

"""Model transforms take a model and return a new one: the argument's bytes are unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from graphcnn.api import check_spec
from graphcnn.deploy.dynamic import apply_dynamic, check_dynamic
from graphcnn.deploy.foldbn import fold_batchnorm
from graphcnn.deploy.precision import convert, layer_fp32_rule
from graphcnn.deploy.quantize import QUANT_OPSET, quantize_int8
from graphcnn.lower.inference import lower
from graphcnn.runtime.blocked import blocked_convs
from graphcnn.spec import NetworkSpec
from graphcnn.train.step import build_training_step

SPEC = """name: small
inputs: {x: [3, 12, 12]}
nodes:
  - {id: conv, op: conv2d, channels: 4, kernel: 3, padding: same, bias: false}
  - {id: bn, op: batchnorm2d}
  - {op: relu}
  - {op: maxpool2d, kernel: 2}
  - {op: global_avgpool}
  - {id: fc, op: linear, features: 3}
  - {id: probs, op: softmax}
"""


@pytest.fixture(scope="module")
def checked():
    return check_spec(NetworkSpec.from_text(SPEC))


def unchanged(transform, model):
    before = model.SerializeToString()
    result = transform(model)
    assert model.SerializeToString() == before
    return result


def test_fold_batchnorm(checked):
    new, count = unchanged(fold_batchnorm, lower(checked))
    assert count == 1 and "BatchNormalization" not in {n.op_type for n in new.graph.node}


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_precision(checked, precision):
    new, _ = unchanged(lambda m: convert(m, precision, layer_fp32_rule(checked)), lower(checked))
    assert new.graph.initializer[0].data_type != lower(checked).graph.initializer[0].data_type


def test_quantize(checked):
    data = np.random.default_rng(0).standard_normal((8, 3, 12, 12)).astype(np.float32)
    new, _ = unchanged(lambda m: quantize_int8(m, data), lower(checked, opset=QUANT_OPSET))
    assert "QuantizeLinear" in {n.op_type for n in new.graph.node}


def test_dynamic(checked):
    plan = check_dynamic(checked, ["H", "W"])
    new = unchanged(lambda m: apply_dynamic(m, plan, checked), lower(checked))
    dims = new.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[2:]] == ["H", "W"]


def test_blocked_convs(checked):
    """On a CPU without NCHWc kernels it returns the model itself: unchanged either way."""
    unchanged(blocked_convs, build_training_step(checked, batch=2).model)

"""Every zoo spec trains: its training step (forward, loss, backward rules, SGD update) is
built at a small input size and one step runs in onnxruntime with a finite loss, moving every
trainable parameter that the loss reaches. (Issue 14's acceptance: "each spec compiles and
runs in onnxruntime and trains"; exactness of the forward pass is test_torchvision_equal.py's,
of each backward rule test_gradients.py's.)"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import graphcnn
from conftest import SPECS
from graphcnn.train.step import build_training_step, initial_state

SMALL = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
         "squeezenet1_1", "googlenet", "shufflenet_v2_x1_0", "regnet_y_400mf", "mnasnet0_5"]
BIG = ["convnext_tiny", "resnext50_32x4d", "wide_resnet50_2", "inception_v3", "fcn_resnet50",
       "deeplabv3_resnet50"]  # 23-69 M parameters: seconds to initialise and step
SIZE = {"inception_v3": 80}  # its valid convs and pools need at least 75


def one_step(name: str):
    spec = graphcnn.load_spec(SPECS / f"{name}.yaml")
    (input_name, shape), = spec.inputs.items()
    side = SIZE.get(name, 64)
    spec = spec.model_copy(update={"inputs": {input_name: [shape[0], side, side]}})
    checked = graphcnn.check_spec(spec)
    step = build_training_step(checked, batch=2, loss="cross_entropy", momentum=0.9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sess = ort.InferenceSession(step.model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    shapes = step.shapes()
    classes = checked.shape_of(checked.outputs[0])[0]
    values = initial_state(checked, step, 0)
    for p in step.params:  # ConvNeXt's layer scale starts at 1e-6: its block's norm would move
        if "layer_scale" in p:  # by ~1e-8, below float32's resolution near 1
            values[p] = np.full_like(values[p], 0.5)
    feeds = {step.data_input: rng.standard_normal(shapes[step.data_input]).astype(np.float32),
             "labels": rng.integers(0, classes, shapes["labels"]),
             "mask": np.ones(2, np.float32), "lr": np.array(0.01, np.float32),
             "step": np.array(1, np.int64), **{n: values[n] for n in step.carried}}
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    return step, values, out


@pytest.mark.parametrize("name", SMALL + [pytest.param(n, marks=pytest.mark.slow) for n in BIG])
def test_zoo_spec_trains_one_step(name):
    step, values, out = one_step(name)
    assert np.isfinite(out["loss"]) and out["loss"] > 0, out["loss"]
    moved = [p for p in step.params if not np.array_equal(out[f"{p}.new"], values[p])]
    still = sorted(set(step.params) - set(moved))
    # a bias right before a batchnorm gets a zero gradient (the mean removes it); none here
    assert not still, f"{len(still)} parameters did not move: {still[:5]}"

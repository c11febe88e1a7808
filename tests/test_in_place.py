"""Carried tensors updated in place (graphcnn/train/in_place.py): the same steps as with two
buffers, bit for bit, and only where the data dependencies of the step model and of the graph
onnxruntime's optimizer makes of it order every reader before the writer."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import helper

import graphcnn
import graphcnn.train.in_place as in_place_module
import graphcnn.train.step as step_module
from conftest import SPECS
from graphcnn.api import check_spec
from graphcnn.spec import NetworkSpec
from graphcnn.train.data import Batch
from graphcnn.train.in_place import in_place_names, topological
from graphcnn.train.loop import StepRunner, build_step
from graphcnn.train.recipe import Recipe
from graphcnn.train.step import build_training_step, initial_state
from test_gradients import PROVIDER

NET = """\
name: small
inputs: {x: [3, 8, 8]}
nodes:
  - {id: conv1, op: conv2d, channels: 8, kernel: 3, padding: 1, bias: false}
  - {id: bn1, op: batchnorm2d}
  - {op: relu}
  - {id: conv2, op: conv2d, channels: 8, kernel: 3, padding: 1}
  - {op: relu}
  - {op: global_avgpool}
  - {op: flatten}
  - {id: fc, op: linear, features: 4}
outputs: [fc]
"""
RECIPES = {
    "sgd": dict(optimizer="sgd", momentum=0.9, weight_decay=1e-3),
    "adam": dict(optimizer="adam"),
    "adamw": dict(optimizer="adamw", weight_decay=0.01),
    "fp16": dict(optimizer="sgd", momentum=0.9, precision="fp16"),
}
BATCH = 8


@pytest.fixture(scope="module")
def checked():
    return check_spec(NetworkSpec.from_text(NET, "small.yaml"))


def batch(checked, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, BATCH)
    return Batch(x, y, np.array([1.0] * (BATCH - 2) + [0.0] * 2, np.float32), BATCH - 2)


def trained(checked, step, steps=3, batches=None):
    start = initial_state(checked, step, 0)
    kept = {name: value.copy() for name, value in start.items()}
    runner = StepRunner(step, start, PROVIDER, threads=1)  # GRAPHCNN_TEST_PROVIDER=cuda
    for i in range(steps):
        runner.run(batches[i] if batches else batch(checked, i), 0.05, i + 1)
    assert all(np.array_equal(start[n], kept[n]) for n in start), "the caller's arrays changed"
    return runner


@pytest.fixture()
def gate_all(monkeypatch):
    """Gate every tensor, however small (by default only those of GATED_FROM elements)."""
    monkeypatch.setattr(in_place_module, "GATED_FROM", 1)


@pytest.mark.parametrize("name", RECIPES)
def test_in_place_steps_equal_two_buffers(checked, name, gate_all):
    step = build_step(checked, Recipe(batch=BATCH, lr=0.05, **RECIPES[name]))
    assert sorted(step.in_place) == sorted(step.carried)  # every update is element by element
    in_place = trained(checked, step)
    two_buffers = trained(checked, dataclasses.replace(step, in_place=[]))
    assert in_place.spare == {} and len(two_buffers.spare) == len(step.carried)
    ours, theirs = in_place.values(), two_buffers.values()
    assert all(np.array_equal(ours[n], theirs[n]) for n in step.carried)


def test_small_tensors_with_late_readers_keep_two_buffers(checked):
    """Below GATED_FROM elements the gate's nodes would cost more than the buffer saves."""
    step = build_step(checked, Recipe(batch=BATCH, lr=0.05, optimizer="sgd", momentum=0.9))
    assert {"conv2.weight", "bn1.weight"}.isdisjoint(step.in_place)
    assert {"conv2.bias", "conv2.weight.momentum"} <= set(step.in_place)
    assert not any("in_place/" in n.name for n in step.model.graph.node)


def test_the_gates_are_what_makes_weights_safe(checked, monkeypatch, gate_all):
    """A conv weight is read by its input gradient's flipped filter and a batch norm's weight by
    its backward scale, which the weight's own update does not need: without the gates these
    late readers leave the weights out (and the steps came out different in onnxruntime's
    order); biases and momenta are read only by their updates and stay in."""
    recipe = Recipe(batch=BATCH, lr=0.05, optimizer="sgd", momentum=0.9)
    monkeypatch.setattr(step_module, "gate_late_readers", lambda g, nodes, carried, lr: nodes)
    ungated = build_step(checked, recipe)
    left_out = set(ungated.carried) - set(ungated.in_place)
    assert {"conv2.weight", "bn1.weight", "fc.weight"} <= left_out
    assert {"conv2.bias", "conv2.weight.momentum", "bn1.running_mean"}.isdisjoint(left_out)


def node(op, inputs, output, **attrs):
    return helper.make_node(op, inputs, [output], name=output, **attrs)


@pytest.mark.parametrize("nodes, safe", [
    # the update reads p element by element, nothing else reads p
    ([node("Mul", ["g", "lr"], "d"), node("Sub", ["p", "d"], "p.new")], True),
    # a late reader: the Transpose runs in any order relative to the update
    ([node("Transpose", ["p"], "t", perm=[1, 0]), node("Mul", ["g", "lr"], "d"),
      node("Sub", ["p", "d"], "p.new")], False),
    # the same reader through a view of p
    ([node("Reshape", ["p", "shape"], "v"), node("Transpose", ["v"], "t", perm=[1, 0]),
      node("Sub", ["p", "g"], "p.new")], False),
    # the reader feeds the update: it has run before the update writes
    ([node("Transpose", ["p"], "t", perm=[1, 0]), node("ReduceSum", ["t"], "s"),
      node("Mul", ["g", "s"], "d"), node("Sub", ["p", "d"], "p.new")], True),
    # unchanged (an Identity), and an update reading a view of p: two buffers
    ([node("Identity", ["p"], "p.new")], False),
    ([node("Reshape", ["p", "shape"], "v"), node("Sub", ["v", "g"], "p.new")], False),
])
def test_in_place_names_follow_the_data_dependencies(nodes, safe):
    assert in_place_names(nodes, ["p"]) == (["p"] if safe else [])


def test_topological_order_moves_only_what_must_move():
    a, b, c = node("Relu", ["x"], "a"), node("Relu", ["a"], "b"), node("Relu", ["b2"], "c")
    late = node("Relu", ["a"], "b2")  # made last, read by c
    ordered = topological([a, b, c, late], {id(a): 0, id(b): 1, id(c): 2, id(late): 3})
    assert [n.name for n in ordered] == ["a", "b", "b2", "c"]
    loop = [node("Relu", ["y"], "x"), node("Relu", ["x"], "y")]
    with pytest.raises(AssertionError, match="cycle"):
        topological(loop, {id(n): i for i, n in enumerate(loop)})


def zoo_step(name: str):
    """A zoo spec's step at 64x64, batch 2 (SGD with momentum and weight decay), and batches."""
    spec = graphcnn.load_spec(SPECS / f"{name}.yaml")
    (image, shape), = spec.inputs.items()
    checked = graphcnn.check_spec(spec.model_copy(update={"inputs": {image: [shape[0], 64, 64]}}))
    step = build_training_step(checked, batch=2, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    batches = [Batch(rng.standard_normal((2, shape[0], 64, 64)).astype(np.float32),
                     rng.integers(0, 10, 2), np.ones(2, np.float32), 2) for _ in range(2)]
    return checked, step, batches


@pytest.mark.parametrize("name", ["squeezenet1_1", "mobilenet_v3_small"])
def test_zoo_steps_in_place_equal_two_buffers(name, gate_all):
    checked, step, batches = zoo_step(name)
    in_place = trained(checked, step, 2, batches)
    two_buffers = trained(checked, dataclasses.replace(step, in_place=[]), 2, batches)
    assert in_place.in_place == set(step.in_place) == set(step.carried)
    ours, theirs = in_place.values(), two_buffers.values()
    assert all(np.array_equal(ours[n], theirs[n]) for n in step.carried)


def test_the_graph_that_runs_is_checked_too(monkeypatch, gate_all):
    """Gated on the late reader's own output (a 1x1 conv's flipped filter, a Transpose),
    the gate no longer covers the copies of that Transpose which onnxruntime's optimizer makes
    for the input gradient: StepRunner finds them in the optimized graph and keeps those
    tensors in two buffers, and the steps stay exact."""
    monkeypatch.setattr(in_place_module.Flow, "meeting_data", lambda self, name, start: [start])
    checked, step, batches = zoo_step("squeezenet1_1")
    runner = trained(checked, step, 2, batches)
    assert runner.in_place < set(step.in_place)
    assert "fire2.squeeze.weight" in set(step.in_place) - runner.in_place
    two_buffers = trained(checked, dataclasses.replace(step, in_place=[]), 2, batches)
    ours, theirs = runner.values(), two_buffers.values()
    assert all(np.array_equal(ours[n], theirs[n]) for n in step.carried)

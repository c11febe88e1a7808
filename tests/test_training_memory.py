"""`graphcnn summary --training` (graphcnn/train/memory.py): the forward bytes the backward pass
keeps per node, read off the built training step; parameters, gradients and optimizer state;
the arena model; the predicted peak against tools/train_memory.py's measurement."""
from __future__ import annotations

import json

import numpy as np

from conftest import ROOT, checked_text, load_tool, summary_output
from graphcnn.summary import Summary
from graphcnn.train.loop import build_step
from graphcnn.train.memory import MIB, Arena, training_memory
from graphcnn.train.recipe import Recipe

# Batch 5, fp32: x [2, 8] is 320 bytes, a and r [4, 8] 640 each. The conv's weight gradient
# reads x, relu's backward its own output r, the linear's weight gradient f, a view of r (one
# buffer, charged to r); nothing reads a's result or the logits in the backward pass.
CHAIN = """
name: chain
inputs: {x: [2, 8]}
nodes:
  - {id: a, op: conv1d, channels: 4, kernel: 3, padding: 1}
  - {id: r, op: relu}
  - {id: f, op: flatten}
  - {id: out, op: linear, features: 3}
training: {batch: 5, optimizer: adam}
"""
PARAMS = 4 * (4 * 2 * 3 + 4 + 32 * 3 + 3)  # bytes: conv weight and bias, linear weight and bias

# A small CNN whose step holds tens of MiB at batch 64, for the measured peak.
CNN = """
name: small_cnn
inputs: {image: [3, 32, 32]}
nodes:
  - {id: c1, op: conv2d, channels: 16, kernel: 3, padding: 1, bias: false}
  - {id: b1, op: batchnorm2d}
  - {id: r1, op: relu}
  - {id: p1, op: maxpool2d, kernel: 2}
  - {id: c2, op: conv2d, channels: 32, kernel: 3, padding: 1, bias: false}
  - {id: b2, op: batchnorm2d}
  - {id: r2, op: relu}
  - {op: global_avgpool}
  - {id: logits, op: linear, features: 10}
"""



def test_kept_bytes_per_node():
    t = training_memory(checked_text(CHAIN), 5)
    assert t.kept == {"x": 320, "r": 640}
    assert t.kept_total == 960


def test_parameters_gradients_and_optimizer_state():
    checked = checked_text(CHAIN)
    for optimizer, momentum, moments in (("sgd", 0.0, 0), ("sgd", 0.9, 1), ("adam", 0.0, 2)):
        t = training_memory(checked, 5, Recipe(batch=5, optimizer=optimizer, momentum=momentum))
        assert (t.params, t.gradients, t.optimizer_state) == (PARAMS, PARAMS, moments * PARAMS)
    frozen = training_memory(checked, 5, Recipe(batch=5, freeze=["a"]))
    assert frozen.gradients == 4 * (32 * 3 + 3)  # the linear's only
    assert frozen.kept == {"r": 640}  # no weight gradient of the conv: x is not kept


def test_batchnorm_statistics_are_carried_not_trained():
    t = training_memory(checked_text(CNN), 2, Recipe(batch=2))
    assert t.statistics == 4 * 2 * (16 + 32)  # running mean and variance
    assert t.peak == t.carried + t.spare + t.arena + t.constants + t.session
    assert 0 < t.in_place <= t.carried  # the statistics, read only by their own update


def test_in_place_tensors_have_no_second_buffer():
    """The tensors the step writes over themselves (StepRunner binds them so) are counted once."""
    checked = checked_text(CNN)
    recipe = Recipe(batch=2, optimizer="sgd", momentum=0.9)
    step, t = build_step(checked, recipe), training_memory(checked, 2, recipe)
    shapes = step.shapes()
    assert t.in_place == sum(4 * int(np.prod(shapes[n])) for n in step.in_place) > 0
    text = summary_output(str(ROOT / "specs" / "mnist1d_cnn.yaml"), "--training")
    assert "written over itself" in text and "twice" not in text


def test_arena_regions_grow_as_onnxruntime_logs_them():
    """40 bytes, then 4 MiB values kept alive, as the small ResNet's step begins: regions of 1,
    4, 4, 8 (two values) and 16 MiB, as onnxruntime logs them (kNextPowerOfTwo from 1 MiB)."""
    arena = Arena()
    arena.allocate(40)
    for _ in range(5):
        arena.allocate(4 * MIB)
    assert [size // MIB for _, size in arena.regions] == [1, 4, 4, 8, 16]
    assert arena.written() == 40 + 20 * MIB


def test_arena_reuses_a_freed_chunk():
    arena = Arena()
    first = arena.allocate(3 * MIB)
    arena.free(first)
    assert arena.allocate(2 * MIB) == first  # best fit: the freed chunk, split
    assert arena.written() == 3 * MIB


def test_max_pool_backward_keeps_no_input_sized_constant():
    """Zeros of a fixed shape were folded by onnxruntime into a constant each session held."""
    step = build_step(checked_text(CNN), Recipe(batch=4))
    assert "ConstantOfShape" not in {n.op_type for n in step.model.graph.node}


def test_summary_training_columns_and_footer():
    path = ROOT / "specs" / "mnist1d_cnn.yaml"
    plain, training = summary_output(path), summary_output(path, "--training")
    assert "Kept" not in plain and "Training step" not in plain
    assert "Kept" in training.splitlines()[1]
    assert "Training step at batch 100 (adam)" in training  # the spec's training: batch
    assert "Peak of a training step" in training
    data = json.loads(summary_output(path, "--training", "--json", "--batch", "4"))
    assert data["training"]["batch"] == 4 and data["memory"]["batch"] == 4
    kept = {n["id"]: n["kept_bytes"] for n in data["nodes"]}
    assert kept["relu_1"] == 4 * 4 * 15 * 19 and kept["conv1"] == 0
    assert data["training"]["kept_bytes_per_node"]["x"] == 4 * 4 * 40


def test_summary_object_takes_the_training_memory():
    checked = checked_text(CHAIN)
    shown = Summary(checked, batch=5, training=training_memory(checked, 5))
    assert "Kept" in str(shown) and "Kept" in shown._repr_html_()
    assert shown.to_dict()["training"]["kept_bytes"] == 960


def test_summary_training_batch_defaults_to_one_without_a_training_section(tmp_path):
    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN.replace("training: {batch: 5, optimizer: adam}\n", ""))
    data = json.loads(summary_output(spec, "--training", "--json"))
    assert data["training"]["batch"] == 1 and data["training"]["optimizer"] == "sgd"


def measuring_tool():
    return load_tool("train_memory")


def test_cuda_arenas_are_read_from_onnxruntime_log():
    """Device bytes: what the arenas named Cuda took and reserved, not CudaPinned's (host)."""
    log = """[I:onnxruntime:Default, bfc_arena.cc:335 AllocateRawInternal] Extending BFCArena for \
CudaPinned. bin_num:0 (requested) num_bytes: 40 (actual) rounded_bytes:256
[I:onnxruntime:Default, bfc_arena.cc:366 AllocateRawInternal] Extended allocation by 1048576 bytes.
[I:onnxruntime:Default, bfc_arena.cc:335 AllocateRawInternal] Extending BFCArena for Cuda. \
bin_num:14 (requested) num_bytes: 4194304 (actual) rounded_bytes:4194304
[I:onnxruntime:Default, bfc_arena.cc:366 AllocateRawInternal] Extended allocation by 4194304 bytes.
[I:onnxruntime:Default, bfc_arena.cc:281 Reserve] Reserving memory in BFCArena for Cuda size: 1000
[I:onnxruntime:Default, bfc_arena.cc:281 Reserve] Reserving memory in BFCArena for Cpu size: 40
"""  # (a backslash joins each pair of lines above into onnxruntime's one)
    assert measuring_tool().cuda_arena_bytes(log) == 4194304 + 1000


def test_prediction_within_20_percent_of_the_measured_peak():
    """tools/train_memory.py measures the step's resident growth in a child process."""
    tool = measuring_tool()
    measured = tool.graphcnn_peak(CNN, 64, "sgd", 1, steps=3)
    predicted = tool.predicted(CNN, 64, "sgd").peak
    assert 20 * MIB < measured and abs(predicted / measured - 1) <= 0.2, (predicted, measured)

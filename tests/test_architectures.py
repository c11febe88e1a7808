"""The chapter's architectures as specs: exact parameter counts, ONNX compile + run, shapes equal
to ONNX shape inference, hierarchical ids, block error locations, folded summaries, goldens.

Counts of the torchvision-layout networks are torchvision's own numbers (trainable parameters,
BN running statistics excluded). The others are computed by hand from the layer formulas:
conv = C_in * C_out * prod(k) (+ C_out bias), linear = F_in * F_out + F_out, BN = 2 C,
highway gate = C * C * prod(gate_k) + C per gate (one gate coupled, two learned).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import networkx as nx
import numpy as np
import onnx
import pytest

import graphcnn
from conftest import ROOT, SPECS, load_tool, ort_run
from graphcnn.errors import GraphCnnError
from graphcnn.summary import rows

TORCHVISION = {
    "alexnet": 61_100_840,
    "alexnet_lrn": 60_965_224,  # not torchvision: Caffe's bvlc_alexnet (Krizhevsky et al. 2012)
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "resnet200": 64_673_832,
    "densenet121": 7_978_856,
    "unet": 31_030_658,  # Ronneberger et al.'s layout; torchvision has no U-Net
    # torchvision.models.segmentation builders (num_classes=21, aux_loss=False, weights=None):
    # sum(p.numel() for p in model.parameters()); their Weights meta num_params (35,322,218 and
    # 42,004,074) count the aux FCNHead(1024, 21) too: 2,365,205
    "fcn_resnet50": 32_957_013,
    "deeplabv3_resnet50": 39_638_869,
    # torchvision 0.28 builders, weights=None: sum(p.numel() for p in model.parameters()), equal
    # to each Weights enum's meta num_params (Inception-v3's 27,161,264 includes its aux head)
    "convnext_tiny": 28_589_128,
    "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240,
    "squeezenet1_1": 1_235_496,
    "googlenet": 6_624_904,  # aux_logits=False (the pretrained meta counts the same)
    "inception_v3": 23_834_568,  # aux_logits=False: 27,161,264 - 3,326,696 of AuxLogits
    "shufflenet_v2_x1_0": 2_278_604,
    # torchvision 0.28 mobile-family builders, weights=None: sum(p.numel() for p in
    # model.parameters()), equal to each Weights enum's meta num_params
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_small": 2_542_856,
    "mobilenet_v3_large": 5_483_032,
    "efficientnet_b0": 5_288_548,
    "mnasnet0_5": 2_218_512,
    "regnet_y_400mf": 4_344_144,
}

_SEG_CONVS = 3 * 16 * 9 + 16 * 32 * 9 + 32 * 64 * 9 + 64 * 32 * 9 + 32 * 16 * 9 + 16 * 16 * 9
_SEG_BN = 2 * (16 + 32 + 64 + 32 + 16 + 16)
BY_HAND = {
    # resnet200 (64,673,832) with: projections without BN, -2 * (256 + 512 + 1024 + 2048);
    # a final BN on 2048 channels, +2 * 2048; the first BN of each stage's first block sees the
    # block input (64, 256, 512, 1024) instead of 4 * width (256, 512, 1024, 2048) after conv3,
    # -2 * (192 + 256 + 512 + 1024).
    "resnet200_preact": 64_673_832 - 2 * 3840 + 2 * 2048 - 2 * 1984,
    # 784 -> 50 linear; per layer H = 50 * 50 + 50 = 2,550 plus 2,550 per gate; two coupled
    # layers (one gate) and two learned (two gates); 50 -> 10 logits.
    "highway_mlp": (784 * 50 + 50) + 2 * (2550 + 2550) + 2 * (2550 + 2 * 2550) + (50 * 10 + 10),
    # stem 1 -> 16 3x3; three coupled layers at 16 (H and T: 16 * 16 * 9 + 16 = 2,320 each);
    # widen 16 -> 32 3x3; two learned layers at 32 (H, T, C: 32 * 32 * 9 + 32 = 9,248 each);
    # 32 -> 10 logits.
    "highway_cnn": (16 * 9 + 16) + 3 * 2 * 2320 + (16 * 32 * 9 + 32) + 2 * 3 * 9248 + (32 * 10 + 10),
    # 3x3x3 convs 3 -> 16 -> 32 -> 64 -> 64 with bias, 64 -> 101 linear.
    "c3d_small": (3 * 16 * 27 + 16) + (16 * 32 * 27 + 32) + (32 * 64 * 27 + 64)
    + (64 * 64 * 27 + 64) + (64 * 101 + 101),
    # stem 12 -> 32 kernel 15 + BN; stage1: 2 blocks of two 32 -> 32 k7 convs + 2 BN;
    # stage2: 32 -> 64 and 64 -> 64 k7 + 2 BN, projection 32 * 64 + BN, then a 64 block;
    # stage3: the same at 128; 128 -> 5 logits.
    "ecg1d_resnet": (12 * 32 * 15 + 64) + 2 * (2 * 32 * 32 * 7 + 128)
    + (32 * 64 * 7 + 64 * 64 * 7 + 256 + 32 * 64 + 128) + (2 * 64 * 64 * 7 + 256)
    + (64 * 128 * 7 + 128 * 128 * 7 + 512 + 64 * 128 + 256) + (2 * 128 * 128 * 7 + 512)
    + (128 * 5 + 5),
    # six bias-free 3x3 convs (3-16-32-64 down, 64-32-16-16 up) + six BNs + 1x1 conv to 5.
    "segnet_small": _SEG_CONVS + _SEG_BN + (16 * 5 + 5),
    "segnet_nearest": _SEG_CONVS + _SEG_BN + (16 * 5 + 5),
    "segnet_linear": _SEG_CONVS + _SEG_BN + (16 * 5 + 5),
    # plus 2x2 transposed convs keeping 64, 32, 16 channels (with bias).
    "segnet_convt": _SEG_CONVS + _SEG_BN + (16 * 5 + 5)
    + (64 * 64 * 4 + 64) + (32 * 32 * 4 + 32) + (16 * 16 * 4 + 16),
}
EXPECTED = {**TORCHVISION, **BY_HAND}
OUTPUTS = {"unet": (2, 388, 388), "c3d_small": (101,), "ecg1d_resnet": (5,), "highway_mlp": (10,),
           "fcn_resnet50": (21, 520, 520), "deeplabv3_resnet50": (21, 520, 520),
           "highway_cnn": (10,), **{s: (5, 64, 64) for s in BY_HAND if s.startswith("segnet")}}
# Compiling these writes 60-140 M random weights (seconds each): slow, compiled once.
SLOW = {"alexnet", "alexnet_lrn", "vgg16", "vgg16_bn", "resnet200", "resnet200_preact",
        "wide_resnet50_2", "convnext_tiny", "inception_v3", "resnext50_32x4d"}  # and 24-69 M zoo specs
SLOW_RUN = {"unet"}  # 150 G multiply-adds per 572x572 image: about 10 s in onnxruntime
SLOW |= {"fcn_resnet50", "deeplabv3_resnet50"}  # 33-40 M weights, 143-169 G MACs at 520x520
INLINE = 4096  # initializers above this many bytes become typed graph inputs for shape inference


def spec_path(name: str):
    return SPECS / f"{name}.yaml"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "graphcnn.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def compiled():
    """compiled(name) -> (checked, ONNX model at batch 1), each spec compiled once per session.
    The big ones are used by one test each and not kept (vgg16 alone holds 550 MB)."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name in cache:
            return cache[name]
        result = (graphcnn.check_spec(spec_path(name)),
                  graphcnn.compile_spec(spec_path(name), batch=1))
        if name not in SLOW:
            cache[name] = result
        return result
    return get


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count(name):
    assert graphcnn.check_spec(spec_path(name)).total_params == EXPECTED[name]


@pytest.mark.parametrize("name", ["resnet50", "unet"])
def test_parameter_count_through_the_cli(name):
    done = run_cli("summary", str(spec_path(name)), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total_params"] == EXPECTED[name]


def inferred_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """ONNX's own shape inference, from the graph alone: our value_info is dropped, and large
    weights become typed inputs (same shapes, no 100 MB serialisation)."""
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    keep = []
    for init in bare.graph.initializer:
        if len(init.raw_data) > INLINE or len(init.float_data) > INLINE // 4:
            bare.graph.input.append(onnx.helper.make_tensor_value_info(
                init.name, init.data_type, list(init.dims)))
        else:
            keep.append(init)
    del bare.graph.initializer[:]
    bare.graph.initializer.extend(keep)
    inferred = onnx.shape_inference.infer_shapes(bare, strict_mode=True)
    return {v.name: [d.dim_value if d.HasField("dim_value") else None
                     for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.output)}


def after_unpool(checked) -> set[str]:
    """Nodes whose size ONNX cannot infer: MaxUnpool's output_shape is a computed tensor, and so
    are the gather indices of a `resize like:` an inner node (DeepLab's image pooling)."""
    unpools = [n.id for n in checked.nodes
               if n.op == "maxunpool" or (n.op == "resize" and n.layer.like is not None)]
    return set(unpools).union(*(nx.descendants(checked.graph, u) for u in unpools))


def compile_and_run(compiled, name, run: bool = True):
    checked, model = compiled(name)
    theirs = inferred_shapes(model)
    unknown = after_unpool(checked)
    for node in checked.nodes:
        if node.id in unknown and None in theirs.get(node.id, [None]):
            continue
        assert theirs[node.id] == [1, *node.shape], node.id
    if run:
        run_batch_one(checked, model, name)
    return model


def run_batch_one(checked, model, name):
    feeds = {k: np.random.default_rng(0).standard_normal((1, *s)).astype(np.float32)
             for k, s in checked.inputs.items()}
    (out,) = ort_run(model, feeds)
    assert out.shape == (1, *OUTPUTS.get(name, (1000,)))
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - SLOW))
def test_compiles_runs_and_matches_onnx_shapes(compiled, name):
    compile_and_run(compiled, name, run=name not in SLOW_RUN)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_RUN))
def test_slow_to_run_runs(compiled, name):
    run_batch_one(*compiled(name), name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_big_compiles_runs_and_matches_onnx_shapes(compiled, name):
    model = compile_and_run(compiled, name)
    if name == "resnet200":
        inits = {i.name for i in model.graph.initializer}
        assert {"stage3.block12.conv2.weight", "stage4.block0.add.project.weight"} <= inits


def architecture_lines(path) -> list[str]:
    """A spec's architecture: its lines before the sections that say how to feed it and how to
    read checkpoints into it (preprocess:, labels:, weights: come last in the shipped specs)."""
    lines = path.read_text().splitlines()
    ends = [i for i, line in enumerate(lines) if line.startswith(("preprocess:", "labels:", "weights:"))]
    body = lines[:ends[0]] if ends else lines
    while body and (not body[-1].strip() or body[-1].startswith("#")):
        body = body[:-1]  # the comment introducing the trailing sections
    return body


def test_resnet200_fits_one_screen():
    libraries = [SPECS / "blocks" / f"{lib}.yaml"
                 for lib in ("resnet", "vgg", "densenet", "unet", "highway", "segnet")]
    for path in [spec_path(name) for name in EXPECTED] + libraries:
        lines = architecture_lines(path)
        assert len(lines) <= 50, (path.name, len(lines))
    assert len(architecture_lines(spec_path("resnet200"))) <= 20


def test_ids_are_hierarchical_in_summary_and_onnx(compiled):
    ids = [n.id for n in graphcnn.check_spec(spec_path("resnet200")).nodes]
    assert "stage3.block12.conv2" in ids and "stage3.block35.add" in ids
    assert "stage3.block36.conv1" not in ids
    _, model = compiled("resnet50")
    outputs = {o for n in model.graph.node for o in n.output}
    names = {n.name for n in model.graph.node}
    inits = {i.name for i in model.graph.initializer}
    assert {"stage3.block5.conv2", "stage2.block0.add"} <= outputs
    assert any(n.startswith("stage3.block5.conv2") for n in names)
    assert {"stage3.block5.conv2.weight", "stage3.block5.bn2.running_var",
            "stage2.block0.add.project.weight", "stage2.block0.add.project.bn.weight"} <= inits


def test_depth_one_folds_to_stages():
    checked = graphcnn.check_spec(spec_path("resnet50"))
    folded = rows(checked, depth=1)
    assert [r.id for r in folded] == ["stem", "stage1", "stage2", "stage3", "stage4", "pool", "fc"]
    assert sum(r.params for r in folded) == checked.total_params
    assert folded[2].shape == (512, 28, 28)
    done = run_cli("summary", str(spec_path("densenet121")), "--depth", "1")
    assert done.returncode == 0, done.stderr
    assert "dense3 " in done.stdout and "trans3 " in done.stdout and "block0" not in done.stdout


BROKEN = """name: broken
imports: [blocks/resnet.yaml]
inputs: {image: [3, 64, 64]}
nodes:
  - {id: stem, block: stem}
  - {id: stage1, block: bottleneck, repeat: 2, args: {width: 16}, first: {project: conv_bn}}
  - {id: stage2, block: bottleneck, repeat: 2, args: {width: 32}, first: {stride: 2}}
"""


def _lines_with(path, *parts: str) -> list[int]:
    return [i for i, line in enumerate(path.read_text().splitlines(), 1)
            if all(p in line for p in parts)]


def _broken(tmp_path, text: str):
    """A spec in a tmp dir importing a copy of the ResNet block library; the error raised."""
    (tmp_path / "blocks").mkdir()
    library = tmp_path / "blocks" / "resnet.yaml"
    library.write_text((SPECS / "blocks" / "resnet.yaml").read_text())
    (tmp_path / "broken.yaml").write_text(text)
    with pytest.raises(GraphCnnError) as info:
        graphcnn.check_spec(tmp_path / "broken.yaml")
    return library, str(info.value)


def test_shape_error_inside_a_block_names_instance_and_both_lines(tmp_path):
    """stage2's first block halves the size but its skip has no projection: the add fails."""
    library, text = _broken(tmp_path, BROKEN)
    assert "stage2.block0.add" in text and "residual inputs disagree" in text, text
    adds = _lines_with(library, "{id: add, op: add")
    assert any(f"resnet.yaml:{n}:" in text for n in adds), text  # the add in the block
    assert "broken.yaml:7:" in text, text  # the stage2 line that instantiated it


def test_field_error_inside_a_block_names_instance_and_both_lines(tmp_path):
    """A bad argument surfaces in a block node's field, reported at both places."""
    library, text = _broken(tmp_path, BROKEN.replace("{stride: 2}", "{stride: two}"))
    assert "stage2.block0.conv2" in text, text
    conv2 = _lines_with(library, "id: conv2", "stride: stride")
    assert any(f"resnet.yaml:{n}:" in text for n in conv2), text
    assert "broken.yaml:7:" in text, text


def cli_summary_text(name: str) -> str:
    from graphcnn.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["summary", str(spec_path(name))]) == 0
    return buffer.getvalue()


def _tool():
    return load_tool("update_goldens")


ALL_SPECS = sorted(p.stem for p in SPECS.glob("*.yaml"))


@pytest.mark.parametrize("name", ALL_SPECS)
def test_summary_matches_golden(name):
    golden = ROOT / "tests" / "golden" / f"{name}.txt"
    assert golden.exists(), f"run: python tools/update_goldens.py {name}"
    lines = [line.rstrip() for line in cli_summary_text(name).splitlines()]
    assert lines == [line.rstrip() for line in golden.read_text().splitlines()], \
        f"summary of {name} changed; if intended: python tools/update_goldens.py {name}"


def test_goldens_cover_every_shipped_spec():
    assert sorted(_tool().ARCHITECTURES) == ALL_SPECS


def test_block_args_may_be_arithmetic_and_ids_may_share_param_names():
    """densenet121 passes `(64 + 6 * 32) // 2` from the top level; c3d_small's block has a node
    `pool` and a parameter `pool` (the id stays, the kernel takes the value)."""
    dense = {n.id: n for n in graphcnn.check_spec(spec_path("densenet121")).nodes}
    assert dense["trans1.conv"].shape == (128, 56, 56)
    c3d = {n.id: n for n in graphcnn.check_spec(spec_path("c3d_small")).nodes}
    assert c3d["conv1.pool"].shape == (16, 16, 32, 32) and c3d["conv2.pool"].shape == (32, 8, 16, 16)

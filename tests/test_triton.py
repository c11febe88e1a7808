"""`graphcnn export-triton`: every config written is parsed with Triton's own ModelConfig schema
(model_config_pb2 of the tritonclient package, the test extra) and each field checked against
the model the repository holds."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import sys

import onnx
import pytest
from google.protobuf import text_format

from conftest import SPECS
from graphcnn.api import load_spec
from graphcnn.cli import main
from graphcnn.deploy.preprocess import read_labels
from graphcnn.graph.sweep import Sweep
from graphcnn.shapes.sizes import admissible

# a classifier with preprocessing and labels; every admissible size works
TINY = """
name: tiny
inputs: {image: [3, 32, 32]}
nodes:
  - {id: conv, op: conv2d, channels: 8, kernel: 3, stride: 2, padding: 1}
  - {op: relu}
  - {id: pool, op: global_avgpool}
  - {id: fc, op: linear, features: 3}
outputs: [fc]
preprocess: {resize: 36, crop: 32, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
labels: [cat, dog, 'a "quoted" bird']
"""

# admits the even sizes from 4 up (the pooled branch is upsampled and added back); no labels
EVEN = """
name: even
inputs: {image: [3, 32, 32]}
nodes:
  - {id: stem, op: conv2d, channels: 4, kernel: 3}
  - {id: down, op: maxpool2d, kernel: 2}
  - {id: up, op: upsample, scale: 2}
  - {id: join, op: add, inputs: [up, stem]}
  - {id: pool, op: global_avgpool}
  - {id: fc, op: linear, features: 2}
outputs: [fc]
"""

TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.UINT8: "TYPE_UINT8"}


@pytest.fixture(scope="module")
def schema():
    """tritonclient's model_config_pb2, read from its file: the package's grpc/__init__ wants
    grpcio, which the schema itself does not need."""
    try:
        files = importlib.metadata.files("tritonclient") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tritonclient (the test extra) is not installed")
    if "triton_model_config_pb2" not in sys.modules:
        path = next(f for f in files if str(f) == "tritonclient/grpc/model_config_pb2.py")
        spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path.locate())
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["triton_model_config_pb2"] = module  # its types live in one descriptor pool
    return sys.modules["triton_model_config_pb2"]


@pytest.fixture
def specs(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "even.yaml").write_text(EVEN)
    return tmp_path


def parsed(schema, folder):
    return text_format.Parse((folder / "config.pbtxt").read_text(), schema.ModelConfig())


def enum(schema, message, field, value) -> str:
    return message.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[value].name


def dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else -1
            for d in value.type.tensor_type.shape.dim]


def check_tensors(schema, config, model, batched: bool):
    """Names, types and dims of the config against the model's inputs and outputs."""
    for entries, values in ((config.input, model.graph.input), (config.output, model.graph.output)):
        assert [e.name for e in entries] == [v.name for v in values]
        for e, v in zip(entries, values):
            assert enum(schema, e, "data_type", e.data_type) == TYPES[v.type.tensor_type.elem_type]
            assert list(e.dims) == dims(v)[1 if batched else 0:]


def test_resnet50_acceptance(schema, tmp_path):
    repo = tmp_path / "repo"
    assert main(["export-triton", str(SPECS / "resnet50.yaml"), "--repo", f"{repo}/",
                 "--max-batch", "8", "--dynamic-batching"]) == 0
    folder = repo / "resnet50"
    config = parsed(schema, folder)
    model = onnx.load(str(folder / "1" / "model.onnx"))
    assert (config.name, config.platform, config.max_batch_size) == \
        ("resnet50", "onnxruntime_onnx", 8)
    check_tensors(schema, config, model, batched=True)
    assert list(config.input[0].dims) == [3, 224, 224] and list(config.output[0].dims) == [1000]
    assert config.output[0].label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text().splitlines() == read_labels(model)
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert not config.instance_group and not config.HasField("optimization")


def test_every_field(schema, specs, capsys):
    repo = specs / "repo"
    assert main(["export-triton", str(specs / "tiny.yaml"), "--repo", str(repo), "--name", "clf",
                 "--version", "3", "--max-batch", "16", "--dynamic-batching", "--preferred",
                 "8,4", "--max-queue-delay-us", "250", "--instances", "2", "--kind", "gpu",
                 "--accelerator", "tensorrt", "--trt-precision", "fp16"]) == 0
    assert "wrote" in capsys.readouterr().out
    folder = repo / "clf"
    config = parsed(schema, folder)
    model = onnx.load(str(folder / "3" / "model.onnx"))
    assert (config.name, config.platform, config.max_batch_size) == ("clf", "onnxruntime_onnx", 16)
    check_tensors(schema, config, model, batched=True)
    assert (folder / "labels.txt").read_text().splitlines() == ["cat", "dog", 'a "quoted" bird']
    assert config.output[0].label_filename == "labels.txt"
    [group] = config.instance_group
    assert (group.count, enum(schema, group, "kind", group.kind)) == (2, "KIND_GPU")
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [4, 8]
    assert batching.max_queue_delay_microseconds == 250
    [trt] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    # no free spatial axis: the profile spans the batch alone, opt at the largest preferred size
    assert [trt.parameters[f"trt_profile_{k}_shapes"] for k in ("min", "opt", "max")] == \
        ["image:1x3x32x32", "image:8x3x32x32", "image:16x3x32x32"]


def test_fold_preprocess_feeds_uint8_and_openvino(schema, specs):
    repo = specs / "repo"
    assert main(["export-triton", str(specs / "tiny.yaml"), "--repo", str(repo),
                 "--fold-preprocess", "--accelerator", "openvino", "--kind", "cpu",
                 "--max-batch", "4"]) == 0
    config = parsed(schema, repo / "tiny")
    assert enum(schema, config.input[0], "data_type", config.input[0].data_type) == "TYPE_UINT8"
    check_tensors(schema, config, onnx.load(str(repo / "tiny" / "1" / "model.onnx")), True)
    [group] = config.instance_group
    assert (group.count, enum(schema, group, "kind", group.kind)) == (1, "KIND_CPU")
    [vino] = config.optimization.execution_accelerators.cpu_execution_accelerator
    assert vino.name == "openvino" and not vino.parameters
    assert config.WhichOneof("scheduling_choice") is None


def expected_profile(spec_path, low, high, batch, opt_batch):
    """From `graphcnn sizes`' own report, axis by axis."""
    spec = load_spec(spec_path)
    ends = {}
    for axis in ("H", "W"):
        sizes = admissible(Sweep.of_spec(spec, axis), low, high).sizes
        ends[axis] = (sizes[0], 32, sizes[-1])
    return [f"image:{b}x3x{ends['H'][i]}x{ends['W'][i]}"
            for i, b in enumerate((1, opt_batch, batch))]


@pytest.mark.parametrize("through_model", [False, True])
def test_dynamic_profile_from_sizes(schema, specs, through_model):
    repo, spec = specs / "repo", specs / "even.yaml"
    source = spec
    if through_model:  # the spec the model carries gives the sizes
        source = specs / "even.onnx"
        assert main(["compile", str(spec), "--dynamic", "H,W", "-o", str(source)]) == 0
    dynamic = [] if through_model else ["--dynamic", "H,W"]
    assert main(["export-triton", str(source), "--repo", str(repo), *dynamic, "--range", "3:67",
                 "--accelerator", "tensorrt", "--max-batch", "8", "--dynamic-batching",
                 "--preferred", "2"]) == 0
    config = parsed(schema, repo / "even")
    assert list(config.input[0].dims) == [3, -1, -1] and list(config.output[0].dims) == [2]
    assert not config.output[0].label_filename and not (repo / "even" / "labels.txt").exists()
    [trt] = config.optimization.execution_accelerators.gpu_execution_accelerator
    profile = [trt.parameters[f"trt_profile_{k}_shapes"] for k in ("min", "opt", "max")]
    assert profile == expected_profile(spec, 3, 67, 8, 2)
    assert profile == ["image:1x3x4x4", "image:2x3x32x32", "image:8x3x66x66"]
    assert trt.parameters["precision_mode"] == "FP32"


def test_fixed_batch_model(schema, specs):
    model_path, repo = specs / "fixed.onnx", specs / "repo"
    assert main(["compile", str(specs / "tiny.yaml"), "--batch", "2", "-o", str(model_path)]) == 0
    assert main(["export-triton", str(model_path), "--repo", str(repo)]) == 0
    config = parsed(schema, repo / "fixed")
    assert config.max_batch_size == 0
    check_tensors(schema, config, onnx.load(str(model_path)), batched=False)
    assert list(config.input[0].dims) == [2, 3, 32, 32]


def test_existing_version_needs_force(schema, specs, capsys):
    repo, spec = specs / "repo", str(specs / "tiny.yaml")
    assert main(["export-triton", spec, "--repo", str(repo), "--seed", "1"]) == 0
    model = repo / "tiny" / "1" / "model.onnx"
    before, config = model.read_bytes(), (repo / "tiny" / "config.pbtxt").read_text()
    again = ["export-triton", spec, "--repo", str(repo), "--seed", "2", "--max-batch", "4"]
    assert main(again) == 1
    assert "never overwritten without --force" in capsys.readouterr().err
    assert model.read_bytes() == before
    assert (repo / "tiny" / "config.pbtxt").read_text() == config
    assert main([*again, "--force"]) == 0
    assert model.read_bytes() != before and parsed(schema, repo / "tiny").max_batch_size == 4
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert main(["export-triton", spec, "--repo", str(repo), "--version", "2"]) == 0
    assert sorted(p.name for p in (repo / "tiny").iterdir())[:2] == ["1", "2"]


def test_never_replaces_its_own_input(specs, capsys):
    repo, spec = specs / "repo", str(specs / "tiny.yaml")
    assert main(["export-triton", spec, "--repo", str(repo)]) == 0
    model = repo / "tiny" / "1" / "model.onnx"
    before = model.read_bytes()
    assert main(["export-triton", str(model), "--repo", str(repo), "--name", "tiny",
                 "--force"]) == 1
    assert "own inputs" in capsys.readouterr().err
    assert model.read_bytes() == before


def test_large_model_keeps_external_data(schema, specs, monkeypatch):
    """Past protobuf's 2 GiB (lowered here to a few bytes) the weights go beside model.onnx."""
    import graphcnn.lower.save as save

    monkeypatch.setattr(save, "PROTOBUF_LIMIT", 1000)
    repo = specs / "repo"
    assert main(["export-triton", str(specs / "tiny.yaml"), "--repo", str(repo)]) == 0
    version = repo / "tiny" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.onnx.data"]
    model = onnx.load(str(version / "model.onnx"))  # the data file resolved beside it
    assert len(model.graph.initializer) == 4
    check_tensors(schema, parsed(schema, repo / "tiny"), model, batched=True)


@pytest.mark.parametrize("flags, message", [
    (["--preferred", "4"], "need --dynamic-batching"),
    (["--max-queue-delay-us", "10"], "need --dynamic-batching"),
    (["--dynamic-batching", "--max-batch", "4", "--preferred", "8"], "within 1..4"),
    (["--dynamic-batching", "--max-batch", "0"], "at least 1"),
    (["--max-batch", "0"], "--max-batch 0 for a model with a free batch axis"),
    (["--accelerator", "tensorrt", "--kind", "cpu"], "runs on GPU instances"),
    (["--accelerator", "openvino", "--kind", "gpu"], "runs on CPU instances"),
    (["--trt-precision", "fp16"], "needs --accelerator tensorrt"),
    (["--instances", "0"], "at least 1"),
    (["--version", "0"], "positive whole number"),
    (["--name", "a/b"], "no '/'"),
    (["--preferred", "x", "--dynamic-batching"], "whole numbers"),
    (["--dynamic", "H,W", "--accelerator", "tensorrt", "--range", "40:60"], "spec's own size"),
    (["--dynamic", "Q"], "unknown spatial axis"),
])
def test_bad_flags_exit_1(specs, capsys, flags, message):
    repo = specs / "repo"
    assert main(["export-triton", str(specs / "tiny.yaml"), "--repo", str(repo), *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert not repo.exists()  # nothing is left behind


def test_model_refuses_compile_options(specs, capsys):
    model_path = specs / "m.onnx"
    assert main(["compile", str(specs / "tiny.yaml"), "-o", str(model_path)]) == 0
    assert main(["export-triton", str(model_path), "--repo", str(specs / "r"), "--fold-bn"]) == 1
    assert "--fold-bn compiles a spec" in capsys.readouterr().err

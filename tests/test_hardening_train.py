"""Hardening, round two (issue 20): training and resume, two layer bugs PyTorch's module tests
found, and command-line values. Each case failed (a traceback, a refusal PyTorch does not make,
an unbounded allocation) before its fix; docs/reliability.md lists them."""
from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from graphcnn.api import check_spec
from graphcnn.errors import GraphCnnError
from graphcnn.lower.inference import lower
from graphcnn.spec import NetworkSpec
from test_gradients import check_gradients, compile_step, perturbed_state, random_batch, run


def checked_of(inputs: dict, nodes: list):
    text = yaml.safe_dump({"name": "t", "inputs": inputs, "nodes": nodes}, sort_keys=False)
    return check_spec(NetworkSpec.from_text(text))


def torch_gradients(nodes, inputs, forward):
    """(ours, torch's) gradient of every parameter of an MSE training step; `forward(x, p)`
    is the network in torch, `p` the parameters by name."""
    torch = pytest.importorskip("torch")
    checked, step, sess = compile_step(nodes, inputs, batch=2)
    rng = np.random.default_rng(3)
    values, feeds = perturbed_state(checked, step, rng), random_batch(checked, step, rng)
    out = run(sess, step, values, feeds, lr=1.0)
    p = {n: torch.tensor(values[n], requires_grad=True) for n in step.params}
    y = forward(torch.tensor(feeds["x"]), p)
    torch.mean((y - torch.tensor(feeds["labels"])) ** 2).backward()
    return {n: (values[n] - out[f"{n}.new"], p[n].grad.numpy()) for n in step.params}


# --- a transposed conv with output_padding >= stride (valid while < dilation) ---------------

def transpose_cases():
    """Every 1D geometry with output_padding >= stride that the check admits, small sizes."""
    for s, d, k, p, extra in itertools.product([1, 2], [2, 3], [2, 3], [0, 1, 2], [1, 2]):
        if s <= extra < d and extra - p < s:
            yield {"kernel": k, "stride": s, "dilation": d, "padding": p, "output_padding": extra}


TRANSPOSE_CASES = list(transpose_cases())


def test_there_are_transpose_cases():
    assert len(TRANSPOSE_CASES) >= 12


@pytest.mark.parametrize("fields", TRANSPOSE_CASES, ids=lambda f: "-".join(map(str, f.values())))
def test_transpose_output_padding_past_stride_trains_as_torch(fields):
    """Before: the weight gradient unfolded dY into output_padding // stride more windows than
    X has rows, and onnxruntime failed at `t/grad/Reshape`."""
    F = pytest.importorskip("torch.nn.functional")
    nodes = [{"id": "pre", "op": "conv1d", "channels": 2, "kernel": 1},
             {"id": "t", "op": "conv_transpose1d", "channels": 3, **fields}]
    geometry = {k: fields[k] for k in ("stride", "padding", "output_padding", "dilation")}

    def forward(x, p):
        h = F.conv1d(x, p["pre.weight"], p["pre.bias"])
        return F.conv_transpose1d(h, p["t.weight"], p["t.bias"], **geometry)

    for name, (ours, theirs) in torch_gradients(nodes, {"x": [2, 4]}, forward).items():
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-5, err_msg=name)


def test_transpose_output_padding_past_stride_finite_differences():
    """The issue's minimal layer, and a 2D one with the case on one axis only."""
    check_gradients([{"id": "pre", "op": "conv1d", "channels": 2, "kernel": 1},
                     {"id": "t", "op": "conv_transpose1d", "channels": 1, "kernel": 2,
                      "dilation": 2, "padding": 1, "output_padding": 1}], {"x": [1, 4]})
    check_gradients([{"id": "pre", "op": "conv2d", "channels": 2, "kernel": 1},
                     {"id": "t", "op": "conv_transpose2d", "channels": 2, "kernel": [2, 3],
                      "stride": [1, 2], "dilation": [3, 1], "padding": [2, 1],
                      "output_padding": [2, 1]}], {"x": [2, 3, 4]})


# --- ceil-mode pooling over a padded input shorter than the kernel -------------------------

def test_ceil_pool_shorter_than_kernel_gives_one_position():
    """Before: "maxpool1d output would have 0 positions"; torch and onnxruntime give one."""
    checked = checked_of({"x": [1, 1]}, [{"id": "p", "op": "maxpool1d", "kernel": 2,
                                          "stride": 2, "ceil_mode": True}])
    assert checked.shape_of("p") == (1, 1)
    with pytest.raises(GraphCnnError, match="at least 2 positions.*ceil\\(\\(1 \\+ 0"):
        checked_of({"x": [1, 1]}, [{"op": "maxpool1d", "kernel": 3, "stride": 2,
                                    "ceil_mode": True}])


def pool_cases():
    """Ceil-mode pools around the edge: inputs of 1 to 3 positions, kernels longer."""
    for kind, L, k, s, p, include in itertools.product(
            ["max", "avg"], [1, 2, 3], [2, 3, 4], [2, 3], [0, 1], [False, True]):
        if 2 * p <= k and not (kind == "max" and include):
            yield kind, L, {"kernel": k, "stride": s, "padding": p, "ceil_mode": True,
                            **({"count_include_pad": include} if kind == "avg" else {})}


def torch_pool(F, kind, x, fields):
    f = dict(fields)
    args = (f.pop("kernel"), f.pop("stride"), f.pop("padding"))
    return (F.max_pool1d if kind == "max" else F.avg_pool1d)(x, *args, **f)


@pytest.mark.parametrize("kind,length,fields", list(pool_cases()))
def test_ceil_pools_admitted_and_computed_as_torch(kind, length, fields):
    """Admitted exactly when torch runs it; same values in the default and --portable
    lowering; the same input gradient."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.random.default_rng(length).standard_normal((2, 3, length)).astype(np.float32)
    try:
        want = torch_pool(F, kind, torch.tensor(x), fields).numpy()
    except RuntimeError:
        with pytest.raises(GraphCnnError, match="0 positions"):
            checked_of({"x": [3, length]}, [{"id": "p", "op": f"{kind}pool1d", **fields}])
        return
    checked = checked_of({"x": [3, length]}, [{"id": "p", "op": f"{kind}pool1d", **fields}])
    for portable in ((), ["p"]):
        model = lower(checked, portable=portable)
        got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=str(portable))
    nodes = [{"id": "pre", "op": "conv1d", "channels": 3, "kernel": 1},
             {"id": "p", "op": f"{kind}pool1d", **fields}]
    grads = torch_gradients(nodes, {"x": [3, length]}, lambda x, p: torch_pool(
        F, kind, F.conv1d(x, p["pre.weight"], p["pre.bias"]), fields))
    for name, (ours, theirs) in grads.items():
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-5, err_msg=name)


# --- command-line values ---------------------------------------------------------------------

SPEC = """name: tiny
inputs: {x: [1, 8]}
nodes:
  - {id: conv1, op: conv1d, channels: 4, kernel: 3}
  - {op: relu}
  - {op: flatten}
  - {id: fc, op: linear, features: 3}
training: {epochs: 2, batch: 4, seed: 1}
"""


@pytest.fixture
def tiny(tmp_path):
    """(spec path, data path) of a 3-class problem of 32 rows."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 1, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=x[:, 0, :3].argmax(axis=1))
    (tmp_path / "tiny.yaml").write_text(SPEC)
    return tmp_path / "tiny.yaml", tmp_path / "d.npz"


def cli(capsys, *args) -> tuple[int, str]:
    """In process: the exit code (argparse's SystemExit included) and stderr."""
    from graphcnn.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command,flag,value", [
    ("train", "--seed", -1), ("train", "--batch", 10 ** 12), ("train", "--batch", 2 ** 66),
    ("train", "--epochs", 0), ("run", "--batch", 10 ** 12), ("run", "--batch", 2 ** 66),
    ("run", "--batch", 0), ("compile", "--batch", 0),
    ("run", "--seed", -1), ("compile", "--seed", -1), ("compile", "--batch", 2 ** 66),
    ("bench", "--repeat", 0), ("bench", "--threads", 10 ** 11), ("bench", "--warmup", -1),
    ("summary", "--batch", 0), ("check", "--max-tensor", -5),
])
def test_out_of_range_values_are_usage_errors(capsys, tiny, command, flag, value):
    """Before: `compile --seed -1` and `--batch 2**66` tracebacks from numpy and onnx, `run
    --batch 10**12` asked numpy for 58 TiB, `train --batch 10**12` was killed for memory,
    `bench --repeat 0` an IndexError, `--threads 10**11` a pybind11 type error."""
    spec, data = tiny
    extra = {"train": ["--data", data, "-o", spec.with_suffix(".onnx")],
             "compile": ["-o", spec.with_suffix(".onnx")]}.get(command, [])
    code, err = cli(capsys, command, spec, *extra, flag, value)
    assert code == 2 and f"argument {flag}: expected a whole number" in err, err
    assert not spec.with_suffix(".onnx").exists()


def test_bench_batches_and_sizes_range_bounded(capsys, tiny):
    spec, _ = tiny
    code, err = cli(capsys, "bench", spec, "--batches", f"1,{10 ** 12}")
    assert code == 1 and "--batches takes whole numbers from 1 to 16,777,216" in err
    code, err = cli(capsys, "sizes", spec, "--range", "1:100000000")  # before: about a day
    assert code == 1 and "--range covers at most 10,000 sizes" in err


def test_a_spec_batch_too_large_is_refused_before_allocating(capsys, tiny):
    """`training: {batch: 10**12}` passes the flags; the step checks its largest tensor."""
    spec, data = tiny
    spec.write_text(SPEC.replace("batch: 4", "batch: 1000000000000"))
    for args in (["compile", spec, "--training", "-o", spec.with_suffix(".onnx")],
                 ["train", spec, "--data", data, "-o", spec.with_suffix(".onnx")]):
        code, err = cli(capsys, *args)
        assert code == 1 and "batch 1,000,000,000,000 is too large: conv1 would hold " \
            "24,000,000,000,000 elements" in err and "a batch of at most 89,478,485" in err, err
    assert not spec.with_suffix(".onnx").exists()


def test_library_bounds_behind_the_flags():
    from graphcnn.deploy.bench import bench
    from graphcnn.errors import RunError
    from graphcnn.runtime import random_inputs, session, session_options

    model = lower(checked_of({"x": [1, 8]}, [{"id": "fc", "op": "linear", "features": 2}]))
    with pytest.raises(RunError, match="too large; expected at most 2,147,483,647 elements"):
        random_inputs(session(model), 10 ** 12)
    with pytest.raises(RunError, match="threads must be from 1 to 1,024"):
        session_options(10 ** 11)
    with pytest.raises(RunError, match="repeat >= 1"):
        bench([model], [1], repeat=0)

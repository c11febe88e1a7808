"""Hardening, round two (issue 20): training and resume, two layer bugs PyTorch's module tests
found, and command-line values. Each case failed (a traceback, a refusal PyTorch does not make,
an unbounded allocation) before its fix; docs/reliability.md lists them."""
from __future__ import annotations

import itertools
from pathlib import Path

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


def cli_out(capsys, *args) -> tuple[int, str, str]:
    """In process: the exit code (argparse's SystemExit included), stdout and stderr."""
    from graphcnn.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli(capsys, *args) -> tuple[int, str]:
    code, _, err = cli_out(capsys, *args)
    return code, err


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
    assert code == 1 and "--batches takes positive integers up to 16,777,216" in err
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


# --- training and resume --------------------------------------------------------------------

def trained(capsys, tiny, *flags) -> "Path":
    """A finished run of the tiny spec (data from the flag: the spec names none); its
    checkpoint."""
    spec, data = tiny
    code, err = cli(capsys, "train", spec, "--data", data, "-o", spec.parent / "m.onnx", *flags)
    assert code == 0, err
    return spec.parent / "m.ckpt.npz"


def rewritten(path, tmp_path, *, meta=None, arrays=None):
    """A copy of checkpoint `path` with its metadata changed by `meta(dict)` and its arrays
    by `arrays(dict)`, as a tampering hand would."""
    import json

    with np.load(path) as data:
        stored = {k: data[k] for k in data.files}
    info = json.loads(stored.pop("meta").tobytes())
    if meta:
        meta(info)
    stored["meta"] = np.frombuffer(json.dumps(info).encode(), np.uint8)
    if arrays:
        arrays(stored)
    out = tmp_path / "tampered.ckpt.npz"
    np.savez(out, **stored)
    return out


def test_checkpoint_of_another_spec_refused_before_training(capsys, tiny, monkeypatch):
    """The same ids, another conv width. Before: the run started its progress bar, then
    failed in onnxruntime ("Got invalid dimensions for input: conv1.weight") or, with no
    epoch left, in the export."""
    import graphcnn.train.job as job

    ckpt = trained(capsys, tiny)
    spec, data = tiny
    before = ckpt.read_bytes()
    monkeypatch.setattr(job, "fit", lambda *a, **k: pytest.fail("training started"))
    code, err = cli(capsys, "train", spec, "--set", "nodes.conv1.channels=5", "-o",
                    spec.parent / "m.onnx", "--resume", ckpt, "--epochs", "4")
    assert code == 1 and "array 'carried/conv1.weight' has shape [4, 1, 3]; expected " \
        "[5, 1, 3]" in err and "only a checkpoint graphcnn train wrote for this spec" in err
    assert ckpt.read_bytes() == before


def _set(path: str, value):
    """A meta edit: the key path 'history.0.epoch' set to value."""
    def edit(info):
        *parents, last = path.split(".")
        node = info
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return edit


@pytest.mark.parametrize("meta,arrays,message", [
    (_set("epoch", "2"), None, "bad metadata field epoch: Input should be a valid integer"),
    (_set("epoch", 3), None, "history holds epochs [1, 2] for 3 finished epochs"),
    (_set("step", -1), None, "field step: Input should be greater than or equal to 0"),
    (_set("step", 10 ** 30), None, "field step: Input should be less than or equal to"),
    (_set("rng.bit_generator", "MT19937"), None, "rng: not a PCG64 state"),
    (_set("rng.state.state", "x"), None, "rng: not a PCG64 state"),
    (_set("recipe.batch", 0), None, "recipe.batch: Input should be greater than or equal to 1"),
    (_set("recipe.optimizer", "lion"), None, "recipe.optimizer: Input should be"),
    (_set("history.0.train_loss", "low"), None, "field history.0.train_loss"),
    (_set("history.1.epoch", 1), None, "history holds epochs [1, 1]"),
    (_set("extra", 1), None, "field extra: Extra inputs are not permitted"),
    (None, lambda a: a.update({"meta": np.frombuffer(b"{not json", np.uint8)}),
     "unreadable metadata (JSONDecodeError"),
    (None, lambda a: a.update({"carried/fc.bias": a["carried/fc.bias"].astype(np.float64)}),
     "array 'carried/fc.bias' is float64; expected float32"),
    (None, lambda a: a.pop("carried/fc.bias"), "has no array 'carried/fc.bias'"),
    (None, lambda a: a.update({"carried/fc.bias.m": a["carried/fc.bias"]}),
     "holds arrays nothing reads: 'carried/fc.bias.m'"),
    (None, lambda a: a.update({"meta": np.zeros(3, np.float32)}), "'meta' is float32"),
])
def test_tampered_checkpoint_refused_by_field(capsys, tiny, tmp_path, meta, arrays, message):
    """Before: a tampered field crashed after the progress bar started (a KeyError, numpy's
    "state must be for a PCG64 RNG", a pydantic traceback), or trained on."""
    import graphcnn
    from graphcnn.errors import DataError

    bad = rewritten(trained(capsys, tiny), tmp_path, meta=meta, arrays=arrays)
    spec, _ = tiny
    with pytest.raises(DataError) as caught:
        graphcnn.training_job(spec, tmp_path / "again.onnx", resume=bad)
    assert message in str(caught.value) and f"--resume {bad}" in str(caught.value)


def test_continue_line_works_and_resume_keeps_the_stored_recipe(capsys, tiny, monkeypatch):
    """Ctrl-C in epoch 2 of a run whose data, epochs and lr came from flags and whose spec
    from --set: the printed command resumes it with none of them repeated. Before: the line
    left out --set (the checkpoint no longer fit) and --data (the spec names no data: "no
    training data"), and --resume took the spec's recipe (2 epochs, its lr) over the run's."""
    import shlex

    import graphcnn.train.loop as loop
    from graphcnn.train.checkpoint import load_checkpoint

    spec, data = tiny
    flags = ["--set", "nodes.conv1.channels=6", "--data", data, "--epochs", "3", "--lr", "0.05"]
    code, _ = cli(capsys, "train", spec, "-o", spec.parent / "straight.onnx", *flags)
    assert code == 0
    real, calls = loop.run_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "run_epoch", interrupted)
    code, line, _ = cli_out(capsys, "train", spec, "-o", spec.parent / "cut.onnx", *flags)
    assert code == 130, line
    monkeypatch.setattr(loop, "run_epoch", real)
    words = shlex.split(line.split("continue with: ", 1)[1])
    assert words[:2] == ["graphcnn", "train"] and "--data" not in words and "--lr" not in words
    code, err = cli(capsys, *words[1:])
    assert code == 0, err
    straight, resumed = (load_checkpoint(spec.parent / f"{s}.ckpt.npz",
                                         ["conv1.weight", "conv1.bias", "fc.weight", "fc.bias"])
                         for s in ("straight", "cut"))
    assert resumed.epoch == 3 and resumed.recipe["lr"] == 0.05 and resumed.step == straight.step
    for name, value in straight.values.items():
        np.testing.assert_allclose(resumed.values[name], value, rtol=1e-5, atol=1e-6)


def test_resume_flags_still_override_the_stored_recipe(capsys, tiny):
    ckpt = trained(capsys, tiny)
    spec, _ = tiny
    code, err = cli(capsys, "train", spec, "-o", spec.parent / "m.onnx", "--resume", ckpt,
                    "--epochs", "3")
    assert code == 0, err
    import json

    history = json.loads((spec.parent / "m.metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == [1, 2, 3]


def test_several_inputs_refused_clearly(capsys, tiny):
    """Before: `ValueError: too many values to unpack` from the data loader."""
    spec, data = tiny
    spec.write_text("name: two\ninputs: {x: [1, 8], y: [1, 8]}\nnodes:\n"
                    "  - {id: s, op: add, inputs: [x, y]}\n  - {op: flatten}\n"
                    "  - {id: fc, op: linear, features: 3}\n")
    code, err = cli(capsys, "train", spec, "--data", data, "-o", spec.with_suffix(".onnx"))
    assert code == 1 and "graphcnn train needs a spec with one input; this one has x, y" in err


# --- failures inside onnxruntime ------------------------------------------------------------

def broken_model(path):
    """The tiny network with fc's weight one column short and a symbolic input length, so
    onnxruntime loads it and fails only when it runs (at 'fc' for L = 8, at 'conv1' for the
    random inputs of bench, which give L the batch size)."""
    import onnx
    from onnx import numpy_helper

    model = lower(check_spec(NetworkSpec.from_text(SPEC)), spec_text=SPEC)
    del model.graph.value_info[:]
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "L"
    for i, t in enumerate(model.graph.initializer):
        if t.name == "fc.weight":
            short = numpy_helper.to_array(t)[:, :23].copy()
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(short, "fc.weight"))
    onnx.save(model, path)
    return path


def test_run_and_bench_failures_name_the_onnx_and_spec_node(capsys, tmp_path):
    """Before: onnxruntime's InvalidArgument traceback, and its own log line."""
    model = broken_model(tmp_path / "broken.onnx")
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8), np.float32))
    code, err = cli(capsys, "run", model, "--input", tmp_path / "x.npy")
    assert code == 1 and err.startswith(f"error: {model}: fc: onnxruntime failed at ONNX node 'fc'; "
                                        "received GEMM: Dimension mismatch"), err
    assert "[E:onnxruntime" not in err
    code, err = cli(capsys, "bench", model, "--batches", "1", "--repeat", "1")
    assert code == 1 and "conv1: onnxruntime failed at ONNX node 'conv1'" in err, err


def test_training_step_failures_name_the_onnx_and_spec_node(capsys, tiny, monkeypatch):
    """A step onnxruntime refuses (one backward Reshape's shape made wrong), through `graphcnn
    train`; and a step run fed a tensor of the wrong shape (the StepRunner itself)."""
    from onnx import numpy_helper

    import graphcnn.train.loop as loop
    from graphcnn.errors import RunError
    from graphcnn.train.data import Batch
    from graphcnn.train.step import initial_state

    real = loop.build_step

    def broken(checked, recipe, opset=None):
        step = real(checked, recipe, opset)
        node = next(n for n in step.model.graph.node if n.name.startswith("flatten_1/grad/"))
        step.model.graph.initializer.append(numpy_helper.from_array(np.array([5, -1]), "bad"))
        node.input[1] = "bad"
        return step

    monkeypatch.setattr(loop, "build_step", broken)
    spec, data = tiny
    code, err = cli(capsys, "train", spec, "--data", data, "-o", spec.with_suffix(".onnx"))
    assert code == 1 and "flatten_1: onnxruntime cannot load the model at ONNX node " \
        "'flatten_1/grad/Reshape" in err and "Traceback" not in err, err
    checked = check_spec(NetworkSpec.from_text(SPEC))
    from graphcnn.train.recipe import Recipe

    step = real(checked, Recipe(batch=4))
    values = {**initial_state(checked, step, 0), "conv1.weight": np.zeros((5, 1, 3), np.float32)}
    batch = Batch(np.zeros((4, 1, 8), np.float32), np.zeros(4, np.int64), np.ones(4, np.float32), 4)
    with pytest.raises(RunError, match="conv1: onnxruntime failed on input 'conv1.weight'; "
                                       "received Got invalid dimensions"):
        loop.StepRunner(step, values).run(batch, 0.1, 1)


def test_onnx_names_map_to_spec_nodes():
    from graphcnn.runtime.failures import node_owner, parameter_owner

    assert [node_owner(n) for n in ["up/grad/Reshape4", "fc", "s1.b0.conv/Conv1",
                                    "conv1.weight/update/Mul3", "clip_norm/update/Sqrt2",
                                    "loss/Log1", "output/loss", "c/grad/Conv1/nchwc3/Conv"]] \
        == ["up", "fc", "s1.b0.conv", "conv1", None, None, None, "c"]
    assert [parameter_owner(n) for n in ["conv1.weight", "s.b.conv.weight.momentum",
                                         "bn.running_var", "x", "labels"]] \
        == ["conv1", "s.b.conv", "bn", None, None]

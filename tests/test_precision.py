"""Mixed-precision training (`graphcnn train --precision fp16|bf16`): which ops of the step run
in half, fp32 at the edges, loss scaling's skipped steps and growth, the MNIST-1D figure's
accuracy in fp16, the command line and resume; and the kernel probe that both this and
`graphcnn compile --precision` use (runtime/half_kernels.py).

onnxruntime's CPU provider computes no fp16 conv or matmul itself on an AVX2 machine (it
wraps them in casts to fp32: half_kernels.kernel_kind), so by default an fp16 step here
computes in fp32. The `emulated` fixture lets the rewrite take those ops anyway, so the half
graph, its casts and its overflows are checked on the CPU too."""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from graphcnn.api import check_spec, train_spec
from graphcnn.cli import main
from graphcnn.errors import CompileError
from graphcnn.runtime import half_kernels
from graphcnn.spec import NetworkSpec
from graphcnn.train import precision
from graphcnn.train.loop import build_step
from graphcnn.train.recipe import Recipe
from graphcnn.train.step import build_training_step, initial_state

from conftest import SPECS

# conv, batchnorm, dropout (a mask cast from booleans), pooling and a linear head
NET = """\
name: amp
inputs: {x: [2, 16]}
nodes:
  - {id: conv, op: conv1d, channels: 6, kernel: 3, padding: 1}
  - {id: bn, op: batchnorm1d}
  - {op: relu}
  - {id: drop, op: dropout, rate: 0.25}
  - {op: maxpool1d, kernel: 2}
  - {op: flatten}
  - {id: logits, op: linear, features: 4}
training: {optimizer: adam, lr: 0.01, epochs: 1, batch: 16, seed: 0}
"""
HALF = TensorProto.FLOAT16


@pytest.fixture(scope="module")
def checked():
    return check_spec(NetworkSpec.from_text(NET, "amp.yaml"))


@pytest.fixture()
def emulated(monkeypatch):
    """Half ops wherever onnxruntime runs them at all, its own fp32 emulation included."""
    monkeypatch.setattr(half_kernels, "has_kernel",
                        lambda *probe: half_kernels.kernel_kind(*probe) != "none")


def value_types(model) -> dict[str, int]:
    typed = onnx.shape_inference.infer_shapes(model)
    return {v.name: v.type.tensor_type.elem_type
            for v in [*typed.graph.input, *typed.graph.value_info, *typed.graph.output]} | \
        {t.name: t.data_type for t in model.graph.initializer}


def batch(rng, n=16):
    return {"x": rng.standard_normal((n, 2, 16)).astype(np.float32),
            "labels": rng.integers(0, 4, n), "mask": np.ones(n, np.float32)}


def run_step(step, values, feeds, lr=0.0, t=1):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(step.model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    out = sess.run(None, {**feeds, "lr": np.array(lr, np.float32), "step": np.array(t, np.int64),
                          **{n: values[n] for n in step.carried}})
    return dict(zip([o.name for o in sess.get_outputs()], out))


def test_fp16_step_runs_heavy_ops_in_half_and_keeps_fp32_edges(checked, emulated):
    step = build_training_step(checked, batch=16, optimizer="adam", precision="fp16")
    types = value_types(step.model)
    nodes = step.model.graph.node
    heavy = [n for n in nodes if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")]
    assert heavy and all(types[n.input[0]] == HALF for n in heavy), \
        [(n.name, types[n.input[0]]) for n in heavy]
    # every carried tensor (parameters, Adam's moments, running statistics, the loss scale)
    # and every metric goes in and out as it did in fp32
    for info in [*step.model.graph.input, *step.model.graph.output]:
        assert info.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.INT64), info.name
    assert {"bn.running_mean", "conv.weight.m", "amp.scale", "amp.good"} <= set(step.state)
    # batchnorm's statistics, the loss and the update in fp32
    for n in nodes:
        if n.name.startswith(("bn/", "bn.", "loss/", "amp/")) or "/update/" in n.name \
                or n.op_type in ("ReduceSum", "LogSoftmax"):
            assert all(types.get(i) != HALF for i in n.input if i), n.name
    # no Cast reads a Cast, and the rewrite casts each value once per type
    casts = [n for n in nodes if n.op_type == "Cast"]
    made_by_cast = {n.output[0] for n in casts}
    assert not [n.name for n in casts if n.input[0] in made_by_cast]
    added = [n for n in casts if n.name.endswith(("/half", "/fp32"))]
    assert added and len({(n.input[0], n.attribute[0].i) for n in added}) == len(added)
    assert step.report.share == 1.0 and "100% of the step's conv/matmul" in step.report.line()


def test_fp16_step_is_close_to_the_fp32_step(checked, emulated):
    rng = np.random.default_rng(0)
    feeds = batch(rng)
    outs = {}
    for precision in ("fp32", "fp16"):
        step = build_training_step(checked, batch=16, optimizer="sgd", precision=precision)
        values = initial_state(checked, step, 0)
        outs[precision] = (run_step(step, values, feeds, lr=1.0), values, step)
    (a, values, step), (b, _, _) = outs["fp32"], outs["fp16"]
    assert int(b["skipped"]) == 0
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-2)
    for name in step.params:  # plain SGD with lr 1: the parameter moved by its gradient
        want, got = values[name] - a[f"{name}.new"], values[name] - b[f"{name}.new"]
        scale = max(float(np.abs(want).max()), 1e-3)
        assert float(np.abs(got - want).max()) / scale < 0.05, name
    for name in ("bn.running_mean", "bn.running_var"):
        np.testing.assert_allclose(b[f"{name}.new"], a[f"{name}.new"], rtol=1e-2, atol=1e-3)


def test_overflow_skips_the_step_and_halves_the_scale(checked, emulated):
    step = build_training_step(checked, batch=16, optimizer="adam", precision="fp16")
    values = initial_state(checked, step, 0)
    values["amp.scale"] = np.array([2.0 ** 120], np.float32)  # scaled gradients overflow fp16
    values["amp.good"] = np.array([7.0], np.float32)
    out = run_step(step, values, batch(np.random.default_rng(1)), lr=0.1)
    assert int(out["skipped"]) == 1 and np.isfinite(out["loss"])
    for name in [*step.params, *(s for s in step.state if s.endswith((".m", ".v")))]:
        np.testing.assert_array_equal(out[f"{name}.new"], values[name], err_msg=name)
    assert float(out["amp.scale.new"][0]) == 2.0 ** 119 and float(out["amp.good.new"][0]) == 0
    # as under torch's scaler, the forward pass still moved the running statistics
    assert not np.array_equal(out["bn.running_mean.new"], values["bn.running_mean"])


def test_the_scale_doubles_after_the_window_of_good_steps(checked):
    step = build_step(checked, Recipe(batch=16, optimizer="adam", precision="fp16",
                                      loss_scale_window=3))
    values, rng = initial_state(checked, step, 0), np.random.default_rng(2)
    assert float(values["amp.scale"][0]) == 2.0 ** 16
    seen = []
    for t in (1, 2, 3, 4):
        out = run_step(step, values, batch(rng), lr=0.01, t=t)
        assert int(out["skipped"]) == 0
        values = {n: out[f"{n}.new"] for n in step.carried}
        seen.append((float(values["amp.scale"][0]), float(values["amp.good"][0])))
    assert seen == [(2.0 ** 16, 1), (2.0 ** 16, 2), (2.0 ** 17, 0), (2.0 ** 17, 1)]


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_the_report_says_how_much_ran_in_half(checked, name):
    """Without the fixture: only what the CPU provider computes in half itself is rewritten (on
    an AVX2 machine nothing for either type: the step stays fp32, with no cast, and says so)."""
    step = build_training_step(checked, batch=16, optimizer="adam", precision=name)
    report, line = step.report, step.report.line()
    assert line.startswith(f"precision {name} on the cpu provider: ") and f"ran in {name}" in line
    half = precision.HALF[name]
    halves = sum(v == half for v in value_types(step.model).values())
    assert (report.half_ops == 0) == (halves == 0)
    if report.half_macs == 0:
        assert "the step runs in fp32" in line
    conv = next(n for n in step.model.graph.node if n.op_type == "Conv")
    assert (value_types(step.model)[conv.input[0]] == half) == (report.half_macs > 0)
    assert ("skipped" in step.outputs) == ("amp.scale" in step.state) == (name == "fp16")
    out = run_step(step, initial_state(checked, step, 0), batch(np.random.default_rng(3)), lr=0.01)
    assert np.isfinite(out["loss"])


def test_emulated_fp16_is_not_counted_as_fp16():
    """The CPU provider's fp16 Conv on an AVX2 machine is casts around its fp32 Conv."""
    conv = ("Conv", (), ((HALF, 3), (HALF, 3), (HALF, 1)), 1)
    kind = half_kernels.kernel_kind(conv, HALF, "CPUExecutionProvider", 18)
    assert kind in ("native", "emulated")
    assert half_kernels.has_kernel(conv, HALF, "CPUExecutionProvider", 18) == (kind == "native")
    bf16 = ("Conv", (), ((TensorProto.BFLOAT16, 3),) * 2, 1)
    assert half_kernels.kernel_kind(bf16, TensorProto.BFLOAT16, "CPUExecutionProvider", 18) != \
        "emulated"  # refused or computed: onnxruntime never casts bf16 around a kernel


@pytest.mark.parametrize("half", [HALF, TensorProto.BFLOAT16], ids=["fp16", "bf16"])
def test_the_probe_finds_a_real_half_kernel(half):
    """The CPU provider moves half values itself (Transpose has a kernel for every type): the
    probe must say so. A probe whose model onnxruntime refuses (its outputs once had type
    UNDEFINED) answers "none" for every op, and compile --precision ran nothing in half."""
    node = onnx.helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])
    sig = half_kernels.signature(node, {"x": (TensorProto.FLOAT, (3, 5))}, half)
    assert sig == ("Transpose", (("perm", "[1, 0]"),), ((half, 2),), 1)
    assert half_kernels.kernel_kind(sig, half, "CPUExecutionProvider", 21) == "native"
    assert half_kernels.has_kernel(sig, half, "CPUExecutionProvider", 21)
    output = half_kernels.probe_model(sig, 21).graph.output[0]
    assert not output.type.HasField("tensor_type")  # left to onnxruntime to infer


def test_the_probe_refuses_what_onnxruntime_refuses():
    """An attribute the probe cannot rebuild, an untyped input, an unknown op: no kernel."""
    tensor = onnx.helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(
        np.zeros(2, np.float32)))
    untyped = onnx.helper.make_node("Relu", ["nowhere"], ["y"])
    for node in (tensor, untyped, onnx.helper.make_node("NoSuchOp", ["x"], ["y"])):
        sig = half_kernels.signature(node, {"x": (TensorProto.FLOAT, (2,))}, HALF)
        assert half_kernels.kernel_kind(sig, HALF, "CPUExecutionProvider", 21) == "none", node


def test_a_half_read_of_a_cast_mask_casts_its_source_and_drops_the_old_cast():
    """A mask cast from booleans, read by a half op: one Cast bool -> half, no Cast -> Cast
    chain, and the fp32 Cast nothing reads any more is gone."""
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Cast", ["b"], ["m"], name="drop/Cast", to=TensorProto.FLOAT),
         h.make_node("Mul", ["x", "m"], ["y"], name="drop/Mul"),
         h.make_node("Identity", ["y"], ["out"], name="output/y")], "g",
        [h.make_tensor_value_info("b", TensorProto.BOOL, [4]),
         h.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [h.make_tensor_value_info("out", TensorProto.FLOAT, [4])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    rw = precision.Rewriter(model, HALF, half_kernels.value_types(model))
    for node, half in zip(model.graph.node, (False, True, False)):
        rw.place(node, half)
    nodes = rw.model().graph.node
    assert [(n.op_type, list(n.input)) for n in nodes] == [
        ("Cast", ["x"]), ("Cast", ["b"]), ("Mul", ["x/half", "m/half"]), ("Cast", ["y"]),
        ("Identity", ["y/fp32"])]


def test_unknown_precision_is_refused(checked):
    with pytest.raises(CompileError, match="unknown precision 'fp8'.*fp32 or bf16 or fp16"):
        build_training_step(checked, batch=4, precision="fp8")


def test_mnist1d_cnn_in_fp16_holds_the_figures_accuracy(tmp_path, emulated):
    """Figure 10.8's CNN: <= 20% test error with the fp16 step (13.9% in fp32 after the recipe's
    100 epochs; 20 epochs at a higher rate get there in a fifth of the time). The export is
    fp32."""
    result = train_spec(SPECS / "mnist1d_cnn.yaml", tmp_path / "m.onnx", epochs=20, lr=0.01,
                        precision="fp16", threads=2)
    last = result.history[-1]
    assert 1 - last["test_accuracy"] <= 0.20, last
    assert all("skipped_steps" in r for r in result.history)
    model = onnx.load(tmp_path / "m.onnx")
    assert {t.data_type for t in model.graph.initializer} == {TensorProto.FLOAT}
    meta = json.loads((tmp_path / "m.metrics.json").read_text())
    assert meta["recipe"]["precision"] == "fp16"


def write_tiny(tmp_path):
    spec = tmp_path / "amp.yaml"
    spec.write_text(NET)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 2, 16)).astype(np.float32)
    y = (x[:, 0].sum(axis=1) > 0).astype(np.int64) + 2 * (x[:, 1].sum(axis=1) > 0)
    np.savez(tmp_path / "d.npz", x=x[:64], y=y[:64], x_test=x[64:], y_test=y[64:])
    return [str(spec), "--data", str(tmp_path / "d.npz")]


def test_cli_trains_in_fp16_and_resumes(tmp_path, capsys):
    base = write_tiny(tmp_path)
    out = str(tmp_path / "t.onnx")
    assert main(["train", *base, "-o", out, "--precision", "fp16"]) == 0
    said = capsys.readouterr()
    assert "precision fp16 on the cpu provider" in said.err
    assert re.search(r"\d+ skipped\s+steps", said.err) and "test error" in said.out
    header = (tmp_path / "t.metrics.csv").read_text().splitlines()[0]
    assert header.endswith(",skipped_steps")
    # the checkpoint carries the loss scale; its recipe keeps fp16 on --resume
    assert main(["train", *base, "-o", out, "--epochs", "2", "--resume",
                 str(tmp_path / "t.ckpt.npz")]) == 0
    assert "precision fp16" in capsys.readouterr().err
    assert len((tmp_path / "t.metrics.csv").read_text().splitlines()) == 3
    assert onnx.load(out).graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_cli_refuses_a_bad_precision(tmp_path, capsys):
    base = write_tiny(tmp_path)
    assert main(["train", *base, "-o", str(tmp_path / "t.onnx"), "--precision", "fp8"]) == 1
    err = capsys.readouterr().err
    assert "--precision" in err and "'fp32', 'bf16' or 'fp16'" in err and "Traceback" not in err


def test_resume_switches_into_and_out_of_fp16(tmp_path, capsys):
    """A checkpoint of an fp32 run resumes in fp16 with a fresh loss scale, and one of an fp16
    run in fp32 without it: the parameters carry over, the checkpoints written then hold the
    scale exactly when their run scales the loss."""
    from graphcnn.train import loss_scale

    base = write_tiny(tmp_path)
    out, ckpt = str(tmp_path / "t.onnx"), tmp_path / "t.ckpt.npz"

    def carried():
        with np.load(ckpt) as held:
            return {name.split("/", 1)[1]: held[name] for name in held.files if "/" in name}

    assert main(["train", *base, "-o", out]) == 0
    fp32 = carried()
    assert not set(loss_scale.STATE) & set(fp32)
    assert main(["train", *base, "-o", out, "--epochs", "2", "--precision", "fp16",
                 "--resume", str(ckpt)]) == 0
    assert "precision fp16" in capsys.readouterr().err
    fp16 = carried()
    assert set(fp16) == set(fp32) | set(loss_scale.STATE)
    assert float(fp16[loss_scale.SCALE][0]) <= loss_scale.INITIAL[loss_scale.SCALE]
    assert not np.array_equal(fp16["conv.weight"], fp32["conv.weight"])  # it trained on
    assert main(["train", *base, "-o", out, "--epochs", "3", "--precision", "fp32",
                 "--resume", str(ckpt)]) == 0
    assert set(carried()) == set(fp32)
    assert len((tmp_path / "t.metrics.csv").read_text().splitlines()) == 4


def test_resume_still_refuses_a_checkpoint_of_another_network(tmp_path, capsys):
    base = write_tiny(tmp_path)
    out = str(tmp_path / "t.onnx")
    assert main(["train", *base, "-o", out]) == 0
    other = tmp_path / "other.yaml"
    other.write_text(NET.replace("channels: 6", "channels: 5"))
    assert main(["train", str(other), *base[1:], "-o", str(tmp_path / "o.onnx"), "--precision",
                 "fp16", "--resume", str(tmp_path / "t.ckpt.npz")]) == 1
    err = capsys.readouterr().err
    assert "conv.weight" in err and "Traceback" not in err


def test_an_fp32_checkpoint_without_the_precision_key_resumes(tmp_path):
    """Checkpoints written before `precision` existed hold recipes without it: fp32."""
    from graphcnn.train.checkpoint import META, load_checkpoint, save_checkpoint

    base = write_tiny(tmp_path)
    out = str(tmp_path / "t.onnx")
    assert main(["train", *base, "-o", out]) == 0
    path = tmp_path / "t.ckpt.npz"
    ckpt = load_checkpoint(path, [n.split("/", 1)[1] for n in np.load(path).files if n != META])
    for key in ("precision", "loss_scale_window"):
        del ckpt.recipe[key]
    save_checkpoint(path, ckpt)
    assert main(["train", *base, "-o", out, "--epochs", "2", "--resume", str(path)]) == 0


def test_compile_training_writes_an_fp16_step(tmp_path, capsys, emulated):
    spec = tmp_path / "amp.yaml"
    spec.write_text(NET)
    assert main(["compile", str(spec), "--training", "--precision", "fp16",
                 "-o", str(tmp_path / "s.onnx")]) == 0
    assert "precision fp16" in capsys.readouterr().out
    model = onnx.load(tmp_path / "s.onnx")
    assert "skipped" in {o.name for o in model.graph.output}
    assert any(t == HALF for t in value_types(model).values())


@pytest.fixture()
def device_with_half_convs(monkeypatch):
    """A stand-in CUDA provider whose every Conv computes in fp16 (this machine has none): only
    `compile --provider` can send the rewrite there."""
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = half_kernels.kernel_kind

    def kind(sig, half, provider, opset):
        if provider == "CUDAExecutionProvider":
            return "native" if sig[0] == "Conv" else "none"
        return real(sig, half, provider, opset)
    monkeypatch.setattr(half_kernels, "kernel_kind", kind)


@pytest.mark.parametrize("training", [False, True])
def test_compile_provider_chooses_whose_half_kernels_count(tmp_path, capsys, training,
                                                          device_with_half_convs):
    """`compile --precision fp16` places compute by the provider's kernels: by default the CPU's
    (none here), with `--provider cuda` that provider's (the stand-in's fp16 Conv)."""
    spec = tmp_path / "amp.yaml"
    spec.write_text(NET)
    extra = ["--training"] if training else []
    conv_types = {}
    for provider in ("cpu", "cuda"):
        out = tmp_path / f"{provider}.onnx"
        assert main(["compile", str(spec), *extra, "--precision", "fp16", "--provider", provider,
                     "-o", str(out)]) == 0
        assert f"precision fp16 on the {provider} provider" in capsys.readouterr().out
        model = onnx.load(out)
        conv = next(n for n in model.graph.node if n.op_type == "Conv")
        conv_types[provider] = value_types(model)[conv.input[0]]
    assert conv_types == {"cpu": TensorProto.FLOAT, "cuda": HALF}


def test_compile_refuses_an_absent_provider_before_writing(tmp_path, capsys):
    spec = tmp_path / "amp.yaml"
    spec.write_text(NET)
    out = tmp_path / "m.onnx"
    assert main(["compile", str(spec), "--precision", "fp16", "--provider", "nosuch",
                 "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: execution provider 'nosuch' is not available")
    assert "Traceback" not in err and not out.exists()


def test_compile_says_an_fp32_model_is_not_tied_to_the_provider(tmp_path, capsys,
                                                                device_with_half_convs):
    spec = tmp_path / "amp.yaml"
    spec.write_text(NET)
    assert main(["compile", str(spec), "--provider", "cuda", "-o", str(tmp_path / "m.onnx")]) == 0
    assert "this fp32 model runs the same on any" in capsys.readouterr().out
    assert main(["compile", str(spec), "-o", str(tmp_path / "m.onnx")]) == 0
    assert "runs the same on any" not in capsys.readouterr().out


class SkipFlag:
    """A runner's `skipped` output (an OrtValue's numpy())."""

    def __init__(self):
        self.value = 0

    def numpy(self):
        return np.array(self.value, np.int64)


class ScriptedRunner:
    """Stands in for StepRunner: reports the scripted overflows and records the `step` fed."""

    def __init__(self, overflows):
        self.overflows, self.fed, self.metrics = list(overflows), [], {"skipped": SkipFlag()}

    def run(self, batch, lr, step):
        self.fed.append(step)
        self.metrics["skipped"].value = self.overflows.pop(0)
        return (float("inf") if self.metrics["skipped"].value else 1.0), 1.0, 1.0


def test_skipped_fp16_steps_do_not_advance_the_optimizer_step():
    """As GradScaler skips optimizer.step(): Adam's bias correction counts applied steps only,
    across epochs too (an earlier epoch's skips come from its record); the schedule's step
    counts every step."""
    from graphcnn.train import loop
    from graphcnn.train.data import Dataset

    data = Dataset(np.zeros((10, 3), np.float32), np.zeros(10, np.int64))
    runner, recipe = ScriptedRunner([1, 1, 0, 1, 0]), Recipe(batch=2, optimizer="adam")
    done = loop.run_epoch(runner, data, recipe, np.random.default_rng(0), 1, 0, loop.Progress(),
                          None)
    assert runner.fed == [1, 1, 1, 2, 2] and (done.step_no, done.skipped) == (5, 3)
    later = ScriptedRunner([0, 0, 0, 0, 0])
    loop.run_epoch(later, data, recipe, np.random.default_rng(0), 2, done.step_no,
                   loop.Progress(), None,
                   skipped_before=loop.skipped_steps([{"skipped_steps": done.skipped}]))
    assert later.fed == [3, 4, 5, 6, 7]

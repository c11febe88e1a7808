"""graphcnn on onnxruntime's CUDA execution provider, checked against its CPU provider.

    python tools/check_cuda.py [--specs a,b,...] [--steps N]
    python tools/check_cuda.py --precision

Needs onnxruntime-gpu and an NVIDIA GPU; prints Markdown for docs/portability.md.
1. Training steps: for small versions of every network family (the ones tests/test_train_step.py
   trains) and the MNIST-1D CNN, N steps of SGD with momentum from the same state on the same
   batch, on CPU and on CUDA (TF32 off): the largest difference in loss and in the parameters
   after the last step, and which nodes onnxruntime placed on the GPU (read from its profile)
   and which fell back to the CPU. (SGD, not Adam: Adam scales a gradient that is zero up to
   roundoff, such as a conv bias before batchnorm, to a full step of either sign.)
2. Inference: every shipped spec compiled once and run on both providers at batch 2: the largest
   output difference relative to the output's largest magnitude, with the CUDA provider's
   default TF32 products and without them.
3. --precision (instead of 1 and 2): one Adam step of the MNIST-1D CNN on CUDA in fp32, fp16 and
   bf16 (`graphcnn train --precision`) from the same state on the same batch: the loss, its
   difference from fp32's, and the share of the step's multiply-adds that ran in half.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from bench_train import random_batch  # a sibling script: tools/ is the script's own folder

ROOT = Path(__file__).resolve().parent.parent
CUDA_EXACT = ("CUDAExecutionProvider", {"use_tf32": "0"})
sys.path.insert(0, str(ROOT / "tests"))


def placement(step, values, feeds) -> collections.Counter:
    """(op type, provider) -> node count, from one profiled run on CUDA."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "p")
    sess = ort.InferenceSession(step.model.SerializeToString(), options,
                                providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    sess.run(None, {**feeds, **values})
    events = json.loads(Path(sess.end_profiling()).read_text())
    seen = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") == "Node" and "provider" in args:
            seen[e["name"].rsplit("_kernel_time", 1)[0]] = (args["op_name"], args["provider"])
    return collections.Counter(seen.values())


def step_feeds(step, checked, batch, t, lr=0.01):
    x, y = random_batch(checked, batch)
    return {step.data_input: x, step.label_input: y, "mask": np.ones(batch, np.float32),
            step.lr_input: np.array(lr, np.float32), step.step_input: np.array(t, np.int64)}


def train_both(checked, batch: int, steps: int):
    from graphcnn.train.step import build_training_step, initial_state
    import onnxruntime as ort

    step = build_training_step(checked, batch=batch, optimizer="sgd", momentum=0.9)
    start = initial_state(checked, step, 0)
    results = []
    for providers in (["CPUExecutionProvider"], [CUDA_EXACT, "CPUExecutionProvider"]):
        sess = ort.InferenceSession(step.model.SerializeToString(), providers=providers)
        names = [o.name for o in sess.get_outputs()]
        values, losses = dict(start), []
        feeds = step_feeds(step, checked, batch, 1)
        for t in range(1, steps + 1):
            feeds[step.step_input] = np.array(t, np.int64)
            out = dict(zip(names, sess.run(None, {**feeds, **values})))
            values = {n: out[f"{n}.new"] for n in step.carried}
            losses.append(float(out["loss"]))
        results.append((losses, values))
    (cpu_l, cpu_v), (gpu_l, gpu_v) = results
    loss_diff = max(abs(a - b) for a, b in zip(cpu_l, gpu_l))
    # The floor keeps a conv bias before batchnorm (zero gradient up to roundoff, so it stays
    # near 1e-9 on both devices) from counting as a 100% difference.
    param_diff = max(float(np.max(np.abs(cpu_v[n] - gpu_v[n])) / max(np.max(np.abs(cpu_v[n])), 1e-3))
                     for n in step.params)
    where = placement(step, start, step_feeds(step, checked, batch, 1))
    return cpu_l, gpu_l, loss_diff, param_diff, where


def family_specs():
    from test_train_step import NETWORKS

    from graphcnn.api import check_spec
    from graphcnn.spec import NetworkSpec

    for name, nodes in sorted(NETWORKS.items()):
        text = yaml.safe_dump({"name": name, "inputs": {"x": [2, 10, 10]}, "nodes": nodes})
        yield name, check_spec(NetworkSpec.from_text(text)), 8
    yield "mnist1d_cnn", check_spec(ROOT / "specs" / "mnist1d_cnn.yaml"), 100


def training_table(steps: int) -> None:
    print(f"\n### Training steps: {steps} SGD steps (momentum 0.9), CPU against CUDA\n")
    print("| network | loss first -> last (CPU) | (CUDA) | largest loss difference | "
          "largest parameter difference (relative to the tensor's largest value, at least 1e-3) | nodes on CPU |")
    print("|---|---|---|---|---|---|")
    for name, checked, batch in family_specs():
        cpu_l, gpu_l, dl, dp, where = train_both(checked, batch, steps)
        on_cpu = sorted({op for (op, p), n in where.items() if p.startswith("CPU")})
        on_gpu = sum(n for (op, p), n in where.items() if p.startswith("CUDA"))
        print(f"| {name} | {cpu_l[0]:.4f} -> {cpu_l[-1]:.4f} | {gpu_l[0]:.4f} -> {gpu_l[-1]:.4f} "
              f"| {dl:.2e} | {dp:.2e} | {', '.join(on_cpu) or 'none'} ({on_gpu} on GPU) |",
              flush=True)


def inference_table(specs: list[str]) -> None:
    import onnxruntime as ort

    from graphcnn.api import compile_spec
    from graphcnn.runtime import random_inputs

    print("\n### Inference, batch 2, CPU against CUDA\n")
    print("| spec | output | largest difference / largest magnitude: TF32 on (default) | "
          "TF32 off |")
    print("|---|---|---|---|")
    for name in specs:
        text = compile_spec(ROOT / "specs" / f"{name}.yaml").SerializeToString()
        cpu = ort.InferenceSession(text, providers=["CPUExecutionProvider"])
        feeds = random_inputs(cpu, 2)
        want = cpu.run(None, feeds)
        got = [ort.InferenceSession(text, providers=[p, "CPUExecutionProvider"]).run(None, feeds)
               for p in ("CUDAExecutionProvider", CUDA_EXACT)]
        for i, o in enumerate(cpu.get_outputs()):
            rel = [float(np.max(np.abs(want[i] - g[i])) / (np.max(np.abs(want[i])) + 1e-12))
                   for g in got]
            print(f"| {name} | {o.name} {list(want[i].shape)} | {rel[0]:.1e} | {rel[1]:.1e} |",
                  flush=True)


def precision_table() -> None:
    import onnxruntime as ort

    from graphcnn.api import check_spec
    from graphcnn.train.step import build_training_step, initial_state

    checked = check_spec(ROOT / "specs" / "mnist1d_cnn.yaml")
    print("\n### One training step on CUDA by precision (mnist1d_cnn, Adam, batch 100)\n")
    print("| precision | loss | minus fp32's | what ran in half |\n|---|---|---|---|")
    base = None
    for precision in ("fp32", "fp16", "bf16"):
        step = build_training_step(checked, batch=100, optimizer="adam", precision=precision,
                                   provider="cuda")
        sess = ort.InferenceSession(step.model.SerializeToString(),
                                    providers=[CUDA_EXACT, "CPUExecutionProvider"])
        feeds = {**step_feeds(step, checked, 100, 1), **initial_state(checked, step, 0)}
        out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        loss = float(out["loss"])
        base = loss if base is None else base
        said = step.report.line() if step.report else "-"
        print(f"| {precision} | {loss:.5f} | {loss - base:+.1e} | {said} |", flush=True)


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shipped = sorted(p.stem for p in (ROOT / "specs").glob("*.yaml"))
    parser.add_argument("--specs", default=",".join(shipped))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", action="store_true",
                        help="only the fp16/bf16 training-step check (section 3)")
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit("no CUDAExecutionProvider: install onnxruntime-gpu on a machine with a GPU")
    if args.precision:
        return precision_table()
    training_table(args.steps)
    inference_table(args.specs.split(","))


if __name__ == "__main__":
    main()

"""graphcnn against the usual way (PyTorch + torch.onnx.export), side by side in one run.

For each spec: (1) seconds to produce the ONNX file as whole processes: `graphcnn compile`
versus a Python process that builds the same network in PyTorch (the module `graphcnn
export-torch` writes) and calls torch.onnx.export (TorchScript path, dynamo=False, and the dynamo path); (2) onnxruntime
CPU latency of the two files at batch 1 and 8, run alternately in one process; (3) PyTorch eager
on the same inputs. torch is optional: without it only graphcnn's column is measured.

    python tools/bench_vs_torch.py [--specs resnet50,vgg16] [--repeat 10] [--warmup 2] [--threads N]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = "resnet50,resnet200,vgg16,densenet121,unet"
EXPORT = """
import sys, torch
sys.path.insert(0, {tools!r})
from bench_vs_torch import torch_model
from graphcnn import check_spec
checked = check_spec({spec!r})
model = torch_model(checked)
assert sum(p.numel() for p in model.parameters()) == checked.total_params  # the same network
shape = [1, *checked.inputs[next(iter(checked.inputs))]]
torch.onnx.export(model, (torch.randn(shape),), {out!r}, dynamo={dynamo}, opset_version=18,
                  input_names=["x"], dynamic_axes=None if {dynamo} else {{"x": {{0: "N"}}}})
"""


RUNS = 3  # each export is timed this many times, median: writing hundreds of MB is noisy


def torch_model(checked):
    """The network as `graphcnn export-torch` writes it (the generated code, executed), in
    eval mode."""
    from graphcnn.deploy.torchcode import torch_code

    namespace: dict = {}
    exec(compile(torch_code(checked), f"{checked.name}.py", "exec"), namespace)
    network = [v for v in namespace.values() if isinstance(v, type)][-1]  # defined last
    return network().eval()


def timed(cmd: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"{' '.join(cmd[:3])}... failed:\n{res.stderr[-2000:]}")
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def torch_export_seconds(spec: Path, out: Path, dynamo: bool) -> float:
    code = EXPORT.format(tools=str(ROOT / "tools"), spec=str(spec), out=str(out), dynamo=dynamo)
    return timed([sys.executable, "-c", code])


def eager_ms(spec: Path, batch: int, repeat: int) -> float:
    import torch
    from graphcnn import check_spec

    checked = check_spec(spec)
    model = torch_model(checked)
    x = torch.randn([batch, *checked.inputs[next(iter(checked.inputs))]])
    with torch.no_grad():
        for _ in range(2):
            model(x)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def bench_spec(spec: Path, tmp: Path, repeat: int, threads: int | None, warmup: int) -> dict:
    from graphcnn.deploy.bench import bench

    ours = tmp / f"{spec.stem}.graphcnn.onnx"
    row = {"spec": spec.stem, "graphcnn_s": timed(["graphcnn", "compile", str(spec), "-o", str(ours)])}
    try:
        import torch  # noqa: F401
    except ImportError:
        return row
    theirs = tmp / f"{spec.stem}.torch.onnx"
    row["torchscript_s"] = torch_export_seconds(spec, theirs, dynamo=False)
    try:
        row["dynamo_s"] = torch_export_seconds(spec, tmp / f"{spec.stem}.dynamo.onnx", dynamo=True)
    except RuntimeError as exc:
        row["dynamo_s"] = f"failed: {str(exc).splitlines()[-1][:60]}"
    report = bench([ours, theirs], [1, 8], threads=threads, repeat=repeat, warmup=warmup)
    for (a, b) in zip(*report["results"]):
        batch = a.batch
        row[f"ort_ms_b{batch}"] = (a.stat(0.5) * 1e3, b.stat(0.5) * 1e3)
        row[f"eager_ms_b{batch}"] = eager_ms(spec, batch, repeat)
    return row


def markdown(rows: list[dict]) -> str:
    head = ("| spec | graphcnn compile s | torch.onnx.export s (TorchScript / dynamo) | compile speed-up |"
            " ORT ms b1 graphcnn / torch (ratio) | ORT ms b8 graphcnn / torch (ratio) | eager ms b1 / b8 |")
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        if "torchscript_s" not in r:
            lines.append(f"| {r['spec']} | {r['graphcnn_s']:.2f} | (torch not installed) | | | | |")
            continue
        dyn = r["dynamo_s"] if isinstance(r["dynamo_s"], str) else f"{r['dynamo_s']:.2f}"
        fastest = min(v for v in (r["torchscript_s"], r["dynamo_s"]) if not isinstance(v, str))
        cells = [r["spec"], f"{r['graphcnn_s']:.2f}", f"{r['torchscript_s']:.2f} / {dyn}",
                 f"{fastest / r['graphcnn_s']:.1f}x"]
        for b in (1, 8):
            ours, theirs = r[f"ort_ms_b{b}"]
            cells.append(f"{ours:.1f} / {theirs:.1f} ({theirs / ours:.2f})")
        cells.append(f"{r['eager_ms_b1']:.1f} / {r['eager_ms_b8']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    global RUNS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default=DEFAULT)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile-runs", type=int, default=RUNS,
                        help="times each export is run (median reported)")
    args = parser.parse_args()
    RUNS = args.compile_runs
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.specs.split(","):
            rows.append(bench_spec(ROOT / "specs" / f"{name}.yaml", Path(tmp), args.repeat,
                                   args.threads, args.warmup))
            print(f"done {name}", file=sys.stderr)
    print(markdown(rows))


if __name__ == "__main__":
    main()

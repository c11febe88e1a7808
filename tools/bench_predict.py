"""Images per second of `graphcnn predict --data`: the local engine and Ray with 1 and 2 workers,
side by side in one run, on a folder of JPEGs with ResNet-18 (issue 17).

    python tools/bench_predict.py [--images 2000] [--batch 32] [--runs local,ray:1,ray:2]
                                  [--rounds R] [--work DIR] [--threads-per-worker T]

The folder: N synthetic 224x224 JPEGs (quality 90; smooth colour fields with noise, so that
they decode like photographs, not like noise), written once into --work (default: a temporary
folder). The model: specs/resnet18.yaml compiled with random weights (the time does not depend
on them), its recipe resizing to 256 and cropping 224 as torchvision's weights do.

Each run is its own `graphcnn predict` process, so Ray's start is counted where it happens:
`wall` is the whole command (Python, model load, Ray's local cluster starting and stopping),
`job` the time the command reports for the rows themselves (listing to written file). Ray's
workers get --threads-per-worker onnxruntime threads each (default: the cores / workers).
Ray's job time includes starting its actors (each loads the model and builds its session).
With --rounds R every other round runs the cases in reverse order (a shared machine's load
drifts) and the table gives medians; `per worker` is the job's images/s over the workers.
The rows of every run are compared with the local run's (sorted by path): the benchmark also
checks that the engines agree.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIDE = 224


def write_jpegs(folder: Path, count: int) -> Path:
    """`count` JPEGs in 10 subfolders, fixed by the seed; kept when already there."""
    from PIL import Image

    if len(list(folder.glob("*/*.jpg"))) == count:
        return folder
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIDE, :SIDE] / SIDE
    for i in range(count):
        a, b, c = rng.uniform(-3, 3, (3, 3))
        field = np.stack([np.sin(a[k] * yy + b[k] * xx + c[k]) for k in range(3)], -1)
        pixels = 127.5 * (field + 1) + rng.normal(0, 12, (SIDE, SIDE, 3))
        sub = folder / f"part{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(sub / f"{i:05d}.jpg",
                                                                        quality=90)
    return folder


def compile_model(work: Path) -> Path:
    model = work / "resnet18.onnx"
    if not model.exists():
        run([sys.executable, "-m", "graphcnn.cli", "compile", str(ROOT / "specs" / "resnet18.yaml"),
             "-o", str(model)])
    return model


def run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{done.stderr[-3000:]}")
    return done.stdout


def timed(model: Path, data: Path, out: Path, case: str, batch: int, threads: int | None):
    """(wall seconds, job seconds) of one `graphcnn predict --data` process."""
    argv = [sys.executable, "-m", "graphcnn.cli", "predict", str(model), "--data", str(data),
            "--out", str(out), "--batch", str(batch)]
    if case.startswith("ray"):
        workers = int(case.split(":")[1])
        per = threads or max(1, (os.cpu_count() or 1) // workers)
        argv += ["--engine", "ray", "--workers", str(workers), "--threads-per-worker", str(per)]
    start = time.perf_counter()
    line = run(argv)
    wall = time.perf_counter() - start
    job = float(re.search(r"in ([\d.]+) s", line).group(1))
    return wall, job


def same_rows(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq

    return pq.read_table(a).sort_by("path").equals(pq.read_table(b).sort_by("path"))


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--runs", default="local,ray:1,ray:2", help="local and ray:WORKERS")
    p.add_argument("--rounds", type=int, default=1, help="every other round in reverse order")
    p.add_argument("--threads-per-worker", type=int, help="default: the cores / workers")
    p.add_argument("--work", type=Path, help="keep the JPEGs and the model here")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_predict."))
    work.mkdir(parents=True, exist_ok=True)
    data = write_jpegs(work / "jpegs", args.images)
    model = compile_model(work)
    cases = args.runs.split(",")
    times: dict[str, list[tuple[float, float]]] = {case: [] for case in cases}
    for r in range(args.rounds):
        for case in cases if r % 2 == 0 else cases[::-1]:
            out = work / f"{case.replace(':', '_')}.parquet"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            times[case].append(timed(model, data, out, case, args.batch, args.threads_per_worker))
            print(f"round {r + 1} {case}: wall {times[case][-1][0]:.1f} s, job "
                  f"{times[case][-1][1]:.1f} s", file=sys.stderr, flush=True)
    print(f"{args.images} JPEGs {SIDE}x{SIDE}, ResNet-18, batch {args.batch}, median of "
          f"{args.rounds} round(s); {os.cpu_count()} cores: {cpu_model()}")
    report(times, cases, args, work)
    return 0


def report(times, cases, args, work: Path) -> None:
    reference = "local" if "local" in cases else cases[0]
    base = statistics.median(job for _, job in times[reference])
    print("| run | workers x threads | wall s | job s | images/s (job) | per worker | "
          "job time / local's | rows = local's |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for case in cases:
        wall = statistics.median(w for w, _ in times[case])
        job = statistics.median(j for _, j in times[case])
        workers = int(case.split(":")[1]) if case.startswith("ray") else 1
        threads = args.threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
        shape = f"{workers} x {threads}" if case.startswith("ray") else "1 process"
        same = same_rows(work / f"{case.replace(':', '_')}.parquet",
                         work / f"{reference.replace(':', '_')}.parquet")
        rate = args.images / job
        print(f"| {case} | {shape} | {wall:.1f} | {job:.1f} | {rate:.1f} | {rate / workers:.1f} "
              f"| {job / base:.2f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    sys.exit(main())

"""onnxruntime's measured activation peak against `graphcnn summary --batch B`'s prediction.

    python tools/arena_peak.py specs/squeezenet1_1.yaml specs/unet.yaml --batch 4

prints a Markdown table (docs/benchmarks.md): the predicted peak (graphcnn/summary_memory.py:
onnxruntime's plan of the pass, from the spec) and the measured one. `--set PATH=VALUE` changes
every spec as on graphcnn's commands (`--set inputs.image=[1,188,188]`).

How it is measured: onnxruntime's Python API exposes no arena statistics, but its BFC arena logs
every time it grows ("Extending BFCArena ... (requested) num_bytes: N") at INFO severity. Each
spec runs in a child process of its own (a fresh arena; its stderr is read) on the CPU provider,
one intra-op thread, onnxruntime's default graph optimizations, memory pattern ON (onnxruntime's
default), the CPU arena registered with the extend strategy kSameAsRequested (it grows by what
is asked, not to the next power of two) and shrunk after every run. The first run
records every planned tensor (size and lifetime) and packs them into one block, which every
later run asks of the arena in one request before its first kernel: the measured peak is the
first request of the second run (that block) plus the feed, which the caller holds throughout,
and the outputs the run returns, which onnxruntime allocates apart from the block (the
prediction counts both too). Kernels' scratch buffers are not counted.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing graphcnn
MARK = "@@arena_peak run"
REQUEST = re.compile(r"Extending BFCArena for Cpu\..*\(requested\) num_bytes: (\d+)")


def child(spec: str, batch: int, overrides: list[str]) -> None:
    """Run the spec twice, marking each run on stderr, where onnxruntime logs the arena."""
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                             ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))  # 1: same as requested
    session, feeds = _session(spec, batch, overrides)
    ort.set_default_logger_severity(1)  # INFO: the arena's growth
    run = ort.RunOptions()
    run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    for k in range(2):
        print(f"{MARK} {k}", file=sys.stderr, flush=True)
        outputs = session.run(None, feeds, run)
    print(f"{MARK} end {sum(o.nbytes for o in outputs)}", file=sys.stderr, flush=True)


def _session(spec: str, batch: int, overrides: list[str]):
    import numpy as np
    import onnxruntime as ort

    from graphcnn.api import compile_spec

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_mem_pattern = True
    options.add_session_config_entry("session.use_env_allocators", "1")
    model = compile_spec(spec, batch=batch, overrides=overrides).SerializeToString()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones((batch, *i.shape[1:]), np.float32) for i in session.get_inputs()}
    return session, feeds


def measure(spec: str, batch: int, overrides: list[str] = ()) -> int:
    """Bytes: the memory-pattern block of a steady-state run plus the feed and the outputs. A
    process per spec: an arena keeps regions between sessions, where a later block could fit
    unseen."""
    sets = [f"--set={text}" for text in overrides]
    done = subprocess.run([sys.executable, __file__, "--child", spec, "--batch", str(batch),
                           *sets], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{spec}: onnxruntime run failed:\n{done.stderr[-2000:]}")
    second, end = done.stderr.split(f"{MARK} 1")[-1].split(f"{MARK} end")
    request = REQUEST.search(second)  # the block is asked for before the first kernel runs
    if request is None:
        raise RuntimeError(f"{spec}: the arena did not grow in the second run; try a larger batch")
    return int(request.group(1)) + feed_bytes(spec, batch, overrides) + int(end.split()[0])


def feed_bytes(spec: str, batch: int, overrides: list[str] = ()) -> int:
    from graphcnn.layers.base import product

    return sum(4 * batch * product(s) for s in checked(spec, overrides).inputs.values())


def checked(spec: str, overrides: list[str] = ()):
    from graphcnn.api import check_spec, load_spec

    return check_spec(load_spec(spec, list(overrides)))


def predict(spec: str, batch: int, overrides: list[str] = ()):
    """summary_memory.Memory: .peak, the predicted peak of the pass."""
    from graphcnn.summary_memory import memory

    return memory(checked(spec, overrides), batch)


def table(specs: list[str], batch: int, overrides: list[str] = ()) -> str:
    from graphcnn.summary import fmt_bytes

    lines = ["| spec | batch | predicted peak | measured | predicted / measured |",
             "|---|---:|---:|---:|---:|"]
    for spec in specs:
        mem, measured = predict(spec, batch, overrides), measure(spec, batch, overrides)
        lines.append(f"| {Path(spec).stem} | {batch} | {fmt_bytes(mem.peak)} | "
                     f"{fmt_bytes(measured)} | {mem.peak / measured:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.specs[0], args.batch, args.set)
    else:
        print(table(args.specs, args.batch, args.set))


if __name__ == "__main__":
    main()

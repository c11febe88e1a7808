"""Run shipped specs in onnx's reference evaluator (a second ONNX host, pure numpy from the
operator specs) and in onnxruntime, and compare. The test suite does this for the small specs;
this tool is the documented check for the big ones, which take minutes in the reference host.

    python tools/check_other_hosts.py [resnet18 resnet50 ...] [--seed S]

Prints, per spec: the largest absolute difference relative to the output's scale, and the
seconds each host took for one sample. Exit 1 if any spec differs by more than rtol 1e-4.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAX_TEST_MACS = 30_000_000  # tests/test_other_hosts.py covers the specs at or below this


def big_specs() -> list[str]:
    """The shipped specs the test suite leaves to this tool."""
    from graphcnn import check_spec

    return [p.stem for p in sorted((ROOT / "specs").glob("*.yaml"))
            if check_spec(p).total_macs > MAX_TEST_MACS]


def check(name: str, seed: int) -> tuple[float, float, float]:
    from onnx.reference import ReferenceEvaluator

    from graphcnn import compile_spec
    from graphcnn.runtime import session

    model = compile_spec(ROOT / "specs" / f"{name}.yaml", seed=seed, batch=1)
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim])
             .astype(np.float32) for i in model.graph.input}
    start = time.perf_counter()
    expected = session(model).run(None, feeds)
    ort_s = time.perf_counter() - start
    start = time.perf_counter()
    got = ReferenceEvaluator(model).run(None, feeds)
    ref_s = time.perf_counter() - start
    worst = max(float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(a))), 1e-12)
                for a, b in zip(expected, got))
    return worst, ort_s, ref_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", help="spec names (default: every big shipped spec)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    failed = 0
    print("| spec | largest difference / output scale | onnxruntime s | reference evaluator s |")
    print("|---|---|---|---|")
    for name in args.specs or big_specs():
        try:
            worst, ort_s, ref_s = check(name, args.seed)
        except Exception as exc:  # noqa: BLE001 - a host that cannot run the model is a finding
            failed += 1
            print(f"| {name} | the reference evaluator failed: {type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:80]} | | |", flush=True)
            continue
        failed += worst > 1e-4
        print(f"| {name} | {worst:.1e} | {ort_s:.2f} | {ref_s:.1f} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark `graphcnn check` and `graphcnn compile`: whole process and in process.

Specs: every specs/*.yaml, plus generated chains of 100, 1,000 and 10,000 conv layers (written
to a temporary folder). Whole-process runs go through /usr/bin/time -v for the peak memory
(max RSS). Usage:

    python tools/bench_compile.py                 # all specs and chains
    python tools/bench_compile.py --chains 100 1000 --no-specs --profile chain1000
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def chain_yaml(n: int) -> str:
    """n conv1d layers, 8 channels, kernel 3, same padding: weights stay small, nodes many."""
    lines = [f"name: chain{n}", "inputs: {x: [8, 32]}", "nodes:"]
    lines += [f"  - {{id: c{i}, op: conv1d, channels: 8, kernel: 3, padding: same}}" for i in range(n)]
    return "\n".join(lines) + "\n"


CLI = "import sys; from graphcnn.cli import main; sys.exit(main(sys.argv[1:]))"


def whole_process(args: list[str]) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak RSS MiB, exit code) of one `graphcnn ...` process.
    CPU time (user + system) is the steadier figure on a shared, loaded machine."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", CLI, *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rss = int(match.group(1)) / 1024 if match else float("nan")
    cpu = sum(float(t) for t in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr))
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
    return wall, cpu, rss, proc.returncode


def in_process(path: Path, out: Path, profile: bool = False) -> tuple[float, float, int]:
    """(check CPU seconds, compile CPU seconds incl. load, check and save, total params)."""
    from graphcnn.api import check_spec, load_spec
    from graphcnn.lower.inference import lower
    from graphcnn.lower.save import save_model

    start = time.process_time()
    checked = check_spec(path)
    t_check = time.process_time() - start
    prof = cProfile.Profile() if profile else None
    start = time.process_time()
    if prof:
        prof.enable()
    spec = load_spec(path)
    model = lower(check_spec(spec), spec_text=spec.to_yaml())
    save_model(model, out)
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    return t_check, time.process_time() - start, checked.total_params


def bench(name: str, path: Path, tmp: Path, profile: bool) -> dict:
    out = tmp / f"{name}.onnx"
    check_wall, check_cpu, _, rc1 = whole_process(["check", str(path)])
    comp_wall, comp_cpu, comp_rss, rc2 = whole_process(["compile", str(path), "-o", str(out)])
    size = out.stat().st_size / 2 ** 20 if out.exists() else float("nan")
    t_check, t_comp, params = in_process(path, tmp / f"{name}.inproc.onnx", profile)
    return dict(name=name, params=params, check_wall=check_wall, check_cpu=check_cpu, comp_cpu=comp_cpu,
                comp_wall=comp_wall, comp_rss=comp_rss, file_mib=size, t_check=t_check,
                t_comp=t_comp, ok=rc1 == 0 and rc2 == 0)


def table(rows: list[dict]) -> str:
    head = ("| spec | params | check process wall / CPU | compile process wall / CPU | compile max RSS "
            "| .onnx size | check in-process CPU | compile in-process CPU |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|")
    body = [f"| {r['name']} | {r['params']:,} | {r['check_wall']:.2f} / {r['check_cpu']:.2f} s | "
            f"{r['comp_wall']:.2f} / {r['comp_cpu']:.2f} s | "
            f"{r['comp_rss']:.0f} MiB | {r['file_mib']:.1f} MiB | {r['t_check']:.3f} s | "
            f"{r['t_comp']:.3f} s |" + ("" if r["ok"] else " FAILED") for r in rows]
    return "\n".join([head, *body])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chains", type=int, nargs="*", default=[100, 1000, 10000])
    ap.add_argument("--no-specs", action="store_true", help="only the generated chains")
    ap.add_argument("--only", nargs="*", help="spec names to run (default all)")
    ap.add_argument("--profile", nargs="*", default=[], help="cProfile these names in process")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cases = [] if args.no_specs else [(p.stem, p) for p in sorted((ROOT / "specs").glob("*.yaml"))]
        for n in args.chains:
            path = tmp / f"chain{n}.yaml"
            path.write_text(chain_yaml(n))
            cases.append((f"chain{n}", path))
        for name, path in cases:
            if args.only and name not in args.only:
                continue
            rows.append(bench(name, path, tmp, name in args.profile))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

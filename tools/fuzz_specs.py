"""Fuzz the spec pipeline with random specs, valid and broken.

Specs are drawn with hypothesis: random ops from the layer registry with plausible or wild
field values, random wiring (`inputs`, `skip`, ids that exist or not), small random input
shapes, and random mutations of the YAML text. Each spec must end one of these ways:

    ok            check passed; compiled; onnxruntime's output shapes equal ours
    refused       a GraphCnnError that names a location or a node
    big           check passed, too large to compile here (skipped)

Anything else is a failure: another exception (a crash), an error with no location, a
compile or runtime failure after check passed, shapes that disagree, or a hang.

    python tools/fuzz_specs.py            # 2000 specs, a table of outcomes
    python tools/fuzz_specs.py -n 500 --seed 3 --show 5
"""
from __future__ import annotations

import argparse
import collections
import signal
import sys
import time
from pathlib import Path

import yaml
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graphcnn.errors import GraphCnnError  # noqa: E402
from graphcnn.layers import REGISTRY  # noqa: E402

MAX_COMPILE_ELEMENTS = 200_000  # params + activations per sample; bigger specs are only checked
WILD = st.one_of(st.integers(-3, 3), st.sampled_from([0, -1, 10 ** 12, 2 ** 63, 1.5, float("nan"),
                 "x", "", "same", None, True, [], [0], [1, 2, 3], [[1, 2]], {"a": 1}, "1 + "]))


def plausible(name: str, ids: list[str]):
    """A strategy for a field value that is often, not always, acceptable."""
    small = st.integers(1, 3)
    table = {
        "channels": st.integers(1, 6), "features": st.integers(1, 6), "kernel": small,
        "stride": st.one_of(st.integers(1, 2), st.lists(st.integers(1, 2), min_size=1, max_size=3)),
        "dilation": st.integers(1, 2), "groups": st.integers(1, 2),
        "padding": st.one_of(st.sampled_from(["valid", "same", "full", "circular"]), st.integers(0, 2),
                             st.lists(st.integers(0, 1), min_size=1, max_size=3)),
        "output_padding": st.integers(0, 1), "scale": st.integers(1, 2), "factor": st.integers(1, 2),
        "mode": st.sampled_from(["nearest", "linear"]), "pads": st.integers(0, 2),
        "shape": st.lists(st.integers(-1, 8), min_size=1, max_size=3),
        "perm": st.permutations([0, 1, 2]).map(list) | st.permutations([0, 1]).map(list),
        "size": st.one_of(st.integers(1, 5), st.lists(st.integers(1, 4), min_size=1, max_size=3)),
        "project": st.sampled_from([False, True, "conv", "conv_bn"]),
        "carry": st.sampled_from(["coupled", "learned"]), "gate_kernel": st.sampled_from([1, 3]),
        "rate": st.floats(0, 0.9), "alpha": st.floats(0.001, 1), "beta": st.floats(0.1, 1),
        "k": st.floats(0.5, 2), "value": st.floats(-1, 1), "eps": st.floats(1e-6, 1e-3),
        "momentum": st.floats(0.01, 0.9), "gate_bias": st.floats(-2, 0),
    }
    if name in ("skip", "like", "pool"):
        return st.sampled_from(ids + ["nowhere"])
    if name in table:
        return table[name]
    return st.booleans() if name in ("bias", "ceil_mode", "count_include_pad", "keepdims",
                                     "align_corners") else WILD


@st.composite
def node(draw, op: str, ids: list[str], index: int) -> dict:
    cls = REGISTRY[op]
    out = {"id": f"n{index}", "op": op}
    for name in cls.model_fields:
        if name in ("id", "op", "inputs"):
            continue
        if cls.model_fields[name].is_required() or draw(st.integers(0, 9)) < 5:
            wild = draw(st.integers(0, 19)) == 10  # hypothesis favours 0 and the bounds: pick a middle value
            out[name] = draw(WILD if wild else plausible(name, ids))
    if draw(st.integers(0, 6)) == 3:
        out["inputs"] = draw(st.lists(st.sampled_from(ids + ["ghost"]), min_size=1, max_size=2))
    return out


OPS = sorted(REGISTRY)  # every registered op, the ones added later included


@st.composite
def spec_data(draw) -> dict:
    rank = draw(st.integers(0, 3))
    shape = [draw(st.integers(1, 4))] + [draw(st.integers(1, 9)) for _ in range(rank)]
    ids = ["x"]
    nodes = []
    for i in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(OPS))
        if op[-2:] in ("1d", "2d", "3d") and rank and draw(st.integers(0, 3)):
            op = f"{op[:-2]}{rank}d"  # mostly the family member that fits the input's rank
        nodes.append(draw(node(op, list(ids), i)))
        ids.append(nodes[-1]["id"])
        if draw(st.integers(0, 4)) == 2:
            del nodes[-1]["id"]  # generated ids (relu_1) too
            ids.pop()
    data = {"name": "fuzz", "inputs": {"x": shape}, "nodes": nodes}
    if draw(st.integers(0, 5)) == 3:
        data["outputs"] = draw(st.lists(st.sampled_from(ids + ["nowhere"]), min_size=1, max_size=2))
    return data


MUTATION_CHARS = ":-[]{},&*!|>'\"\n #%@`\t0123456789abc"
SNIPPETS = ["&a ", "*a", "<<: *a\n", "!!python/object/apply:os.system ['true'] ", "!!binary ",
            "? ", "--- ", "...\n", "%YAML 1.1\n", "!!float ", "!!int ", "!!bool ",
            "!!timestamp ", "!!str ", "!!set ", "!!omap ", "!!null ", "1e999", "0x7f", "~", "\ufeff"]


@st.composite
def mutated(draw, text: str) -> str:
    """Delete, insert, duplicate or cut pieces of the YAML text."""
    for _ in range(draw(st.integers(1, 3))):
        if not text:
            break
        at = draw(st.integers(0, len(text) - 1))
        kind = draw(st.sampled_from(["delete", "insert", "snippet", "dupline", "truncate"]))
        if kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 5)):]
        elif kind == "insert":
            text = text[:at] + draw(st.text(MUTATION_CHARS, min_size=1, max_size=4)) + text[at:]
        elif kind == "snippet":  # YAML features a spec must not rely on: tags, anchors, merges
            text = text[:at] + draw(st.sampled_from(SNIPPETS)) + text[at:]
        elif kind == "dupline":
            lines = text.splitlines(keepends=True)
            k = draw(st.integers(0, len(lines) - 1))
            text = "".join(lines[:k + 1] + lines[k:])
        else:
            text = text[:at]
    return text


@st.composite
def spec_text(draw) -> str:
    text = yaml.safe_dump(draw(spec_data()), sort_keys=False, default_flow_style=None)
    return draw(mutated(text)) if draw(st.integers(0, 3)) == 2 else text


class Failure(Exception):
    """The pipeline did something it must not do on this spec."""


def run_one(text: str) -> str:
    """The outcome of one spec; raises Failure (with the reason) when the pipeline misbehaves."""
    from graphcnn.graph import check
    from graphcnn.spec import NetworkSpec

    try:
        checked = check(NetworkSpec.from_text(text, "fuzz.yaml"))
    except GraphCnnError as exc:
        if exc.loc is None and exc.node is None:
            raise Failure(f"error without location: {type(exc).__name__}: {exc}") from exc
        return f"refused ({type(exc).__name__})"
    except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
        raise Failure(f"crash in check: {type(exc).__name__}: {exc}") from exc
    size = checked.total_params + sum(_product(n.shape) for n in checked.nodes)
    if size > MAX_COMPILE_ELEMENTS:
        return "big (checked only)"
    compile_and_run(checked)
    return "ok"


def compile_and_run(checked) -> None:
    import numpy as np

    from graphcnn.lower.inference import lower
    from graphcnn.runtime import session

    try:
        model = lower(checked, spec_text=checked.spec.to_yaml() if checked.spec else None)
        sess = session(model, "cpu")
        feeds = {i.name: np.random.default_rng(0).standard_normal(
            [2, *checked.inputs[i.name]]).astype(np.float32) for i in sess.get_inputs()}
        results = sess.run(None, feeds)
    except Exception as exc:  # noqa: BLE001
        raise Failure(f"check passed but compile/run failed: {type(exc).__name__}: "
                      f"{str(exc)[:300]}") from exc
    for name, value in zip(checked.outputs, results):
        want = (2, *checked.shape_of(name))
        if tuple(value.shape) != want:
            raise Failure(f"output {name}: onnxruntime shape {value.shape} != checked {want}")


def _product(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _timeout(signum, frame):
    raise Failure("hang: more than 20 s on one spec")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="specs to run (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=3, help="failing specs to print")
    ap.add_argument("--save", help="folder to write failing specs into")
    args = ap.parse_args()
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    outcomes: collections.Counter = collections.Counter()
    failures: list[tuple[str, str]] = []

    @hseed(args.seed)
    @settings(max_examples=args.n, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(spec_text())
    def one(text):
        signal.signal(signal.SIGALRM, _timeout)
        signal.alarm(20)
        try:
            outcomes[run_one(text)] += 1
        except Failure as exc:
            outcomes["FAIL: " + str(exc).split(":")[0]] += 1
            failures.append((text, str(exc)))
        finally:
            signal.alarm(0)

    start = time.perf_counter()
    one()
    print(f"{sum(outcomes.values())} specs in {time.perf_counter() - start:.0f} s (seed {args.seed})\n")
    report(outcomes, failures, args.show, args.save)
    return 1 if failures else 0


def report(outcomes: collections.Counter, failures: list, show: int, save: str | None) -> None:
    print("| outcome | specs |\n|---|---:|")
    for outcome, count in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"| {outcome} | {count} |")
    for text, why in failures[:show]:
        print(f"\n--- {why}\n{text}")
    for k, (text, why) in enumerate(failures if save else []):
        Path(save, f"fail{k}.yaml").write_text(f"# {why.splitlines()[0][:200]}\n{text}")


if __name__ == "__main__":
    sys.exit(main())

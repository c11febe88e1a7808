"""Deployment commands: bench and export-weights."""
from __future__ import annotations

from ..api import model_to_run
from .args import (MAX_BATCH, MAX_REPEAT, non_negative_int, positive_int, spec_positional,
                   weights_args, weights_options)
from ..errors import RunError, about
from ..runtime import existing_file, load_model
from ..runtime.sessions import MAX_THREADS
from .output import out, print_json
from .registry import command, configure


@command("bench", "latency and throughput of a model (or spec) in onnxruntime; --compare another")
def cmd_bench(args) -> int:
    from ..deploy.bench import bench
    from ..runtime import resolve_provider

    resolve_provider(args.provider)  # before the models: an error about the machine
    model, notes = model_to_run(args.model, args.weights, **weights_options(args))
    for note in notes if not args.json else ():
        out(note)
    models = [model] + ([model_to_run(args.compare)[0]] if args.compare else [])
    batches = _batches(args.batches)
    with about(args.model if not args.compare else f"{args.model} or {args.compare}"):
        report = bench(models, batches, provider=args.provider, threads=args.threads,
                       repeat=args.repeat, warmup=args.warmup)
    rows = [[t.row() for t in per_model] for per_model in report["results"]]
    if args.json:
        print_json({"models": [args.model] + ([args.compare] if args.compare else []),
                    "provider": args.provider, "results": rows,
                    "max_abs_diff": report["max_abs_diff"]})
        return 0
    out(_table(args, rows, report["max_abs_diff"]))
    return 0


@configure(cmd_bench)
def _bench_args(p):
    spec_positional(p, "model", "a .onnx model or a spec .yaml")
    weights_args(p)
    p.add_argument("--compare", help="a second model, run alternately in the same process")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--provider", default="cpu")
    p.add_argument("--threads", type=positive_int(MAX_THREADS), default=None,
                   help="intra-op threads (default: all)")
    p.add_argument("--repeat", type=positive_int(MAX_REPEAT), default=20, help="timed runs")
    p.add_argument("--warmup", type=non_negative_int(MAX_REPEAT), default=3,
                   help="untimed runs first")
    p.add_argument("--json", action="store_true")


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1 or max(values) > MAX_BATCH:
        raise RunError(f"--batches takes positive integers up to {MAX_BATCH:,} separated by "
                       "commas", received=text)
    return values


def _table(args, rows, diffs) -> str:
    from rich.table import Table

    from ..summary import rich_text

    table = Table(box=None, header_style="bold")
    for col in ["model", "batch", "min ms", "median ms", "p90 ms", "samples/s"]:
        table.add_column(col, justify="left" if col == "model" else "right")
    names = [args.model] + ([args.compare] if args.compare else [])
    for name, per_model in zip(names, rows):
        for r in per_model:
            table.add_row(name, str(r["batch"]), f"{r['min_ms']:.3f}", f"{r['median_ms']:.3f}",
                          f"{r['p90_ms']:.3f}", f"{r['samples_per_s']:.1f}")
    text = rich_text(table, 120)
    if len(rows) > 1:
        for a, b in zip(rows[0], rows[1]):
            text += (f"batch {a['batch']}: {names[1]} takes {b['median_ms'] / a['median_ms']:.3f}x "
                     f"the median time of {names[0]} (speed-up {a['median_ms'] / b['median_ms']:.2f}x)"
                     f"; largest output difference {diffs.get(a['batch'], float('nan')):.3g}\n")
    return text


@command("export-weights", "write a model's weights to .npz, .safetensors or .pth, by spec id or "
                           "under a map's checkpoint names (--map torchvision)")
def cmd_export_weights(args) -> int:
    from ..checkpoints import format_for, write_checkpoint
    from ..deploy.weights import model_weights, renamed_for
    from ..fileio import write_atomic

    fmt = format_for(args.output)
    model = load_model(existing_file(args.model))
    weights = model_weights(model)
    if args.map:
        weights = renamed_for(weights, _map_of(model, args.map))
    write_atomic(args.output, lambda p: write_checkpoint(p, weights, fmt))
    named = f" under map '{args.map}'s names" if args.map else " by spec id"
    out(f"wrote {args.output}: {len(weights)} tensors{named}, "
        f"{sum(w.size for w in weights.values()):,} values")
    return 0


def _map_of(model, requested: str):
    """A map of the spec the model carries (its weights: section), or a map file."""
    from ..deploy.namemap import choose_map
    from ..spec import NetworkSpec

    meta = {p.key: p.value for p in model.metadata_props}
    spec = NetworkSpec.from_text(meta["graphcnn_spec"], "<the model's spec>") \
        if "graphcnn_spec" in meta else None
    return choose_map(spec, requested, [], set())


@configure(cmd_export_weights)
def _export_args(p):
    p.add_argument("model", help="a .onnx model written by graphcnn")
    p.add_argument("-o", "--output", required=True,
                   help="the file to write: .npz, .safetensors, or .pth/.pt/.bin (PyTorch's zip "
                        "format, torch.load(weights_only=True) reads it)")
    p.add_argument("--map", metavar="NAME|FILE",
                   help="write under the checkpoint names of this map (the spec's weights: "
                        "section, e.g. torchvision, or a map file): the rules turned around")

"""`graphcnn predict`: images in, the top classes out, fed as the model's own metadata says
(the spec's `preprocess:` and `labels:`, which every compiled model carries). IMAGE... prints
them; `--data` runs a whole dataset into a Parquet or CSV file, here (deploy/batch.py) or on
Ray (`--engine ray`, deploy/ray_job.py); both run the model through deploy/predictor.py."""
from __future__ import annotations

import sys

from ..errors import DataError, RunError, about
from ..fileio import OutputPath, existing_file
from .args import spec_positional, weights_args, weights_options
from .output import out, print_json
from .registry import command, configure


@command("predict", "classify images with a model (or a spec) by the preprocessing it carries")
def cmd_predict(args) -> int:
    from ..deploy.predictor import Predictor
    from ..runtime import resolve_provider

    _check_args(args)
    if args.engine == "local":  # Ray's actors may run where this machine's providers are not
        resolve_provider(args.provider)  # before the model: an error about the machine
    for path in args.images:  # before a spec is compiled: a typo should fail at once
        existing_file(path, "image", DataError)
    if args.data:
        with about(args.model, args.data, args.out):
            return _predict_dataset(args)
    with about(args.model, *args.images):
        predictor = Predictor(_model(args), args.provider)
    for note in predictor.notes:
        warn(note)
    rows, step = [], predictor.fixed_batch or args.batch
    for start in range(0, len(args.images), step):
        paths = args.images[start:start + step]
        outputs = predictor.predict([predictor.load(p) for p in paths])
        rows += [{"path": p, **predictor.top(y, args.top)} for p, y in zip(paths, outputs)]
    if args.json:
        print_json(rows)
    else:
        out(_table(rows))
    return 0


@configure(cmd_predict)
def _predict_args(p):
    spec_positional(p, "model", "a .onnx model compiled by graphcnn, or a spec .yaml")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (anything Pillow reads)")
    weights_args(p)
    p.add_argument("--top", type=int, default=5, help="how many classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON: [{path, top: [...]}]")
    p.add_argument("--batch", type=int, default=None,
                   help="images per run (default 8, with --data 32)")
    p.add_argument("--provider", default="cpu", help="cpu, cuda, or a full provider name")
    g = p.add_argument_group("a whole dataset (instead of IMAGE...)")
    g.add_argument("--data", metavar="DIR|FILE.csv|FILE.parquet",
                   help="a folder of images (found recursively), or a list of image paths")
    g.add_argument("--out", type=OutputPath, metavar="FILE.parquet|FILE.csv",
                   help="the rows: path, top K labels, indices and scores, error")
    g.add_argument("--raw", action="store_true", help="the first output itself, not the top K")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process, decoding in threads; ray: Ray Data actors")
    g.add_argument("--address", help="ray: the cluster to join (default: start a local one)")
    g.add_argument("--workers", type=int, help="ray: predictor actors (default: as fit)")
    g.add_argument("--threads-per-worker", type=int,
                   help="ray: onnxruntime threads per actor (default 2, or what fills the cores)")


def _check_args(args) -> None:
    if args.data is None and not args.images:
        raise RunError("predict needs IMAGE... or --data DIR|FILE.csv|FILE.parquet")
    if args.data is not None and args.images:
        raise RunError("give IMAGE... or --data, not both")
    if (args.data is None) != (args.out is None):
        raise RunError("--data and --out go together")
    if args.batch is None:
        args.batch = 32 if args.data else 8
    numbers = [args.top, args.batch, args.workers or 1, args.threads_per_worker or 1]
    if min(numbers) < 1:
        raise RunError("--top, --batch, --workers and --threads-per-worker take positive numbers",
                       received=f"--top {args.top} --batch {args.batch}")
    ray_only = [f for f in ("address", "workers", "threads_per_worker") if getattr(args, f)]
    if ray_only and args.engine != "ray":
        raise RunError(f"--{ray_only[0].replace('_', '-')} is for --engine ray")
    if args.raw and args.data is None:
        raise RunError("--raw is for --data (the rows of a dataset)")


def _predict_dataset(args) -> int:
    """--data: every image of a dataset through the model, rows written to --out."""
    from ..deploy.batch import Layout, check_out, list_images
    from ..deploy.predictor import class_count

    check_out(args.out, args.engine)  # a missing pyarrow or ray fails before any work
    if args.engine == "ray":
        from ..deploy.ray_job import import_ray
        import_ray()
    paths = list_images(args.data)
    model = _model(args)
    layout = Layout(min(args.top, class_count(model) or args.top), args.raw)
    if args.engine == "ray":
        from ..deploy.ray_job import run_ray
        summary = run_ray(model.SerializeToString(), paths, args.out, layout, args.batch,
                          args.address, args.workers, args.threads_per_worker, args.provider)
    else:
        summary = _run_local(model, paths, args, layout)
    out(summary.line(args.out))
    return 0


def _run_local(model, paths, args, layout):
    from ..deploy.batch import run_local
    from ..deploy.predictor import Predictor

    # no spinning: the decoding threads share the cores (ResNet-18, 2 cores: 19.4 s for 400
    # images, 21.5 s spinning during runs)
    predictor = Predictor(model, args.provider, spinning="never")
    for note in predictor.notes:
        warn(note)
    return run_local(predictor, paths, args.out, layout, args.batch)


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def _model(args):
    """The .onnx, or the spec compiled in memory; with --weights, a checkpoint's weights."""
    from ..api import model_with_weights

    is_spec = args.model.endswith((".yaml", ".yml"))
    if is_spec and not args.weights:
        warn(f"no --weights: {args.model} runs with random weights; its predictions mean nothing")
    model, notes = model_with_weights(args.model, args.weights, **weights_options(args))
    for note in notes:  # stderr: stdout holds only the predictions (--json parses)
        print(note, file=sys.stderr)
    return model


def _table(rows) -> str:
    from rich.table import Table

    from ..summary import rich_text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (("image", "left"), ("rank", "right"), ("label", "left"),
                          ("index", "right"), ("score", "right")):
        table.add_column(name, justify=justify)
    for row in rows:
        for rank, item in enumerate(row["top"], 1):
            table.add_row(row["path"] if rank == 1 else "", str(rank), item["label"],
                          str(item["index"]), f"{item['score']:.4f}")
    measures = sorted({row["measure"] for row in rows})
    lines = [line.rstrip() for line in rich_text(table, 120).splitlines()]
    return "\n".join(lines + [f"score: {', '.join(measures)}"])

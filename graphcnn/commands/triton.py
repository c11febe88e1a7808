"""`graphcnn export-triton MODEL|SPEC --repo DIR`: a Triton Inference Server model repository
(graphcnn.deploy.triton writes it; a spec is compiled with compile's options on the way)."""
from __future__ import annotations

from pathlib import Path

from ..errors import RunError, about
from .args import spec_positional, weights_args, weights_options
from .output import out
from .registry import command, configure

# compile's options, which only a spec takes (a model's are fixed): dest -> its default
SPEC_ONLY = {"seed": 0, "opset": None, "fold_preprocess": False, "fold_bn": False,
             "precision": "fp32", "quantize": None, "calibrate": "random", "portable": False,
             "dynamic": None}


@command("export-triton", "write a Triton Inference Server model repository: config.pbtxt, "
                          "the versioned model.onnx and the labels file")
def cmd_export_triton(args) -> int:
    from ..deploy.triton import check_options, check_target, write_repository

    is_spec = str(args.model).endswith((".yaml", ".yml"))
    _refuse_spec_options(args, is_spec)
    opts = _options(args, is_spec)
    check_options(opts)
    check_target(args.repo, opts)  # before compiling: an existing version, an input in the way
    written = write_repository(args.repo, opts, _spec_writer(args) if is_spec
                               else _model_writer(args))
    out(_report(args, written))
    return 0


@configure(cmd_export_triton)
def _triton_args(p):
    spec_positional(p, "model", "a .onnx model or a spec .yaml (compiled with the options below)")
    p.add_argument("--repo", required=True, metavar="DIR",
                   help="the model repository (created when missing)")
    p.add_argument("--name", help="the model's folder and name (default: the spec's name, or "
                                  "the model file's stem)")
    p.add_argument("--version", type=int, default=1, metavar="V",
                   help="the version folder (default 1); an existing one needs --force")
    p.add_argument("--force", action="store_true", help="replace an existing version folder")
    p.add_argument("--max-batch", type=int, default=None, metavar="B",
                   help="max_batch_size: Triton sends batches of up to B (default 1 with a free "
                        "batch axis; 0 for a model of fixed batch)")
    p.add_argument("--dynamic-batching", action="store_true",
                   help="let Triton gather requests into batches")
    p.add_argument("--preferred", metavar="B,...", help="preferred batch sizes")
    p.add_argument("--max-queue-delay-us", type=int, default=None, metavar="U",
                   help="how long a request may wait for a batch to fill, in microseconds")
    p.add_argument("--instances", type=int, default=None, metavar="K", help="model instances")
    p.add_argument("--kind", choices=["cpu", "gpu"], default=None, help="the instances' kind")
    p.add_argument("--accelerator", choices=["openvino", "tensorrt"], default=None,
                   help="an execution accelerator of onnxruntime (openvino on CPU, tensorrt on "
                        "GPU, with its shape profile)")
    p.add_argument("--trt-precision", choices=["FP32", "FP16", "INT8"], type=str.upper,
                   default=None, help="TensorRT's precision_mode (default: the model's)")
    p.add_argument("--range", default=None, metavar="A:B",
                   help="the sizes searched for TensorRT's profile of a --dynamic axis (default "
                        "1 to twice the spec's size)")
    _compile_args(p)


def _compile_args(p) -> None:
    g = p.add_argument_group("compiling a spec (as graphcnn compile)")
    weights_args(g)
    g.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    g.add_argument("--opset", type=int, default=None, help="ONNX opset (default: newest supported)")
    g.add_argument("--fold-preprocess", action="store_true",
                   help="the spec's preprocess: inside the graph (a uint8 image input)")
    g.add_argument("--fold-bn", action="store_true", help="fold batchnorm into the layer before")
    g.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    g.add_argument("--quantize", choices=["int8"], default=None, help="static QDQ quantization")
    g.add_argument("--calibrate", default="random", help="calibration .npz (x) or 'random'")
    g.add_argument("--portable", action="store_true", help="the portability rewrites")
    g.add_argument("--dynamic", default=None, metavar="AXES",
                   help="spatial axes left free, e.g. H,W (-1 in the config; TensorRT's profile "
                        "from graphcnn sizes)")


def _refuse_spec_options(args, is_spec: bool) -> None:
    given = [k for k, default in SPEC_ONLY.items() if getattr(args, k) != default]
    if not is_spec and given:
        flag = "--" + given[0].replace("_", "-")
        raise RunError(f"{flag} compiles a spec; {args.model} is a compiled model",
                       hint="give the spec (.yaml), or the model as it is")


def _options(args, is_spec: bool):
    from ..deploy.triton import TritonOptions

    return TritonOptions(
        name=args.name or _default_name(args, is_spec), version=args.version,
        max_batch=args.max_batch, dynamic_batching=args.dynamic_batching,
        preferred=_counts(args.preferred, "--preferred"),
        max_queue_delay_us=args.max_queue_delay_us, instances=args.instances, kind=args.kind,
        accelerator=args.accelerator, trt_precision=args.trt_precision,
        size_range=_range(args.range), force=args.force)


def _default_name(args, is_spec: bool) -> str:
    if is_spec:
        from ..api import load_spec

        return load_spec(args.model).name
    return Path(args.model).stem


def _counts(text: str | None, flag: str) -> tuple[int, ...]:
    if text is None:
        return ()
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise RunError(f"{flag} takes whole numbers separated by commas", received=text)
    return values


def _range(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        low, high = (int(v) for v in text.split(":"))
    except ValueError:
        raise RunError("--range takes A:B with whole numbers", received=text) from None
    if not 1 <= low <= high:
        raise RunError("--range needs 1 <= A <= B", received=text)
    return low, high


def _spec_writer(args):
    """Compile the spec straight into the version folder being built (graphcnn compile's
    pipeline: weights streamed, external data past 2 GiB)."""
    from ..api import check_spec, load_spec
    from ..deploy.export import ExportOptions, export_to_file
    from ..spec.expand import self_contained_text

    checked = check_spec(load_spec(args.model))
    opts = ExportOptions(seed=args.seed, opset=args.opset, weights=args.weights,
                         **weights_options(args), fold_preprocess=args.fold_preprocess,
                         fold_bn=args.fold_bn, precision=args.precision,
                         quantize=args.quantize, calibrate=args.calibrate,
                         portable=args.portable,
                         dynamic=tuple(a for a in (args.dynamic or "").split(",") if a))

    def write(path):
        model, notes = export_to_file(checked, self_contained_text(checked.spec), opts, path)
        for note in notes:
            out(note)
        return model
    return write


def _model_writer(args):
    """A compiled model as it is (its checkpoint loaded when --weights says so), saved anew so
    that large weights land in external data named after model.onnx."""
    from ..api import model_with_weights
    from ..lower.save import save_model

    def write(path):
        with about(args.model):
            model, notes = model_with_weights(args.model, args.weights, **weights_options(args))
            for note in notes:
                out(note)
            save_model(model, path)
        return model
    return write


def _report(args, written) -> str:
    parts = [f"{written.version.name}/model.onnx"]
    if (written.version / "model.onnx.data").exists():
        parts.append(f"{written.version.name}/model.onnx.data")
    if written.labels:
        parts.append(f"labels.txt ({written.labels} names)")
    inputs = ", ".join(i.name for i in written.model.graph.input)
    return (f"wrote {written.folder}: config.pbtxt, {', '.join(parts)}; inputs {inputs}; "
            f"serve with: tritonserver --model-repository {args.repo}")

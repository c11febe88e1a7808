"""Commands that make or run a model: compile (inference or training step) and run."""
from __future__ import annotations

import numpy as np

from ..api import check_spec, load_spec, model_to_run
from ..errors import RunError, about
from ..spec.expand import self_contained_text
from .args import (MAX_BATCH, MAX_SEED, limits, non_negative_int, positive_int, spec_arg,
                   spec_positional, weights_args, weights_options)
from .output import out
from .registry import command, configure


@command("compile", "lower a spec to an ONNX model")
def cmd_compile(args) -> int:
    from ..deploy.export import ExportOptions, export_to_file
    from ..runtime.sessions import resolve_provider

    spec = load_spec(args.spec)
    checked = check_spec(spec, limits(args))
    chosen = resolve_provider(args.provider)[0]  # an unknown or absent one fails before lowering
    if args.training:
        return _compile_training(args, spec, checked, chosen)
    opts = ExportOptions(seed=args.seed, opset=args.opset, batch=args.batch, weights=args.weights,
                         **weights_options(args), fold_preprocess=args.fold_preprocess,
                         fold_bn=args.fold_bn, precision=args.precision or "fp32",
                         provider=args.provider,
                         quantize=args.quantize, calibrate=args.calibrate, portable=args.portable,
                         dynamic=tuple(a for a in (args.dynamic or "").split(",") if a))
    # checked.spec: without labels that --set left stale (api.check_spec)
    model, notes = export_to_file(checked, self_contained_text(checked.spec), opts, args.output)
    for note in notes + _provider_note(args.provider, chosen, opts.precision):
        out(note)
    out(f"wrote {args.output}: {checked.reaching_outputs().total_params:,} parameters, opset "
        f"{model.opset_import[0].version}, {len(model.graph.node)} ONNX nodes")
    return 0


@configure(cmd_compile)
def _compile_args(p):
    spec_arg(p)
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--seed", type=non_negative_int(MAX_SEED), default=0,
                   help="weight initialisation seed")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: newest supported)")
    p.add_argument("--batch", type=positive_int(MAX_BATCH), default=None,
                   help="fix the batch size (default: dynamic N)")
    p.add_argument("--training", action="store_true",
                   help="write the training-step model (forward, loss, backward, update) instead")
    weights_args(p)
    p.add_argument("--fold-preprocess", action="store_true",
                   help="the spec's preprocess: inside the graph: a uint8 image input, scaling "
                        "and mean/std folded into the first convolution where that is exact")
    p.add_argument("--fold-bn", action="store_true", help="fold batchnorm into the conv/linear before it")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                   help="weights and compute (default fp32); with --training, the step's "
                        "(default: the recipe's)")
    p.add_argument("--provider", default="cpu",
                   help="with --precision fp16/bf16: the execution provider the model is for "
                        "(cpu, cuda, or a full provider name); compute goes to half precision "
                        "only where this onnxruntime's kernels for it do that (default cpu)")
    p.add_argument("--quantize", choices=["int8"], default=None, help="static QDQ quantization")
    p.add_argument("--calibrate", default="random", help="calibration .npz (x) or 'random'")
    p.add_argument("--portable", action="store_true",
                   help="rewrite constructs ONNX hosts compute differently (graphcnn lint)")
    p.add_argument("--dynamic", default=None, metavar="AXES",
                   help="spatial axes left symbolic in the model, e.g. H,W (see graphcnn sizes)")


def _provider_note(provider: str, chosen: str, precision: str) -> list[str]:
    """--provider only decides where half-precision compute goes: say so when it changed
    nothing, rather than let the user believe the file is now specific to that provider.
    `chosen`: the onnxruntime provider the flag resolved to."""
    if precision != "fp32" or chosen == "CPUExecutionProvider":
        return []
    return [f"--provider {provider}: only a --precision fp16/bf16 model is built for a provider; "
            "this fp32 model runs the same on any"]


def _compile_training(args, spec, checked, chosen: str) -> int:
    """`compile --training`: the training-step model of the spec's recipe (--batch overrides
    the recipe's batch)."""
    from ..train.job import save_training_step

    recipe, step = save_training_step(spec, checked, args.output, batch=args.batch,
                                      opset=args.opset, precision=args.precision,
                                      provider=args.provider)
    out(f"wrote {args.output}: training step ({recipe.loss}, {recipe.optimizer}), batch "
        f"{recipe.batch}, {len(step.params)} parameter tensors, {len(step.state)} state tensors, "
        f"{len(step.model.graph.node)} ONNX nodes")
    if step.report is not None:
        out(step.report.line())
    for note in _provider_note(args.provider, chosen, recipe.precision):
        out(note)
    scalars = [o.name for o in step.model.graph.output if not o.name.endswith(".new")]
    out("inputs: " + ", ".join(i.name for i in step.model.graph.input[:5]) + ", then each "
        f"carried tensor; outputs: {', '.join(scalars)} and <name>.new per carried tensor")
    return 0


@command("run", "run a model (or a spec, compiled in memory) in onnxruntime")
def cmd_run(args) -> int:
    from ..runtime import random_inputs, resolve_provider, run, session

    resolve_provider(args.provider)  # before the model: an error about the machine, not it
    if args.output and not args.output.lower().endswith((".npy", ".npz")):
        raise RunError("--output writes .npy (one output) or .npz (all outputs)",
                       received=args.output)
    model, notes = model_to_run(args.model, args.weights, **weights_options(args))
    for note in notes:
        out(note)
    with about(args.model, args.input):
        sess = session(model, args.provider)
        feeds = (_load_inputs(args.input, sess) if args.input
                 else random_inputs(sess, args.batch, args.seed))
        result = run(sess, feeds)
    for name, value in result.outputs.items():
        out(f"{name}: shape {list(value.shape)}, dtype {value.dtype}")
    out(f"time: {result.seconds * 1000:.2f} ms on {sess.get_providers()[0]}")
    if args.output:
        _save_outputs(args.output, result.outputs)
    return 0


@configure(cmd_run)
def _run_args(p):
    spec_positional(p, "model", "a .onnx model or a spec .yaml")
    weights_args(p)
    p.add_argument("--input", help=".npy (one input) or .npz (by input name)")
    p.add_argument("--output", help=".npy (one output) or .npz (all outputs)")
    p.add_argument("--batch", type=positive_int(MAX_BATCH), default=1,
                   help="batch of the random input (default 1)")
    p.add_argument("--provider", default="cpu", help="cpu, cuda, or a full provider name")
    p.add_argument("--seed", type=non_negative_int(MAX_SEED), default=0,
                   help="seed of the random input")


def _load_inputs(path: str, sess) -> dict:
    """The input file's arrays by model input: a .npy feeds a one-input model, an .npz names
    each input. Names, shapes and dtypes are checked from the headers before anything is read
    (checkpoints.arrays); values become each input's type, integers into a float input with a
    note (an image's uint8 pixels are exact as float32), overflow, complex and strings refused."""
    from ..checkpoints.arrays import Want, read_arrays

    inputs = sess.get_inputs()
    expected = {i.name: Want(tuple(i.shape), _input_dtype(i.type)) for i in inputs}
    notes: list[str] = []
    arrays = read_arrays(path, expected, "--input", notes=notes,
                         single=inputs[0].name if len(inputs) == 1 else None)
    for note in notes:
        out(note)
    return arrays


def _input_dtype(ort_type: str) -> str | None:
    """Our dtype name of an onnxruntime input type ('tensor(float)' -> 'float32')."""
    from ..checkpoints.dtypes import DTYPES

    name = ort_type.removeprefix("tensor(").removesuffix(")")
    name = {"float": "float32", "double": "float64"}.get(name, name)
    return name if name in DTYPES else None


def _save_outputs(path: str, outputs: dict) -> None:
    from ..checkpoints import npz_io
    from ..fileio import write_atomic

    def save_one(tmp) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.save would add .npy to a name
            np.save(fh, next(iter(outputs.values())), allow_pickle=False)

    if path.lower().endswith(".npz"):  # npz_io.write: an output named 'file' is no keyword
        write_atomic(path, lambda tmp: npz_io.write(tmp, outputs))
    elif len(outputs) == 1:
        write_atomic(path, save_one)
    else:
        raise RunError("the model has several outputs; use an .npz output file",
                       received=path)
    out(f"wrote {path}")

"""The inference export pipeline behind `graphcnn compile`: lower, then the optional transforms
in a fixed order (weights -> fold batchnorm -> precision or int8)."""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..errors import CompileError
from ..graph import CheckedGraph


@dataclass(frozen=True)
class ExportOptions:
    seed: int = 0
    opset: int | None = None
    batch: int | None = None
    weights: str | None = None       # a checkpoint: .npz, .safetensors, .pth/.pt/.bin
    weights_map: str | None = None   # a map of the spec's `weights:` section, or a map file
    weights_key: str | None = None   # where the tensors sit inside a nested checkpoint
    partial: bool = False            # load what matches, keep the initial values of the rest
    fold_preprocess: bool = False    # the spec's preprocess: inside the graph (uint8 input)
    fold_bn: bool = False
    precision: str = "fp32"          # fp32 | fp16 | bf16
    provider: str = "cpu"            # whose half kernels a precision places compute on
    quantize: str | None = None      # int8
    calibrate: str = "random"        # .npz or 'random'
    portable: bool = False           # the lint rewrites (graphcnn.lint.portable)
    dynamic: tuple[str, ...] = ()    # spatial axes exported as dim_params (graphcnn.deploy.dynamic)


def export(checked: CheckedGraph, spec_text: str, opts: ExportOptions) -> tuple[onnx.ModelProto, list[str]]:
    """The model to write, and notes for the user (what each transform did)."""
    model, notes, _ = _export(checked, spec_text, opts, stream=False)
    return model, notes


def export_to_file(checked: CheckedGraph, spec_text: str, opts: ExportOptions,
                   path) -> tuple[onnx.ModelProto, list[str]]:
    """export + save. When no transform needs the weights in memory (folding, precision,
    int8), they are drawn one tensor at a time while the file is written: the same bytes,
    without holding every weight twice (vgg16: 528 MB)."""
    from ..lower.save import save_model

    model, notes, pending = _export(checked, spec_text, opts, stream=True)
    save_model(model, path, pending)
    return model, notes


def _export(checked: CheckedGraph, spec_text: str, opts: ExportOptions, stream: bool):
    from ..lower.inference import lower, pending_parameters
    from .weights import load_weights

    if opts.quantize and opts.precision != "fp32":
        raise CompileError("--quantize and --precision cannot be combined",
                           received=f"--quantize {opts.quantize} --precision {opts.precision}")
    weights, loaded = load_weights(opts.weights, checked, spec=checked.spec,
                                   map_name=opts.weights_map, key=opts.weights_key,
                                   partial=opts.partial) if opts.weights else (None, None)
    left_out = [f"left out {len(checked.unused)} node(s) that reach no output: "
                f"{', '.join(checked.unused[:3])}{' ...' if len(checked.unused) > 3 else ''}"]
    left_out, checked = (left_out if checked.unused else []), checked.reaching_outputs()
    opset = opts.opset
    if opts.quantize and opset is None:
        from .quantize import QUANT_OPSET

        opset = QUANT_OPSET
    plan = _dynamic_plan(checked, opts)
    portable_ids, portable_notes = [], []
    if opts.portable:
        from ..lint import portable

        portable_ids, portable_notes = portable(checked)
    stream = stream and not (opts.fold_bn or opts.quantize or opts.precision != "fp32"
                             or opts.fold_preprocess)
    model = lower(checked, seed=opts.seed, opset=opset, batch=opts.batch, weights=weights,
                  spec_text=spec_text, parameters=not stream, portable=portable_ids)
    notes = (loaded.lines() if loaded else []) + left_out + portable_notes
    if opts.fold_preprocess:  # before fold_bn and precision: the scale goes into fp32 weights
        from .foldpre import fold_preprocess
        from .preprocess import read_recipe

        model, note = fold_preprocess(model, read_recipe(model))
        notes.append(note)
    if opts.fold_bn or opts.quantize:  # int8 kernels want the batchnorm folded first
        from .foldbn import fold_batchnorm

        model, count = fold_batchnorm(model)
        notes.append(f"folded {count} batchnorm(s) into the layer before them")
    if opts.precision != "fp32":
        from .precision import convert, layer_fp32_rule

        model, report = convert(model, opts.precision, layer_fp32_rule(checked),
                                provider=opts.provider)
        notes.append(report.line())
    if opts.quantize:
        from .quantize import calibration_data, quantize_int8

        model, report = quantize_int8(model, calibration_data(opts.calibrate, model))
        notes.append(str(report))
    if plan is not None:
        from .dynamic import apply_dynamic

        model = apply_dynamic(model, plan, checked)
        notes.append(f"dynamic spatial axes: {', '.join(opts.dynamic)}")
    return model, notes, pending_parameters(checked, opts.seed, weights) if stream else []


def _dynamic_plan(checked: CheckedGraph, opts: ExportOptions):
    """Fail before the weights are made when a node pins the input size."""
    if not opts.dynamic:
        return None
    if opts.portable:
        raise CompileError("--dynamic and --portable cannot be combined yet")
    from .dynamic import check_dynamic

    return check_dynamic(checked, list(opts.dynamic))

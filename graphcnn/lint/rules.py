"""Portability rules: constructs that PyTorch, TensorFlow/Keras, the ONNX spec, onnxruntime and
onnx.reference (or other ONNX hosts) are known to compute differently.

Each rule looks at one checked node and returns a detail string (what happens at this node,
with the numbers) or None. `differs` is the general story, `refs` where it is documented or
reported, `rewrite` what `compile --portable` does instead (rewrite.py), or why none is needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..layers.conv import ConvBase, ConvTransposeBase
from ..layers.pool import AvgPoolBase, PoolBase
from ..layers.resample import MaxUnpool, Upsample
from ..layers.spatial import per_axis

ONNX_OPS = "https://github.com/onnx/onnx/blob/main/docs/Operators.md"


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    check: Callable  # (NodeInfo) -> str | None
    differs: str
    refs: tuple[str, ...]
    rewrite: str              # what --portable does (or why nothing is needed)
    rewritable: bool


def pool_axes(node):
    """Per spatial axis (L, k, s, (begin, end), n_floor, n_raw_ceil) of a pooling node."""
    layer, x = node.layer, node.in_shapes[0]
    k, s, _ = layer.geometry()
    axes = []
    for L, kk, ss, (b, e) in zip(x[1:], k, s, layer.pads(x)):
        span = L + b + e - kk
        axes.append((L, kk, ss, (b, e), span // ss + 1, -(-span // ss) + 1))
    return axes


def ceil_in_padding(node) -> str | None:
    if not isinstance(node.layer, PoolBase):
        return None
    axis = node.layer.dropped_window_axis(node.in_shapes[0])
    if axis is None:
        return None
    L, _, s, (b, _), _, raw = pool_axes(node)[axis]
    start = (raw - 1) * s
    return (f"on spatial axis {axis} a last window would start at padded position {start}, "
            f"inside the end padding (input {L} + begin pad {b}): PyTorch, onnxruntime "
            f"and onnx.reference drop it ({raw - 1} outputs), ONNX shape inference before "
            f"opset 22 and hosts without the drop rule give {raw}")


def ceil_partial(node) -> str | None:
    if not isinstance(node.layer, PoolBase) or not node.layer.ceil_mode:
        return None
    for axis, (n, (L, k, s, (b, e), floor, _)) in enumerate(zip(node.shape[1:], pool_axes(node))):
        if n > floor:
            over = (n - 1) * s + k - (L + b + e)
            return (f"on spatial axis {axis} the last window reaches {over} position(s) past the "
                    f"padded input ({n} outputs where floor mode gives {floor})")
    return None


def avg_padding(node) -> str | None:
    layer = node.layer
    if not isinstance(layer, AvgPoolBase):
        return None
    pads = layer.pads(node.in_shapes[0])
    if not any(b or e for b, e in pads):
        return None
    how = "set in the spec" if "count_include_pad" in layer.model_fields_set else "graphcnn's default"
    return (f"padding {pads} with count_include_pad={str(layer.count_include_pad).lower()} "
            f"({how}): windows at the border divide by "
            f"{'the kernel size' if layer.count_include_pad else 'their input positions only'}")


def same_asymmetric(node) -> str | None:
    layer = node.layer
    if not isinstance(layer, (ConvBase, PoolBase)) or layer.padding != "same":
        return None
    for axis, (b, e) in enumerate(layer.pads(node.in_shapes[0])):
        if b != e:
            return (f"'same' on spatial axis {axis} needs {b + e} padding: graphcnn puts {b} "
                    f"before and {e} after and writes these explicit pads")
    return None


def nearest_resize(node) -> str | None:
    layer = node.layer
    if not isinstance(layer, Upsample) or layer.mode != "nearest":
        return None
    note = "; align_corners: true is ignored for nearest (PyTorch refuses it)" \
        if layer.align_corners else ""
    return (f"nearest upsample by {layer.scale} lowers to ONNX Resize with "
            f"coordinate_transformation_mode=asymmetric, nearest_mode=floor{note}")


def linear_align_corners(node) -> str | None:
    layer = node.layer
    if not isinstance(layer, Upsample) or layer.mode != "linear" or not layer.align_corners:
        return None
    return (f"linear upsample by {layer.scale} with align_corners: true samples source "
            f"x = o * (L-1) / (L*scale-1) (ONNX Resize coordinate_transformation_mode=align_corners)")


def output_padding(node) -> str | None:
    layer = node.layer
    if not isinstance(layer, ConvTransposeBase):
        return None
    extra = per_axis(layer.output_padding, layer.dims, "output_padding")
    if not any(extra):
        return None
    pads = layer.pads(node.in_shapes[0])
    return (f"output_padding {list(extra)} with padding {pads}: the extra end positions hold "
            f"computed values where the end padding covers them, bias only beyond")


def unpool_indices(node) -> str | None:
    if not isinstance(node.layer, MaxUnpool):
        return None
    return (f"max-pool indices of '{node.layer.pool}' flow into this unpool inside the model, "
            f"flat over the whole [N, C, *spatial] input as ONNX MaxPool counts them")


RULES: list[Rule] = [
    Rule("GC101", "ceil_mode pooling whose last window starts in the padding", ceil_in_padding,
         "PyTorch drops a ceil_mode window that would start in the end padding (its docs: the "
         "last pooling starts inside the image) and onnxruntime and onnx.reference follow it; "
         "the output formula in the PyTorch and ONNX docs does not say so, ONNX shape inference "
         "before opset 22 counts the window, and hosts that keep it fill it with -inf (max) or "
         "NaN/0 (average). TensorFlow/Keras pooling has no ceil_mode at all.",
         ("https://github.com/pytorch/pytorch/issues/46929",
          "https://github.com/onnx/onnx/issues/4958",
          "https://github.com/pytorch/pytorch/issues/116420",
          f"{ONNX_OPS}#MaxPool"),
         "graphcnn always lowers such a pool in floor mode with the end padding enlarged to the "
         "same window count (so the ONNX file means the same at every opset); --portable also "
         "gives average pooling an explicit zero Pad and an exact divisor map", True),
    Rule("GC102", "ceil_mode pooling with a partial last window", ceil_partial,
         "The last window hangs over the padded input. TensorFlow/Keras have no ceil_mode (only "
         "'valid'/'same'), and for average pooling hosts disagree on its divisor: PyTorch divides "
         "by the positions inside the padded input, onnxruntime has divided by the kernel size "
         "or produced NaN/0 there.",
         ("https://github.com/microsoft/onnxruntime/issues/16203",
          "https://github.com/microsoft/onnxruntime/issues/16351",
          f"{ONNX_OPS}#AveragePool"),
         "--portable pads the overhang explicitly and pools in floor mode (average pooling: "
         "explicit zero Pad, AveragePool without pads, times an exact divisor map)", True),
    Rule("GC103", "average pooling over padding (count_include_pad)", avg_padding,
         "Whether padded positions count in the divisor: PyTorch AvgPool's default is "
         "count_include_pad=True, ONNX AveragePool's (and graphcnn's) is 0, Keras 'same' "
         "average pooling always excludes the padding; onnxruntime has used wrong pads for the "
         "divisor with asymmetric padding (fixed in #27375) and AveragePool-19 ignored the end "
         "padding with count_include_pad=1 (#24681).",
         ("https://pytorch.org/docs/stable/generated/torch.nn.AvgPool2d.html",
          f"{ONNX_OPS}#AveragePool",
          "https://github.com/microsoft/onnxruntime/pull/27375",
          "https://github.com/microsoft/onnxruntime/issues/24681"),
         "--portable pads with explicit zeros, pools without pads and multiplies by the exact "
         "divisor map, so no host interprets count_include_pad", True),
    Rule("GC104", "asymmetric 'same' padding", same_asymmetric,
         "An odd total padding cannot be split evenly. TensorFlow/Keras 'SAME', ONNX auto_pad "
         "SAME_UPPER and PyTorch padding='same' put the extra at the end; ONNX SAME_LOWER puts "
         "it at the beginning, and hand-written symmetric padding (k//2) differs; with stride > 1 "
         "TensorFlow's split also depends on the input length.",
         (f"{ONNX_OPS}#Conv", "https://github.com/tensorflow/tensorflow/issues/18213",
          "https://pytorch.org/docs/stable/generated/torch.nn.Conv2d.html"),
         "none needed: graphcnn writes explicit begin/end pads (never auto_pad); compare with "
         "frameworks padding the extra at the start only after padding explicitly", False),
    Rule("GC105", "nearest resize rounding and coordinate modes", nearest_resize,
         "Nearest Resize picks its source by a coordinate mode and a rounding mode: PyTorch "
         "'nearest' is asymmetric + floor, 'nearest-exact' and TF2 tf.image.resize half_pixel + "
         "round, ONNX's defaults half_pixel + round_prefer_floor. For integer factors all pick "
         "floor(o/scale), but hosts implementing some mode pairs only, or lowering all of them "
         "to one pattern, have shifted pixels.",
         ("https://github.com/onnx/onnx/issues/3816", "https://github.com/sonos/tract/pull/2554",
          "https://github.com/iree-org/iree/issues/24581", f"{ONNX_OPS}#Resize"),
         "--portable replaces the Resize by Reshape + Expand + Reshape (plain duplication, no "
         "coordinate or rounding mode)", True),
    Rule("GC106", "linear resize with align_corners", linear_align_corners,
         "align_corners=True (corner samples meet) is PyTorch's and ONNX's 'align_corners' mode, "
         "but TensorFlow 2's tf.image.resize and Keras UpSampling have no such option (half_pixel "
         "only), TF1 resize_bilinear defaulted to asymmetric, and converters that assume "
         "half_pixel or asymmetric give other values.",
         ("https://pytorch.org/docs/stable/generated/torch.nn.functional.interpolate.html",
          f"{ONNX_OPS}#Resize", "https://github.com/pytorch/TensorRT/pull/2790",
          "https://github.com/microsoft/onnxruntime/issues/28086"),
         "--portable writes the interpolation as a constant matrix product per axis (MatMul), "
         "which has no coordinate mode", True),
    Rule("GC107", "ConvTranspose output_padding", output_padding,
         "output_padding extends the output at the end; PyTorch and ONNX compute real values "
         "there where the end padding leaves them (not zeros), while converters have dropped it "
         "from the shape or the values, and with ONNX auto_pad its meaning is unclear.",
         ("https://github.com/pytorch/pytorch/issues/8816",
          "https://github.com/NVIDIA-AI-IOT/torch2trt/issues/734",
          "https://github.com/onnx/onnx/issues/4299", f"{ONNX_OPS}#ConvTranspose"),
         "--portable uses a ConvTranspose without output_padding (end pads reduced by it) and "
         "without bias, then a zero Pad for what is left and an Add of the bias", True),
    Rule("GC108", "max-pool index layout for unpooling", unpool_indices,
         "ONNX MaxPool Indices count over the flattened [N, C, *spatial] tensor (storage_order=1 "
         "makes the spatial part column-major); PyTorch's return_indices count within each "
         "(N, C) plane (= ONNX's mod H*W); TensorFlow max_pool_with_argmax counts "
         "(y*W + x)*C + c over NHWC, with the batch only if include_batch_in_index. Indices "
         "exchanged between frameworks must be converted.",
         (f"{ONNX_OPS}#MaxPool", "https://github.com/onnx/onnx/issues/2398",
          "https://github.com/pytorch/pytorch/pull/16455",
          "https://github.com/sonos/tract/pull/2860"),
         "none needed inside the model (pool and unpool agree); convert indices you feed in "
         "or read out", False),
]


def register_rule(rule: Rule) -> Rule:
    """Add a rule (an op's own portability concern, from the file that defines the op)."""
    if any(r.id == rule.id for r in RULES):
        raise ValueError(f"lint rule {rule.id} registered twice")
    RULES.append(rule)
    return rule


def unregister_rule(rule_id: str) -> None:
    RULES[:] = [r for r in RULES if r.id != rule_id]

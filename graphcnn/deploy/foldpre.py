"""`compile --fold-preprocess`: the recipe's normalisation inside the graph, so that a host
feeds uint8 pixels [N, C, H, W] (0..255, in the recipe's channel order) and needs to know no
mean or std. The host still resizes and crops as the metadata says.

The recipe maps a pixel p of channel c to n = p * a[c] + b[c], with a = (high - low) / 255 / std
and b = (low - mean) / std. When the input's consumer is a Conv with constant weights:
- the scale goes into the weights, W'[o, c] = W[o, c] * a[c]: exact wherever the conv reads;
- without padding the shift goes into the bias too, B'[o] = B[o] + sum W[o, c, k] * b[c];
- with zero padding it cannot: the padding is zeros of the normalised input, n = 0, where a
  folded bias would act as if it read pixel 0. Then the shift stays in front of the conv as an
  Add of b / a in pixel units (its zeros are n = 0 again: a * (p + b / a) = n).
Every other consumer of the input gets the explicit Cast, Mul and Add.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import CompileError
from ..lower.metadata import FOLDED, image_props
from .preprocess import set_metadata


def fold_preprocess(model: onnx.ModelProto, recipe) -> tuple[onnx.ModelProto, str]:
    """Changes `model` in place (it may hold every weight: no copy) and returns it with a note
    saying how the normalisation was placed."""
    graph = model.graph
    x = graph.input[0]
    float_type = _check_input(x, recipe)
    scale, shift = _affine(recipe)
    cast = _fresh(graph, f"{x.name}.float")
    front = [helper.make_node("Cast", [x.name], [cast], name=cast, to=float_type)]
    consumers = [n for n in graph.node if x.name in n.input]
    conv = next((n for n in consumers if _foldable(graph, n, x.name)), None)
    done = _fold_conv(graph, conv, cast, scale, shift, float_type, front) if conv else ""
    explicit = [n for n in consumers if n is not conv]
    if explicit:
        normal = _explicit(graph, cast, scale, shift, float_type, front)
        for node in explicit:
            _rename_input(node, x.name, normal)
        done = "; ".join(d for d in (done, "Mul and Add in front of " + ", ".join(
            f"'{n.name or n.output[0]}'" for n in explicit)) if d)
    nodes = front + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    x.type.tensor_type.elem_type = TensorProto.UINT8
    _denote_image(x)
    set_metadata(model, {FOLDED: "true", **image_props(recipe.channels, recipe.range, True)})
    return model, f"preprocessing folded: input '{x.name}' takes uint8 pixels; {done}"


def _check_input(x, recipe) -> int:
    if recipe is None:
        raise CompileError("--fold-preprocess needs the spec's preprocess: section")
    tensor = x.type.tensor_type
    if tensor.elem_type == TensorProto.UINT8:
        raise CompileError(f"input '{x.name}' already takes uint8 pixels (folded before)")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if len(dims) != 4 or dims[1] != recipe.channel_count:
        raise CompileError(f"--fold-preprocess needs an image input [N, {recipe.channel_count}, H, W] "
                           f"({recipe.channels})", received=f"'{x.name}' {dims}")
    return tensor.elem_type


def _affine(recipe) -> tuple[np.ndarray, np.ndarray]:
    """Per channel a, b of n = p * a + b (float64)."""
    c = recipe.channel_count
    low, high = recipe.range
    mean = np.asarray(recipe.mean if recipe.mean is not None else [0.0] * c, np.float64)
    std = np.asarray(recipe.std if recipe.std is not None else [1.0] * c, np.float64)
    return (high - low) / 255.0 / std, (low - mean) / std


def _foldable(graph, node, x_name: str) -> bool:
    """A Conv reading the input as its data only, with weights (and bias) that are constants
    no other node reads: they can be changed in place."""
    if node.op_type != "Conv" or node.input[0] != x_name or x_name in node.input[1:]:
        return False
    inits = {t.name for t in graph.initializer}
    params = [name for name in node.input[1:] if name]
    uses = [name for n in graph.node for name in n.input]
    return all(p in inits and uses.count(p) == 1 for p in params)


def _fold_conv(graph, conv, cast: str, scale, shift, float_type: int, front: list) -> str:
    weight = _initializer(graph, conv.input[1])
    stored = numpy_helper.to_array(weight)
    w = stored.astype(np.float64)
    per_weight = _per_weight(conv, w.shape, len(scale))  # input channel of each W[o, i]
    folded_w = w * scale[per_weight].reshape(*w.shape[:2], *[1] * (w.ndim - 2))
    name = conv.name or conv.output[0]
    if _pads(conv):
        shifted = _fresh(graph, f"{cast}.shifted")
        front.append(_affine_node(graph, "Add", cast, shift / scale, shifted, float_type))
        _rename_input(conv, conv.input[0], shifted)
        how = (f"scale folded into the weights of conv '{name}', the shift an Add in front of "
               "it (the conv pads with zeros of the normalised input)")
    else:
        _rename_input(conv, conv.input[0], cast)
        taps = (w * shift[per_weight].reshape(*w.shape[:2], *[1] * (w.ndim - 2)))
        bias = taps.reshape(w.shape[0], -1).sum(axis=1)
        _set_bias(graph, conv, bias, weight.data_type)
        how = f"scale and shift folded into conv '{name}' (weights and bias; it does not pad)"
    weight.CopyFrom(numpy_helper.from_array(folded_w.astype(stored.dtype), weight.name))
    return how


def _per_weight(conv, shape, channels: int) -> np.ndarray:
    """[O, C/groups] indices of the input channel each weight slice reads."""
    groups = next((a.i for a in conv.attribute if a.name == "group"), 1)
    out_per_group = shape[0] // groups
    group_of = np.arange(shape[0]) // out_per_group
    index = group_of[:, None] * shape[1] + np.arange(shape[1])[None, :]
    if index.max() >= channels:
        raise CompileError(f"conv '{conv.name}' reads more channels than the input has")
    return index


def _pads(conv) -> bool:
    attrs = {a.name: a for a in conv.attribute}
    auto = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return True
    return auto == "NOTSET" and "pads" in attrs and any(attrs["pads"].ints)


def _set_bias(graph, conv, extra: np.ndarray, data_type: int) -> None:
    dtype = helper.tensor_dtype_to_np_dtype(data_type)
    if len(conv.input) > 2 and conv.input[2]:
        tensor = _initializer(graph, conv.input[2])
        bias = numpy_helper.to_array(tensor).astype(np.float64) + extra
        tensor.CopyFrom(numpy_helper.from_array(bias.astype(dtype), tensor.name))
        return
    name = _fresh(graph, f"{conv.name or conv.output[0]}.bias")
    graph.initializer.append(numpy_helper.from_array(extra.astype(dtype), name))
    while len(conv.input) < 3:
        conv.input.append("")
    conv.input[2] = name


def _explicit(graph, cast: str, scale, shift, float_type: int, front: list) -> str:
    scaled, normal = _fresh(graph, f"{cast}.scaled"), _fresh(graph, f"{cast}.normalised")
    front.append(_affine_node(graph, "Mul", cast, scale, scaled, float_type))
    front.append(_affine_node(graph, "Add", scaled, shift, normal, float_type))
    return normal


def _affine_node(graph, op: str, source: str, values: np.ndarray, result: str, float_type: int):
    """`op` of `source` and a per-channel constant [1, C, 1, 1] (an initializer)."""
    dtype = helper.tensor_dtype_to_np_dtype(float_type)
    name = _fresh(graph, f"{result}.{op.lower()}")
    graph.initializer.append(numpy_helper.from_array(
        values.reshape(1, -1, 1, 1).astype(dtype), name))
    return helper.make_node(op, [source, name], [result], name=result)


def _initializer(graph, name: str):
    return next(t for t in graph.initializer if t.name == name)


def _rename_input(node, old: str, new: str) -> None:
    for i, name in enumerate(node.input):
        if name == old:
            node.input[i] = new


def _fresh(graph, name: str) -> str:
    """`name`, or with a number appended, so that it names no value of the graph yet."""
    taken = ({t.name for t in graph.initializer} | {v.name for v in graph.input}
             | {o for n in graph.node for o in n.output})
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}.{i}", i + 1
    return candidate


def _denote_image(x) -> None:
    """ONNX's type denotation of an image input, to which the Image.* metadata applies."""
    x.type.denotation = "IMAGE"
    for dim, meaning in zip(x.type.tensor_type.shape.dim,
                            ("DATA_BATCH", "DATA_CHANNEL", "DATA_FEATURE", "DATA_FEATURE")):
        dim.denotation = meaning

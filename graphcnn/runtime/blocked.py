"""onnxruntime's blocked-layout (NCHWc) convolutions for models whose conv weights are inputs.

onnxruntime's CPU provider runs a 2-D Conv fastest in its NCHWc layout (channels in blocks of
8 or 16, the block size its kernels were built for on this CPU), but its optimizer moves a Conv
there only when the weight is a constant, because the filter has to be reordered. In the
training step the weights are inputs, so every conv ran in plain NCHW (im2col + GEMM).
`blocked_convs` rewrites such a Conv as onnxruntime's own optimizer would (ReorderInput ->
com.microsoft.nchwc Conv -> ReorderOutput), with the filter reordered at run time (a Reshape +
Transpose, or a Gather where the channels are padded up to the block).

Nothing about the layout is written down here: for each conv signature, a probe model whose
constant weight holds 1, 2, 3, ... is handed to onnxruntime's optimizer, and the optimized
model's reordered weight then says where each weight element goes (0 marks padding). The
rewritten conv is checked against the plain Conv on random data before it is used; a signature
the optimizer leaves alone (1-D or 3-D convs, a CPU without NCHWc kernels, float64) or that
fails the check keeps its plain Conv. The rewritten model needs onnxruntime's CPU provider:
it is built for a session, never written to a file the user gets.
"""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..lower.inference import weightless_copy

BLOCKED_DOMAIN = "com.microsoft.nchwc"
SWITCH = "GRAPHCNN_NCHWC"  # "0" turns the rewrite off (to compare numerics or timings)
EXACT_INDEX = 2 ** 24      # float32 holds every integer up to this exactly


def enabled() -> bool:
    return os.environ.get(SWITCH, "1") != "0"


def blocked_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose float32 2-D convs with non-constant weights run in NCHWc; the
    model itself when none can."""
    try:  # data_prop: gradients broadcast by an Expand of a computed shape get their sizes
        types = value_types(onnx.shape_inference.infer_shapes(weightless_copy(model), data_prop=True))
    except Exception:  # noqa: BLE001 - a model onnx cannot type keeps its plain convs
        return model
    constants = {t.name for t in model.graph.initializer}
    nodes, extra, rewritten = [], [], 0
    for node in model.graph.node:
        plan = plan_for(node, types, constants)
        if plan is None:
            nodes.append(node)
            continue
        rewritten += 1
        # under the conv's own name: a failure there still names its spec node (run_failure)
        new_nodes, new_constants = splice(node, plan, f"{node.name}/nchwc{rewritten}/")
        nodes.extend(new_nodes)
        extra.extend(new_constants)
    if not rewritten:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(extra)
    if not any(o.domain == BLOCKED_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(BLOCKED_DOMAIN, 1))
    return out


def value_types(model: onnx.ModelProto) -> dict[str, tuple[int, list[int]]]:
    """Element type and dims (0 where unknown) of every value shape inference could type."""
    found = {}
    graph = model.graph
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            found[v.name] = (t.elem_type, [d.dim_value for d in t.shape.dim])
    for t in graph.initializer:
        found[t.name] = (t.data_type, list(t.dims))
    return found


def plan_for(node, types, constants):
    """The probe's result for this Conv, or None when it stays as it is."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or node.input[1] in constants:
        return None
    x, w = types.get(node.input[0]), types.get(node.input[1])
    if x is None or w is None or x[0] != TensorProto.FLOAT or len(x[1]) != 4:
        return None
    if 0 in x[1][1:] or 0 in w[1]:
        return None
    has_bias = len(node.input) > 2 and bool(node.input[2])
    attrs = frozen_attrs(node)
    return probe((x[1][1], *probe_sizes(x[1][2:], w[1][2:], dict(attrs))), tuple(w[1]), has_bias, attrs)


def probe_sizes(sizes, kernel, attrs) -> tuple[int, ...]:
    """A small image for the probe: the NCHWc form depends on channels and conv attributes,
    not on the image size, and a U-Net-sized probe took seconds per conv."""
    strides = attrs.get("strides", (1,) * len(kernel))
    dilations = attrs.get("dilations", (1,) * len(kernel))
    return tuple(min(n, d * (k - 1) + 1 + 2 * s)
                 for n, k, s, d in zip(sizes, kernel, strides, dilations))


def frozen_attrs(node) -> tuple:
    """The node's attributes as a hashable tuple of (name, value) pairs (lists as tuples)."""
    pairs = []
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        pairs.append((a.name, tuple(value) if isinstance(value, list) else value))
    return tuple(sorted(pairs))


@lru_cache(maxsize=None)
def probe(x_shape, w_shape, has_bias, attrs):
    """onnxruntime's NCHWc form of one conv signature, or None: the optimized probe's nodes and,
    per reordered constant, (source "w" or "b", its shape, the Reshape + Transpose that makes it
    or None, the element map for a Gather or None)."""
    if int(np.prod(w_shape)) >= EXACT_INDEX:
        return None
    try:
        optimized = optimize(probe_model(x_shape, w_shape, has_bias, attrs))
    except Exception:  # noqa: BLE001 - an onnxruntime that cannot save its optimized model
        return None
    if not any(n.domain == BLOCKED_DOMAIN and n.op_type == "Conv" for n in optimized.graph.node):
        return None
    maps = {}
    for t in optimized.graph.initializer:
        values = numpy_helper.to_array(t)
        source = "w" if values.ndim == len(w_shape) else "b" if values.ndim == 1 and has_bias else None
        if source is None or not is_placement(values, w_shape[0] if source == "b" else np.prod(w_shape)):
            return None
        index = values.astype(np.int64)
        transpose = as_transpose(index, w_shape) if source == "w" else None
        # the map itself is kept only for a Gather (a U-Net filter's is 75 MB)
        maps[t.name] = (source, index.shape, transpose, None if transpose else index)
    nodes = [standalone(n) for n in optimized.graph.node]  # not the probe's weights
    for plan in ((nodes, by_reorder_input(maps, len(w_shape))), (nodes, maps)):
        if agrees(plan, x_shape, w_shape, has_bias, attrs):
            return plan
    return None


def by_reorder_input(maps: dict, rank: int) -> dict:
    """The maps with each 2-D filter transpose done by onnxruntime's own ReorderInput where
    the probe's layout is the one it writes: 3-4x faster than the 6-D Transpose (a
    [512, 512, 3, 3] filter: 6.2 against 16.9 ms; 0.58 against 2.2 ms at 128 channels), which
    onnxruntime runs element by element. `agrees` checks the result (the platform's block
    size must be the layout's); the Transpose stays where it does not agree."""
    if rank != 4:
        return maps
    return {name: (source, shape, transpose + ("reorder_input",) if transpose else None, index)
            for name, (source, shape, transpose, index) in maps.items()}


def standalone(node: onnx.NodeProto) -> onnx.NodeProto:
    """A copy that does not keep its model (and the model's weights) alive in the cache."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def probe_model(x_shape, w_shape, has_bias, attrs) -> onnx.ModelProto:
    """One Conv with constant weight 1, 2, 3, ... (and bias 1, 2, ...), batch 1."""
    weight = np.arange(1, np.prod(w_shape) + 1, dtype=np.float32).reshape(w_shape)
    constants = [numpy_helper.from_array(weight, "w")]
    if has_bias:
        constants.append(numpy_helper.from_array(np.arange(1, w_shape[0] + 1, dtype=np.float32), "b"))
    conv = helper.make_node("Conv", ["x", "w"] + (["b"] if has_bias else []), ["y"], **dict(attrs))
    return conv_model([conv], [float_input("x", [1, *x_shape])], constants)


def conv_model(nodes, inputs, constants=()) -> onnx.ModelProto:
    """A small model computing float `y` (probes and checks; the nchwc domain is declared
    whether used or not)."""
    graph = helper.make_graph(nodes, "probe", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              list(constants))
    return helper.make_model(graph, ir_version=7, opset_imports=[
        helper.make_opsetid("", 11), helper.make_opsetid(BLOCKED_DOMAIN, 1)])


def float_input(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def optimize(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as onnxruntime's CPU optimizer leaves it (all levels, NCHWc included)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        options.log_severity_level = 3  # its warning that the file is CPU-specific: we know
        ort.InferenceSession(model.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def is_placement(values: np.ndarray, count: int) -> bool:
    """Every source element 1..count placed exactly once; the rest is padding (0)."""
    if not np.array_equal(values, np.round(values)) or values.min() < 0:
        return False
    counts = np.bincount(values.astype(np.int64).ravel(), minlength=count + 1)
    return len(counts) == count + 1 and bool(np.all(counts[1:] == 1))


def splice(node, plan, prefix: str):
    """The probe's nodes, wired to `node`'s inputs and output; each reordered constant is made
    from the live weight (or bias) at run time."""
    nodes, maps = plan
    rename = {"x": node.input[0], "y": node.output[0]}
    sources = {"w": node.input[1], "b": node.input[2] if len(node.input) > 2 else ""}
    built, constants = [], []
    for name, (source, shape, transpose, index) in maps.items():
        rename[name] = prefix + name
        built += reordered(sources[source], shape, transpose, index, prefix + name, constants)
    for original in nodes:
        copy = standalone(original)
        copy.name = prefix + original.name
        copy.input[:] = [rename.get(v, prefix + v) if v else v for v in original.input]
        copy.output[:] = [rename.get(v, prefix + v) for v in original.output]
        built.append(copy)
    return built, constants


def reordered(source: str, shape, transpose, index, name: str, constants: list) -> list:
    """Nodes computing `name`, the source laid out as the probe's map says: a Reshape +
    Transpose when as_transpose found one, else the element Gather."""
    if transpose is None:
        nodes = gathered(source, index, name, constants)
    elif transpose[-1] == "reorder_input":
        nodes = reordered_inputs(source, transpose[0], name, constants)
    else:
        view, perm = transpose[:2]
        constants.append(numpy_helper.from_array(np.array(view, np.int64), name + "/view"))
        nodes = [helper.make_node("Reshape", [source, name + "/view"], [name + "/split"]),
                 helper.make_node("Transpose", [name + "/split"], [name + "/moved"], perm=list(perm))]
    constants.append(numpy_helper.from_array(np.array(shape, np.int64), name + "/shape"))
    return nodes + [helper.make_node("Reshape", [nodes[-1].output[0], name + "/shape"], [name])]


def reordered_inputs(source: str, view, name: str, constants: list) -> list:
    """OIHW -> O/b I/b H W bi bo as two ReorderInputs (channels into blocks of b, innermost):
    the first blocks I, the second, over the view [O/b, b, I*H*W, 1], blocks O; for
    O/b I H W bo (view [O/b, b, I, H, W]) only the second."""
    nodes, current = [], source
    if len(view) == 6:  # [O/b, b, I/b, b, H, W]: I blocked first
        nodes.append(helper.make_node("ReorderInput", [source], [name + "/in_blocks"],
                                      domain=BLOCKED_DOMAIN))
        current = name + "/in_blocks"
    rows = [view[0], view[1], int(np.prod(view[2:])), 1]
    constants.append(numpy_helper.from_array(np.array(rows, np.int64), name + "/rows"))
    return nodes + [helper.make_node("Reshape", [current, name + "/rows"], [name + "/by_out"]),
                    helper.make_node("ReorderInput", [name + "/by_out"], [name + "/moved"],
                                     domain=BLOCKED_DOMAIN)]


def gathered(source: str, index: np.ndarray, name: str, constants: list) -> list:
    """Element i of the result is element index[i] - 1 of the flattened source (0: a zero)."""
    constants.append(numpy_helper.from_array(index.reshape(-1), name + "/index"))
    zero, flat = name + "/zero", name + "/flat_shape"
    constants += [numpy_helper.from_array(np.zeros(1, np.float32), zero),
                  numpy_helper.from_array(np.array([-1], np.int64), flat)]
    return [helper.make_node("Reshape", [source, flat], [name + "/flat"]),
            helper.make_node("Concat", [zero, name + "/flat"], [name + "/padded"], axis=0),
            helper.make_node("Gather", [name + "/padded", name + "/index"], [name + "/taken"], axis=0)]


def as_transpose(index: np.ndarray, w_shape) -> tuple[list[int], list[int]] | None:
    """The reorder as a Reshape + Transpose when it is one of the blocked filter layouts
    onnxruntime uses (OIHW -> O/b I/b H W bi bo, or O/b I H W bo for a plain-layout input),
    checked against the probe's map; a Transpose is 5-10x faster than the element Gather."""
    out_c, in_c, *kernel = w_shape
    count, dims = int(np.prod(w_shape)), len(kernel)
    if index.size != count:  # channels padded up to the block: only the Gather does that
        return None
    flat = index.ravel()
    sample = np.linspace(0, count - 1, num=min(count, 257)).astype(np.int64)
    for b in (4, 8, 16, 32, 64):
        forms = []
        if out_c % b == 0 and in_c % b == 0:
            forms.append(([out_c // b, b, in_c // b, b, *kernel], [0, 2, *range(4, 4 + dims), 3, 1]))
        if out_c % b == 0:
            forms.append(([out_c // b, b, in_c, *kernel], [0, 2, *range(3, 3 + dims), 1]))
        for view, perm in forms:
            if transposed_at(view, perm, sample) == list(flat[sample]) and np.array_equal(
                    np.arange(1, count + 1).reshape(view).transpose(perm).reshape(index.shape), index):
                return view, perm
    return None


def transposed_at(view, perm, positions) -> list[int]:
    """Entries at `positions` of arange(1, n + 1).reshape(view).transpose(perm), flattened:
    a quick test before building the whole array (a U-Net filter has 9.4 million)."""
    moved_shape = [view[p] for p in perm]
    coords = np.unravel_index(positions, moved_shape)
    source = [None] * len(view)
    for axis, c in zip(perm, coords):
        source[axis] = c
    return list(np.ravel_multi_index(source, view) + 1)


def agrees(plan, x_shape, w_shape, has_bias, attrs) -> bool:
    """The spliced conv against the plain one, on random data (batch 2)."""
    import onnxruntime as ort

    names = ["x", "w"] + (["b"] if has_bias else [])
    conv = helper.make_node("Conv", names, ["y"], **dict(attrs))
    shapes = {"x": [2, *x_shape], "w": list(w_shape), "b": [w_shape[0]]}
    inputs = [float_input(n, shapes[n]) for n in names]
    nodes, constants = splice(conv, plan, "probe/")
    plain, fast = conv_model([conv], inputs), conv_model(nodes, inputs, constants)
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal(shapes[n]).astype(np.float32) for n in names}
    try:
        want, got = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                     .run(None, feeds)[0] for m in (plain, fast))
    except Exception:  # an onnxruntime that cannot load or run its own NCHWc form
        return False
    return want.shape == got.shape and bool(
        np.abs(want - got).max() <= 1e-4 * max(float(np.abs(want).max()), 1.0))


def for_providers(model: onnx.ModelProto, providers: list[str]) -> onnx.ModelProto:
    """The model to hand a session with these providers: blocked convs on the CPU provider."""
    if providers[0] == "CPUExecutionProvider" and enabled():
        return blocked_convs(model)
    return model

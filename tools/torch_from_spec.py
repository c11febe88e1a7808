"""Build the PyTorch module a graphcnn spec describes (for benchmarks; torch is optional).

The module runs the checked graph node by node; each op maps to the torch layer with the same
parameters and padding rule. Used by bench_vs_torch.py to export the same network with
torch.onnx.export and to time PyTorch eager.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from graphcnn.graph import CheckedGraph


class SpecModule(nn.Module):
    def __init__(self, checked: CheckedGraph):
        super().__init__()
        self.order = [(n.id, list(n.inputs)) for n in checked.nodes]
        self.outputs = list(checked.outputs)
        self.inputs = list(checked.inputs)
        self.layers = nn.ModuleDict({key(n.id): build(n) for n in checked.nodes})

    def forward(self, *xs):
        values = dict(zip(self.inputs, xs))
        for node_id, inputs in self.order:
            values[node_id] = self.layers[key(node_id)](*[values[i] for i in inputs])
        out = [values[o] for o in self.outputs]
        return out[0] if len(out) == 1 else tuple(out)


def key(node_id: str) -> str:
    return node_id.replace(".", "__")


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


class PadThen(nn.Module):
    """Explicit (possibly asymmetric) padding, then the layer with no padding of its own."""

    def __init__(self, pads, layer, mode="constant"):
        super().__init__()
        self.pads = [p for pair in reversed(pads) for p in pair]
        self.layer, self.mode = layer, mode

    def forward(self, x):
        return self.layer(F.pad(x, self.pads, mode=self.mode) if any(self.pads) else x)


class Residual(nn.Module):
    def __init__(self, node):
        super().__init__()
        layer = node.layer
        self.project = None
        if layer.projection:
            main, skip = node.in_shapes[0], node.in_shapes[-1]
            conv = CONV[len(main) - 1](skip[0], main[0], 1, stride=layer.strides(main, skip), bias=False)
            self.project = nn.Sequential(conv, BN[len(main) - 1](main[0])) \
                if layer.projection == "conv_bn" else conv

    def forward(self, *xs):
        xs = list(xs)
        if self.project is not None:
            xs[-1] = self.project(xs[-1])
        return sum(xs[1:], xs[0])


CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
AVGPOOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def conv(node):
    layer, shape = node.layer, node.in_shapes[0]
    k, s, d = layer.geometry()
    pads = layer.pads(shape)
    symmetric = all(b == e for b, e in pads) and layer.padding != "circular"
    module = CONV[layer.dims](shape[0], layer.channels, k, stride=s, dilation=d,
                              groups=layer.groups, bias=layer.bias,
                              padding=[b for b, _ in pads] if symmetric else 0)
    mode = "circular" if layer.padding == "circular" else "constant"
    return module if symmetric else PadThen(pads, module, mode)


def pool(node):
    layer, shape = node.layer, node.in_shapes[0]
    k, s, _ = layer.geometry()
    pads = layer.pads(shape)
    if all(b == e for b, e in pads):
        sym = [b for b, _ in pads]
        if layer.op_name.startswith("max"):
            return MAXPOOL[layer.dims](k, s, sym, ceil_mode=layer.ceil_mode)
        return AVGPOOL[layer.dims](k, s, sym, ceil_mode=layer.ceil_mode,
                                   count_include_pad=layer.count_include_pad)
    raise ValueError(f"{node.id}: torch pooling has no asymmetric padding; "
                     "this spec cannot be benchmarked against torch")


def convt(node):
    layer, shape = node.layer, node.in_shapes[0]
    k = layer.geometry()[0]
    return CONVT[layer.dims](shape[0], layer.channels, k, stride=layer.stride,
                             output_padding=layer.output_padding, dilation=layer.dilation,
                             groups=layer.groups, bias=layer.bias)


def crop(node):
    target = node.in_shapes[1][1:]

    def center(x, like=None):
        slices = [slice(None), slice(None)]
        for axis, t in enumerate(target):
            start = (x.shape[axis + 2] - t) // 2
            slices.append(slice(start, start + t))
        return x[tuple(slices)]
    return Fn(center)


BUILDERS = {
    **{f"conv{d}d": conv for d in (1, 2, 3)},
    **{f"{kind}pool{d}d": pool for kind in ("max", "avg") for d in (1, 2, 3)},
    **{f"conv_transpose{d}d": convt for d in (1, 2, 3)},
    **{f"batchnorm{d}d": (lambda d: lambda n: BN[d](n.in_shapes[0][0]))(d) for d in (1, 2, 3)},
    "linear": lambda n: nn.Linear(n.in_shapes[0][0], n.layer.features, bias=n.layer.bias),
    "flatten": lambda n: nn.Flatten(),
    "relu": lambda n: nn.ReLU(),
    "leaky_relu": lambda n: nn.LeakyReLU(n.layer.alpha),
    "sigmoid": lambda n: nn.Sigmoid(),
    "tanh": lambda n: nn.Tanh(),
    "softmax": lambda n: nn.Softmax(dim=1),
    "dropout": lambda n: nn.Dropout(n.layer.rate),
    "identity": lambda n: nn.Identity(),
    "global_avgpool": lambda n: Fn(lambda x: x.mean(dim=tuple(range(2, x.dim())))),
    "global_maxpool": lambda n: Fn(lambda x: x.amax(dim=tuple(range(2, x.dim())))),
    "add": Residual,
    "concat": lambda n: Fn(lambda *xs: torch.cat(xs, dim=1)),
    "crop": crop,
}


def build(node) -> nn.Module:
    if node.op not in BUILDERS:
        raise ValueError(f"{node.id}: no torch builder for op {node.op!r} (benchmark tool only)")
    return BUILDERS[node.op](node)


def torch_model(checked: CheckedGraph) -> nn.Module:
    """The module in eval mode; parameter count equal to graphcnn's (asserted by the caller)."""
    return SpecModule(checked).eval()

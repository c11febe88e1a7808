"""A checked network as a readable PyTorch module (`graphcnn export-torch`).

The file holds one class per block (shared by the block's instances), the network's class
named after the spec, and the few helpers some ops need. Attribute names are the spec ids, so
the module's state_dict keys are the names `graphcnn export-weights` writes
(`stage1.block0.conv1.weight`). Each op says how it is written in PyTorch (Layer.torch, next
to its ONNX lowering); this package only arranges the code. It writes text and never imports
torch.
"""
from __future__ import annotations

import textwrap

from ...layers import fmt_shape
from ...spec.expand import flatten
from ...spec.model import BlockCall
from ...version import __version__
from .classes import BlockClasses, indent
from .code import Namer, camel, doc_text
from .emit import Helpers
from .scopes import Scope, build, node_reads, reader_map
from .writer import Writer

__all__ = ["torch_code"]


def torch_code(checked, source: str = "<spec>") -> str:
    """The Python source of the network's module; `source` names the spec in the header.
    Nodes that reach no output are left out, as a compiled model leaves them out."""
    spec = checked.spec
    flat = flatten(spec)
    checked = checked.reaching_outputs()
    root = build(checked, flat.instances)
    helpers = Helpers()
    wanted = {r for n in checked.nodes for r in node_reads(n) if isinstance(r, tuple)}
    top = {n.id: n for n in spec.nodes if isinstance(n, BlockCall)}
    writer = Writer(checked, helpers, wanted, top)
    writer.readers = reader_map(checked)
    class_names = Namer()
    network = class_names(camel(spec.name))
    writer.classes = classes = BlockClasses(writer, instances_by_block(root), class_names)
    rendered = writer.render(root)
    parts = [header(source, spec.name, network), *helpers.texts.values(), *classes.texts,
             network_text(network, checked, rendered)]
    return "\n\n\n".join(parts) + "\n"


def instances_by_block(scope: Scope, out: dict | None = None) -> dict[str, list[Scope]]:
    """Every instance scope, by block name, in spec order."""
    out = {} if out is None else out
    for call in scope.calls:
        for inner in call.instances:
            out.setdefault(inner.instance.block, []).append(inner)
            instances_by_block(inner, out)
    return out


def header(source: str, name: str, network: str) -> str:
    name, source = doc_text(name), doc_text(source)
    return f'''"""PyTorch module of the graphcnn spec `{name}` ({source}).

Written by `graphcnn export-torch` (graphcnn {__version__}). Attribute names are the spec's
node ids, so the state_dict keys are the names `graphcnn export-weights` writes:

    import numpy as np, torch
    model = {network}()
    model.load_state_dict({{k: torch.from_numpy(v) for k, v in np.load("W.npz").items()}})
    model.eval()
"""
import math

import torch
import torch.nn.functional as F
from torch import nn'''


def network_text(name: str, checked, rendered) -> str:
    ins = ", ".join(f"{k} {fmt_shape(s)}" for k, s in checked.inputs.items())
    outs = ", ".join(f"{k} {fmt_shape(checked.shape_of(k))}" for k in checked.outputs)
    doc = textwrap.fill(f'"""{doc_text(f"{checked.name}: {ins} -> {outs}.")}"""', 92,
                        initial_indent="    ", subsequent_indent="    ")
    init = [line.text() for line in rendered.init]
    forward = [line.text() for line in rendered.forward]
    body = [f"class {name}(nn.Module):",
            doc, "",
            "    def __init__(self):", "        super().__init__()",
            *indent(init, 8), "",
            f"    def forward({', '.join(['self', *rendered.params])}):", *indent(forward, 8)]
    return "\n".join(body)

"""One ONNX model for a whole training step: forward (training mode), loss, backward and the
optimizer update, run by a stock onnxruntime InferenceSession.

Inputs: the network input [B, ...], `labels` (cross_entropy: int64 [B] for class scores
[B, C], [B, *S] for per-pixel scores [B, C, *S]), `mask` [B] (1 real row, 0 padding), `lr` (float
scalar), `step` (int64 scalar, 1-based: the optimizer's step, for Adam's bias correction; an
fp16 step skipped by an overflow does not count), then every carried tensor:
trainable parameters (`conv1.weight`) and state (optimizer moments `conv1.weight.m`, batchnorm
running statistics `bn1.running_mean`). Outputs: `loss` (mean over the real rows' targets), `correct`
(classification: int64 count of counted targets whose argmax is the label), `counted` (int64:
how many targets the loss averaged, when per-pixel targets or an ignore_index make that differ
from the real rows) and `<name>.new` for every carried name, to feed back as `<name>` on the
next step. Under `precision: fp16` the step also carries the loss scale (`amp.scale`,
`amp.good`, train/loss_scale.py) and outputs `skipped` (int64: 1 when an overflow left the
parameters unchanged); fp16 and bf16 run the layers' compute in half where the provider can
(train/precision.py).
Dropout masks in training are a deterministic function of `step`, the node and the element
(layers/activation.py), so a run is reproducible on any host and across a resume.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..version import __version__
from ..errors import CompileError
from ..graph import CheckedGraph, Limits
from ..layers.base import product
from ..lower.inference import make_model
from ..lower.initial_values import initial_value
from ..lower.opset import choose_opset
from . import loss_scale, losses
from .autodiff import TrainEmitter, backward, forward
from .freeze import frozen_ids
from .in_place import gate_late_readers, in_place_names
from .optim import OptimConfig, update
from .precision import PrecisionReport, check_precision, to_half


@dataclass
class TrainingStep:
    model: onnx.ModelProto
    batch: int
    data_input: str
    label_input: str = "labels"
    mask_input: str = "mask"
    lr_input: str = "lr"
    step_input: str = "step"
    params: list[str] = field(default_factory=list)
    state: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    loss: str = "cross_entropy"
    optimizer: str = "sgd"
    precision: str = "fp32"
    report: PrecisionReport | None = None  # what ran in half (None: fp32)
    in_place: list[str] = field(default_factory=list)  # carried names updated in place

    @property
    def carried(self) -> list[str]:
        return self.params + self.state

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every model input's shape (fixed: the batch is compiled in)."""
        return {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim)
                for i in self.model.graph.input}


def build_training_step(checked: CheckedGraph, *, batch: int, loss: str = "cross_entropy",
                        optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0,
                        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                        ignore_index: int | None = None, opset: int | None = None,
                        label_smoothing: float = 0.0, clip_norm: float | None = None,
                        no_decay_norm_bias: bool = False, freeze=(), precision: str = "fp32",
                        loss_scale_window: int = 2000, provider: str = "cpu") -> TrainingStep:
    """The step model. `label_smoothing` (cross_entropy, as torch's), `clip_norm` (the global
    L2 norm of the gradients, as torch's clip_grad_norm_, before the optimizer adds weight
    decay), `no_decay_norm_bias` (no weight decay on one-axis tensors), `freeze` (node id
    patterns kept fixed, train/freeze.py), `precision` (fp32, bf16 or fp16: the layers'
    compute in half where `provider` has the kernels; fp16 with dynamic loss scaling whose
    scale doubles after `loss_scale_window` good steps)."""
    cfg = OptimConfig(optimizer, momentum, weight_decay, tuple(betas), eps)
    cfg.validate()
    check_precision(precision)
    check_batch(checked, batch)
    if len(checked.inputs) != 1:
        raise CompileError("training needs a network with exactly one input",
                           received=", ".join(checked.inputs))
    data = next(iter(checked.inputs))
    checked = checked.reaching_outputs()  # layers the loss cannot see are not trained
    frozen = frozen_ids(checked, freeze)
    g = TrainEmitter(mask="mask", step="step")
    forward(g, checked, frozen)
    values = losses.build_loss(g, checked, loss, "labels", ignore_index, label_smoothing)
    scaled = precision == "fp16"  # bf16 has fp32's exponent range: no loss scaling
    seeds = loss_scale.scale_seeds(g, values.seeds) if scaled else values.seeds
    grads = backward(g, checked, seeds, frozen)
    if scaled:
        grads, finite = loss_scale.unscale(g, grads)
    if clip_norm is not None:
        grads = clip_by_norm(g, grads, clip_norm)
    decay = (lambda param: len(param.shape) > 1) if no_decay_norm_bias else (lambda param: True)
    params, state, new = carry_updates(g, checked, cfg, grads, frozen, decay)
    metrics = {"loss": values.loss, "correct": values.correct, "counted": values.counted}
    if scaled:
        state, new, metrics["skipped"] = scaled_updates(g, checked, params, state, new, finite,
                                                        loss_scale_window)
    outputs = {**{k: v for k, v in metrics.items() if v is not None},
               **{f"{n}.new": new[n] for n in params + state}}
    model = assemble(g, checked, batch, data, loss, params + state, outputs, opset)
    model, report = to_half(model, checked, precision, provider)
    return TrainingStep(model, batch, data, params=params, state=state, outputs=list(outputs),
                        loss=loss, optimizer=optimizer, precision=precision,
                        report=report if precision != "fp32" else None,
                        in_place=in_place_names(model.graph.node, params + state))


def scaled_updates(g: TrainEmitter, checked: CheckedGraph, params: list[str], state: list[str],
                   new: dict[str, str], finite: str, window: int):
    """(state with the loss scale's, the new values with parameters and optimizer state kept
    on an overflow, the `skipped` output) for fp16 (train/loss_scale.py)."""
    taken = set(params + state) & set(loss_scale.STATE)
    if taken:
        raise CompileError("the spec's parameters are named like the loss scale's state",
                           received=", ".join(sorted(taken)))
    running = {f"{n.id}.{p}" for n in checked.nodes for p, v in n.params.items() if not v.trainable}
    new = loss_scale.keep_if_skipped(g, new, [n for n in params + state if n not in running],
                                     finite)
    scale, skipped = loss_scale.next_scale(g, finite, window)
    return state + list(loss_scale.STATE), {**new, **scale}, skipped


def check_batch(checked: CheckedGraph, batch: int) -> None:
    """A step holds `batch` rows of every layer output: the largest times the batch stays
    within the tensor limit (graph/limits.py), from shapes alone, before anything is built or
    allocated (a `training: {batch: 10**12}` went on to allocate its padding rows)."""
    if batch < 1:
        raise CompileError("batch must be at least 1", received=str(batch))
    limit = Limits().max_tensor_elements
    shapes = {**checked.inputs, **{n.id: n.shape for n in checked.nodes}}
    name, shape = max(shapes.items(), key=lambda item: product(item[1]))
    if batch * product(shape) > limit:
        raise CompileError(f"batch {batch:,} is too large: {name} would hold "
                           f"{batch * product(shape):,} elements",
                           expected=f"at most {limit:,} elements per tensor, a batch of at most "
                                    f"{limit // max(product(shape), 1):,}")


def carry_updates(g: TrainEmitter, checked: CheckedGraph, cfg: OptimConfig,
                  grads: dict[str, str], frozen: frozenset[str] = frozenset(),
                  decay=lambda param: True):
    """(params, state, {carried name: new value}): optimizer updates for trainable parameters
    (unchanged when the loss does not reach them; a frozen node's unchanged and without
    optimizer state; weight decay where `decay(param)`), layer state from the training forward."""
    check_state_updates(g, checked)
    params, state, new = [], [], {}
    for node in checked.nodes:
        for pname, param in node.params.items():
            name = f"{node.id}.{pname}"
            if not param.trainable:
                state.append(name)
                new[name] = g.state_updates.get((node.id, pname), name)
                continue
            params.append(name)
            if node.id in frozen:
                new[name] = name
                continue
            extra = cfg.state_names(name)
            one = cfg if decay(param) else replace(cfg, weight_decay=0.0)
            state.extend(extra)
            if name in grads:
                new.update(update(g, one, name, grads[name], "lr", "step"))
            else:
                new.update({n: n for n in [name, *extra]})
    return params, state, new


def clip_by_norm(g: TrainEmitter, grads: dict[str, str], max_norm: float) -> dict[str, str]:
    """torch's clip_grad_norm_: every gradient times min(1, max_norm / (global L2 norm + 1e-6))."""
    if not grads:
        return grads
    g.begin("clip_norm", "update/")
    squares = [g.op("ReduceSumSquare", [v], keepdims=0) for v in grads.values()]
    norm = g.op("Sqrt", [squares[0] if len(squares) == 1 else g.op("Sum", squares)])
    ratio = g.op("Div", [g.scalar(max_norm), g.op("Add", [norm, g.scalar(1e-6)])])
    coef = g.op("Min", [ratio, g.scalar(1.0)])
    return {name: g.op("Mul", [v, coef]) for name, v in grads.items()}


def check_state_updates(g: TrainEmitter, checked: CheckedGraph) -> None:
    """Every new_state a layer emitted names a non-trainable parameter of its node: a
    misspelled name would otherwise leave the statistic silently unchanged."""
    for node_id, pname in g.state_updates:
        param = checked.node(node_id).params.get(pname)
        if param is None or param.trainable:
            raise AssertionError(f"{node_id}: new_state('{pname}') names no state parameter "
                                 f"of the node ({', '.join(checked.node(node_id).params)})")


def assemble(g: TrainEmitter, checked: CheckedGraph, batch: int, data: str, loss: str,
             carried: list[str], outputs: dict[str, str], opset: int | None) -> onnx.ModelProto:
    shapes = {**carried_shapes(checked), **{n: loss_scale.SHAPE for n in loss_scale.STATE}}
    out_shape = checked.shape_of(checked.outputs[0])
    label = helper.make_tensor_value_info("labels", TensorProto.INT64, [batch, *out_shape[1:]]) \
        if loss == "cross_entropy" else float_info("labels", [batch, *out_shape])
    inputs = [float_info(data, [batch, *checked.inputs[data]]), label,
              float_info("mask", [batch]), float_info("lr", []),
              helper.make_tensor_value_info("step", TensorProto.INT64, [])]
    inputs += [float_info(n, shapes[n]) for n in carried]
    nodes = named_outputs(list(g.nodes), outputs, {i.name for i in inputs})
    out_infos = [float_info(n, shapes[n[:-4]]) if n.endswith(".new") else scalar_info(n)
                 for n in outputs]
    sizes = {n: int(np.prod(shapes[n])) for n in carried}
    nodes = gate_late_readers(g, prune(nodes, list(outputs)), sizes, "lr")
    version = choose_opset(opset, {n.op_type for n in nodes})
    used = {v for n in nodes for v in n.input}
    constants = [t for name, t in g.constants.items() if name in used]
    graph = helper.make_graph(nodes, f"{checked.name}.train", inputs, out_infos,
                              initializer=constants)
    model = make_model(graph, version)
    helper.set_model_props(model, {"graphcnn_version": __version__, "graphcnn_training": loss})
    return model


def named_outputs(nodes: list, outputs: dict[str, str], inputs: set[str]) -> list:
    """Each output written under its name by the node that makes it: onnxruntime then writes
    it straight into the caller's buffer, where behind an Identity every new optimizer moment
    waited in the arena until the last parameter's update had run (42.6 MiB of ResNet-18's
    step at 64x64). An Identity remains for a model input (an unchanged parameter), a
    constant, or a value that already names another output."""
    made = {v for node in nodes for v in node.output}
    renamed: dict[str, str] = {}
    for name, value in outputs.items():
        if value not in made or value in inputs or value in renamed:
            nodes.append(helper.make_node("Identity", [value], [name], name=f"output/{name}"))
        else:
            renamed[value] = name
    for node in nodes:
        node.input[:] = [renamed.get(v, v) for v in node.input]
        node.output[:] = [renamed.get(v, v) for v in node.output]
    return nodes


def carried_shapes(checked: CheckedGraph) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for node in checked.nodes:
        for pname, param in node.params.items():
            name = f"{node.id}.{pname}"
            for suffix in ("", ".momentum", ".m", ".v"):
                shapes[name + suffix] = param.shape
    return shapes


def float_info(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def scalar_info(name: str) -> onnx.ValueInfoProto:
    kind = TensorProto.INT64 if name in ("correct", "counted", "skipped") else TensorProto.FLOAT
    return helper.make_tensor_value_info(name, kind, [])


def prune(nodes: list, outputs: list[str]) -> list:
    """Only the nodes the outputs depend on (e.g. no input gradient for the first layer)."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    return kept[::-1]


def initial_state(checked: CheckedGraph, step: TrainingStep, seed: int) -> dict[str, np.ndarray]:
    """Parameters as the inference model initialises them (same seed, same values), layer
    state from its Param init (running mean 0, variance 1), optimizer state zeros, the fp16
    loss scale 2^16."""
    values = {}
    for node in checked.nodes:
        for pname, param in node.params.items():
            values[f"{node.id}.{pname}"] = initial_value(f"{node.id}.{pname}", param, seed)
    values.update(loss_scale.initial_values())  # used only by an fp16 step
    shapes = step.shapes()
    return {n: values[n] if n in values else np.zeros(shapes[n], np.float32)
            for n in step.carried}

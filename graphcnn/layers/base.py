"""The Layer base class and registry.

A layer is a pydantic model (its spec fields) that also knows, for its op: the shape rule,
the parameter shapes (the parameter count is derived from them), MACs, its sliding window for
the receptive field, its ONNX lowerings (inference, training, portable) and its backward rule,
through an emitter it is handed (so this module, like spec/ and graph/, never imports onnx),
and the per-op facts other modules need (class attributes). `Layer` is that contract, whole.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from collections.abc import Callable
from typing import Any, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic_core import PydanticCustomError

from ..errors import CompileError, ShapeError

Shape = tuple[int, ...]  # without the batch axis, channels first
# The largest integer a spec may hold anywhere: ONNX stores int64, and sums and products of a
# few such values (pads, shapes) must still fit. spec/exprs.py and spec/yamlio.py use it too.
MAX_INT = 2 ** 62
REGISTRY: dict[str, type["Layer"]] = {}


def fmt_shape(shape) -> str:
    """[N, 15, 19]: the batch axis is the symbolic N."""
    return "[" + ", ".join(["N", *map(str, shape)]) + "]"


@dataclass(frozen=True)
class Param:
    """A tensor the layer owns. init: 'he' (He: std sqrt(2/fan_in), lower/initial_values.py),
    'zeros', 'ones', or a number every element starts at (prelu's 0.25, a gate's bias)."""

    shape: Shape
    init: str | float = "zeros"
    fan_in: int = 1
    trainable: bool = True

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Window:
    """How a node maps positions on each spatial axis: extent and stride (stride < 1 upsamples)."""

    extent: tuple[int, ...]
    stride: tuple[Fraction, ...]


GLOBAL = "global"  # a node whose every output sees its whole input (flatten, linear, global pool)
FP32_ALL = frozenset({"*"})  # fp32_ops value: every ONNX op of the layer stays float32


class RegistryError(ValueError):
    """An op registered twice, or registered after the spec schema was built."""


def register(cls: type["Layer"], *, late: bool = False) -> type["Layer"]:
    """Class decorator: make an op known to the spec language, the checker and the lowering.
    The built-in ops and the plugins (layers/plugins.py) register before graphcnn.spec builds
    its schema from the registry; registering later is refused unless `late=True` (or inside
    `late_registration()`): listeners then rebuild what depends on the registry."""
    op = cls.model_fields["op"].default
    if op in REGISTRY:
        owner = REGISTRY[op]
        raise RegistryError(f"op '{op}' is already registered "
                            f"(by {owner.__module__}.{owner.__qualname__})")
    if _LISTENERS and not (late or _LATE):
        raise RegistryError(_too_late(op))
    REGISTRY[op] = cls
    _notify()
    return cls


def _too_late(op: str) -> str:
    return (f"op '{op}' registered after the spec schema was built (graphcnn builds it when "
            "graphcnn.spec is imported, after loading the plugins of entry-point group "
            "'graphcnn.layers'): ship the op as a plugin (docs/extending.md), or call "
            "register(cls, late=True) to rebuild the schema (tests, notebooks)")


@contextmanager
def late_registration():
    """Allow register() after the schema was built within this block (plugins.load of entry
    points named at run time, whose modules register with a plain @register)."""
    _LATE.append(True)
    try:
        yield
    finally:
        _LATE.pop()


def unregister(op: str) -> None:
    """Forget an op (a test's or a plugin's that is unloaded)."""
    del REGISTRY[op]
    _notify()


# What was built from the registry (the spec's node union): once one exists, registering is late.
_LISTENERS: list[Callable[[], None]] = []
_LATE: list[bool] = []  # non-empty inside late_registration()


def on_registry_change(listener: Callable[[], None]) -> None:
    """Call `listener` after every later register/unregister (the spec's node union)."""
    _LISTENERS.append(listener)


def _notify() -> None:
    for listener in _LISTENERS:
        listener()


class Layer(BaseModel):
    """Fields every node has, and the contract every op fulfils.

    Subclasses add `op: Literal[...]` and their parameters, and override the hooks below that
    their op needs; every hook has a default here, and no other module looks for a method or
    attribute a layer might lack. The lowering hooks are handed an emitter `g` (lower/emitter.py:
    `g.op(...)` appends an ONNX node, `g.param(name)` names a parameter of this node) and
    `xs` (input value names), `shapes` (input shapes without the batch), `out` (output shape);
    they return the value name of the node's result. State shared between nodes and with the
    training step goes through typed emitter methods (`g.keep`, `g.kept`, `g.new_state`,
    `g.batch_mask`, `g.step`), never through names spelled twice.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = None
    inputs: list[str] | None = None

    arity: ClassVar[tuple[int, int | None]] = (1, 1)  # min, max inputs (None: any)
    skip_kind: ClassVar[str] = "forward"  # edge kind of non-sequential inputs into this node
    # ONNX op types of this op's lowering that stay float32 under --precision fp16/bf16
    # (statistics, normalisation, probabilities); FP32_ALL keeps every one of them.
    fp32_ops: ClassVar[frozenset[str]] = frozenset()
    draw_family: ClassVar[str] = "other"  # fill colour in drawings (draw/style.py FAMILY_FILLS)
    # True when the output is a probability distribution over axis 1 (softmax): a loss then
    # takes the log of it instead of applying its own softmax.
    probability_output: ClassVar[bool] = False
    # How onnxruntime's CPU provider runs the op, for the memory plan of `graphcnn summary
    # --batch` (summary_memory.py; the hooks workspace, blocked, shape_inputs, kept_bytes too).
    # in_place: the result may take over the buffer of the first input when that input is read
    # for the last time here and has the result's size (kernels declared MayInplace or Alias,
    # ops folded away), else the buffer of one of its workspace temporaries of that size.
    in_place: ClassVar[bool] = False
    # A batch norm that onnxruntime folds into the weights of a conv before it.
    folds_into_conv: ClassVar[bool] = False
    # A conv into which onnxruntime fuses a two-input add that alone reads its result (through
    # folded batch norms): the conv writes the sum into the add's other input's buffer.
    fuses_add: ClassVar[bool] = False

    @field_validator("inputs", mode="before")
    @classmethod
    def _one_input_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info) -> Any:
        """pydantic reads `channels: true` as 1; a YAML true/false is only a flag."""
        field = cls.model_fields[info.field_name]
        if isinstance(value, bool) and not _takes_bool(field.annotation):
            raise ValueError("true/false is not a number here")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _finite_and_bounded(cls, value: Any) -> Any:
        """One rule for every field of every op, plugins' included: no NaN or infinity (ONNX
        attributes would carry them into garbage outputs) and no integer past MAX_INT (a
        quoted '9223372036854775808' that pydantic converted, which onnx cannot store)."""
        problem = _out_of_range(value)
        if problem:
            raise PydanticCustomError("out_of_range", problem)  # said as pydantic's own
        return value

    @property
    def op_name(self) -> str:
        return self.op  # type: ignore[attr-defined]

    def wiring(self, previous: str | None) -> list[str]:
        """The names this node reads; by default the previous node's output."""
        if self.inputs is not None:
            return list(self.inputs)
        return [previous] if previous is not None else []

    def parts(self) -> list["Layer"]:
        """For an op with several outputs (split, chunk): one layer per part; spec expansion
        makes each a node `<id>.0`, `<id>.1`, ... reading this node's inputs, and `<id>`
        itself names no value. Default: [] (one output, named by the node id)."""
        return []

    def infer(self, shapes: list[Shape]) -> Shape:
        """The output shape for these input shapes, or a ShapeError saying why not."""
        return shapes[0]

    def infer_with(self, shapes: list[Shape], sources: list) -> Shape:
        """The output shape when it depends on more than the input shapes: `sources` holds the
        checked NodeInfo of each input (None for a network input). Default: infer(shapes)."""
        return self.infer(shapes)

    def params(self, shapes: list[Shape]) -> dict[str, Param]:
        """The tensors this node owns, by name (`weight` becomes `<id>.weight`); the parameter
        count is derived from their shapes."""
        return {}

    def macs(self, shapes: list[Shape], out: Shape) -> int:
        """Multiply-accumulates per sample."""
        return 0

    def window(self, shapes: list[Shape]) -> Window | str:
        """Extent and stride per spatial axis for the receptive field, or GLOBAL."""
        rank = len(shapes[0]) - 1
        return Window((1,) * rank, (Fraction(1),) * rank)

    def needs(self, inputs: list[str]) -> list[tuple[str, type]]:
        """(input node id, kind) for each typed value this node reads from another node's
        lowering (`g.kept(kind, node_id)`); asked before any node lowers, so the other node
        sees `g.wants(kind)` (a maxunpool needs its pool's PoolIndices)."""
        return []

    def shape_inputs(self) -> list[int]:
        """The positions of the inputs of which the lowering uses only the shape (fixed when
        compiled, so their values are not read: a `like:` target; an unpool's pool, whose
        indices it reads through needs()). Default: none."""
        return []

    def kept_bytes(self, node, kind: type) -> int:
        """Bytes per sample of the value of `kind` that this node keeps (g.keep) for a node
        that needs() it, as onnxruntime holds it (a max pool's int64 indices). `node` is the
        checked node. Default: 0."""
        return 0

    def workspace(self, node) -> list[Shape]:
        """Shapes (fp32, without the batch) of the temporaries that the lowering, as
        onnxruntime runs it, holds at once beside the inputs (the most at any of its steps),
        all freed once the result is written: the steps of an activation built from several
        ops, interpolation's gathered maps. `node` is the checked node. Default: none."""
        return []

    def blocked(self, node, inputs: list[bool], block: int) -> bool:
        """Whether onnxruntime's CPU provider runs this node in its channel-blocked layout
        (NCHWc: `block` channels to a block, padded), given which inputs arrive blocked; a
        value passing between a blocked and a plain node is copied into the other layout.
        Default: plain."""
        return False

    def lower(self, g, xs: list[str], shapes: list[Shape], out: Shape) -> str:
        """The inference lowering."""
        raise CompileError(f"op '{self.op_name}' has no ONNX lowering")

    def lower_train(self, g, xs: list[str], shapes: list[Shape], out: Shape) -> str:
        """The training-mode forward (batch statistics, dropout masks); keeps with `g.keep`
        what vjp needs. Default: the inference lowering."""
        return self.lower(g, xs, shapes, out)

    def lower_portable(self, g, xs: list[str], shapes: list[Shape], out: Shape) -> str:
        """`compile --portable`'s lowering, for nodes that `graphcnn lint` flags as computed
        differently by ONNX hosts: the same values in a form every host agrees on.
        Default: the inference lowering."""
        return self.lower(g, xs, shapes, out)

    def torch(self, node, emit):
        """The PyTorch form (`graphcnn export-torch`, deploy/torchcode): declare the module
        that holds the node's parameters under their names with `emit.module(ctor, *args)`
        and return the forward expression over `emit.xs` (emit.call and emit.fmt build code;
        plain values become literals, or the block-param expression they came from). `node`
        is the checked node (in_shapes, shape, params). Default: refused, naming the op."""
        raise CompileError(f"op '{self.op_name}' has no PyTorch form",
                           hint="graphcnn export-torch cannot write this network")

    def vjp(self, g, xs: list[str], shapes: list[Shape], out: Shape, y: str, dy: str):
        """The backward rule: given dy (the loss gradient at this node's result y), return
        ([gradient per input, or None where none flows], {param name: gradient})."""
        raise CompileError(f"op '{self.op_name}' has no backward rule (vjp), so a network "
                           "using it cannot be trained",
                           hint="train without this op, or use it only after the loss input")

    def describe(self) -> str:
        """Key parameters, for summaries and drawings."""
        skip = {"id", "inputs", "op"}
        fields = self.model_dump(exclude_defaults=True, exclude=skip)
        return ", ".join(f"{k}={v}" for k, v in fields.items())


def _takes_bool(annotation) -> bool:
    """Whether a field annotation admits a bool (bool itself, Any, or a union holding one)."""
    if annotation in (bool, Any):
        return True
    if get_origin(annotation) is Literal:
        return any(isinstance(a, bool) for a in get_args(annotation))
    return any(_takes_bool(a) for a in get_args(annotation))


def _out_of_range(value: Any) -> str | None:
    """What is wrong with a number in `value` (lists and tuples walked), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "Input should be a finite number"
    if isinstance(value, int) and abs(value) > MAX_INT:
        return f"Input should be at most {MAX_INT:,} in size"
    if isinstance(value, (list, tuple)):
        return next(filter(None, map(_out_of_range, value)), None)
    return None


def need_rank(layer: Layer, shape: Shape, ranks: tuple[int, ...], what: str) -> None:
    """Refuse an input whose rank (without batch) is not one of `ranks`."""
    if len(shape) not in ranks:
        names = {1: "[N, F]", 2: "[N, C, L]", 3: "[N, C, H, W]", 4: "[N, C, D, H, W]"}
        want = " or ".join(names.get(r, f"rank {r + 1}") for r in ranks)
        raise ShapeError(f"{layer.op_name} needs {what}", expected=want, received=fmt_shape(shape))


def product(values) -> int:
    n = 1
    for v in values:
        n *= int(v)
    return n

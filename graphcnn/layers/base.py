"""The Layer base class and registry.

A layer is a pydantic model (its spec fields) that also knows, for its op: the shape rule,
the parameter shapes (the parameter count is derived from them), MACs, its sliding window for
the receptive field, and its ONNX lowering through an emitter it is handed (so this module,
like spec/ and graph/, never imports onnx).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, field_validator

from ..errors import ShapeError

Shape = tuple[int, ...]  # without the batch axis, channels first
REGISTRY: dict[str, type["Layer"]] = {}


def fmt_shape(shape) -> str:
    """[N, 15, 19]: the batch axis is the symbolic N."""
    return "[" + ", ".join(["N", *map(str, shape)]) + "]"


@dataclass(frozen=True)
class Param:
    """A tensor the layer owns. init: 'he' (normal, std sqrt(2/fan_in)), 'zeros' or 'ones'."""

    shape: Shape
    init: str = "zeros"
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


def register(cls: type["Layer"]) -> type["Layer"]:
    """Class decorator: make an op known to the spec language, the checker and the lowering."""
    op = cls.model_fields["op"].default
    if op in REGISTRY:
        raise ValueError(f"op '{op}' registered twice")
    REGISTRY[op] = cls
    return cls


class Layer(BaseModel):
    """Fields every node has. Subclasses add `op: Literal[...]` and their parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = None
    inputs: list[str] | None = None

    arity: ClassVar[tuple[int, int | None]] = (1, 1)  # min, max inputs (None: any)
    skip_kind: ClassVar[str] = "forward"  # edge kind of non-sequential inputs into this node

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

    @property
    def op_name(self) -> str:
        return self.op  # type: ignore[attr-defined]

    def wiring(self, previous: str | None) -> list[str]:
        """The names this node reads; by default the previous node's output."""
        if self.inputs is not None:
            return list(self.inputs)
        return [previous] if previous is not None else []

    def infer(self, shapes: list[Shape]) -> Shape:
        """The output shape for these input shapes, or a ShapeError saying why not."""
        return shapes[0]

    def params(self, shapes: list[Shape]) -> dict[str, Param]:
        return {}

    def macs(self, shapes: list[Shape], out: Shape) -> int:
        return 0

    def window(self, shapes: list[Shape]) -> Window | str:
        rank = len(shapes[0]) - 1
        return Window((1,) * rank, (Fraction(1),) * rank)

    def lower(self, g, xs: list[str], shapes: list[Shape], out: Shape) -> str:
        raise NotImplementedError(f"{self.op_name} has no ONNX lowering")

    # Training (graphcnn/train/autodiff.py) also looks for two optional methods, kept absent
    # here so that a missing backward rule is a CompileError naming the node:
    #   lower_train(g, xs, shapes, out) -> value   the training-mode forward (default: lower)
    #   vjp(g, xs, shapes, out, y, dy) -> ([dx or None per input], {param name: gradient})

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

"""Width and depth multipliers (`scale: {width: 0.5, depth: 0.33, divisor: 8}`), as the
EfficientNet and YOLO families scale one architecture.

A block says which of its params scale: `scalable: {out: width, n: depth, repeat: depth}`
(`repeat` is the count of a call of the block that writes `repeat:`). A width becomes
make_divisible(value * width, divisor), a depth ceil(value * depth). A value is scaled where
it is written as a number: a scalable param's default, and the `args:`/`first:` of each call of
the block (in the spec's nodes and inside other blocks). A value written as an expression
(`width * 2`, `x.channels`) is computed from params that are scaled already, so it is not
scaled again: a block passing its own width on to an inner block scales it once.

Applied as the blocks are expanded, so the spec keeps its written values and its `scale:`
(the text embedded in a compiled model reproduces it).
"""
from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import Location, SpecError

Kind = Literal["width", "depth"]


class ScaleSection(BaseModel):
    """Multipliers of the block params declared `scalable:`: a width becomes
    make_divisible(v * width, divisor), a depth (or a call's repeat) ceil(v * depth)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    width: float = Field(1.0, gt=0, le=1000)
    depth: float = Field(1.0, gt=0, le=1000)
    divisor: int = Field(8, ge=1, le=1 << 20)

    def scaled(self, value: Any, kind: Kind) -> Any:
        """A number written for a param of this kind, scaled; anything else as it is."""
        if isinstance(value, bool) or not isinstance(value, int):
            return value
        if kind == "depth":  # rounded first: 0.1 * 30 is 3.0000000000000004, and ceil gives 4
            return math.ceil(round(value * self.depth, 9))
        return make_divisible(value * self.width, self.divisor)


def make_divisible(value: float, divisor: int) -> int:
    """The nearest multiple of `divisor`, at least `divisor`, and never more than 10% below
    `value` (torchvision's and EfficientNet's _make_divisible)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def scaled_blocks(blocks: dict, scale: ScaleSection | None, loc: Location | None) -> dict:
    """`blocks` ({name: (BlockDef, source)}) with scalable defaults scaled, and the numbers
    that calls inside them write for scalable params. No `scale:`: the blocks as they are."""
    if scale is None:
        return blocks
    if not any(block.scalable for block, _ in blocks.values()):
        raise SpecError("scale: has nothing to scale: no block declares `scalable:` params",
                        loc=loc, hint="e.g. `scalable: {out: width, repeat: depth}` in a block")
    defs = {name: block for name, (block, _) in blocks.items()}
    return {name: (_scaled_def(block, defs, scale), source)
            for name, (block, source) in blocks.items()}


def scaled_calls(nodes: list, blocks: dict, scale: ScaleSection | None) -> list:
    """The spec's top-level nodes with their block calls' written numbers scaled."""
    if scale is None:
        return nodes
    defs = {name: block for name, (block, _) in blocks.items()}
    return [_scaled_call_model(node, defs, scale) for node in nodes]


def _scaled_def(block, defs: dict, scale: ScaleSection):
    params = {k: scale.scaled(v, block.scalable[k]) if k in block.scalable else v
              for k, v in block.params.items()}
    nodes = [_scaled_raw_call(raw, defs, scale) for raw in block.nodes]
    return block.model_copy(update={"params": params, "nodes": nodes})


def _scaled_fields(args: dict, first: dict, repeat: Any, callee, scale: ScaleSection) -> dict:
    """A call's args, first and repeat with the callee's scalable numbers scaled."""
    kinds = callee.scalable

    def each(values: dict) -> dict:
        return {k: scale.scaled(v, kinds[k]) if k in kinds else v for k, v in values.items()}
    return {"args": each(args), "first": each(first),
            "repeat": scale.scaled(repeat, kinds["repeat"]) if "repeat" in kinds else repeat}


def _scaled_raw_call(raw: Any, defs: dict, scale: ScaleSection) -> Any:
    """A call written inside a block (still raw data: its params not yet substituted)."""
    if not isinstance(raw, dict) or raw.get("block") not in defs:
        return raw
    callee = defs[raw["block"]]
    if not callee.scalable:
        return raw
    fields = _scaled_fields(raw.get("args") or {}, raw.get("first") or {}, raw.get("repeat"),
                            callee, scale)
    return {**raw, **{k: v for k, v in fields.items() if k in raw}}


def _scaled_call_model(node: Any, defs: dict, scale: ScaleSection) -> Any:
    """A BlockCall of the spec's nodes; a call without `repeat:` is one instance, kept so."""
    callee = defs.get(getattr(node, "block", None))
    if callee is None or not callee.scalable:
        return node
    fields = _scaled_fields(node.args, node.first, node.repeat, callee, scale)
    if "repeat" not in node.model_fields_set:
        del fields["repeat"]
    return node.model_copy(update=fields)

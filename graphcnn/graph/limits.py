"""Size limits, checked before anything is allocated: a spec cannot ask for a 1 TB tensor."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ShapeError
from ..layers import fmt_shape
from ..layers.base import product


@dataclass(frozen=True)
class Limits:
    max_tensor_elements: int = 2 ** 31 - 1  # per sample; ONNX tensors beyond this are impractical
    max_total_params: int = 4 * 10 ** 9


def check_sizes(infos, limits: Limits) -> None:
    total = 0
    for info in infos:
        if product(info.shape) > limits.max_tensor_elements:
            raise ShapeError("output tensor too large", loc=info.loc, node=info.id, via=info.via,
                             expected=f"at most {limits.max_tensor_elements:,} elements per sample",
                             received=f"{fmt_shape(info.shape)} = {product(info.shape):,}")
        total += sum(p.size for p in info.params.values())
        if total > limits.max_total_params:
            raise ShapeError("the network has too many weights", loc=info.loc, node=info.id,
                             via=info.via, expected=f"at most {limits.max_total_params:,} in all",
                             received=f"{total:,} by this node")

"""Arguments several commands share: a spec and the size limits of checking it."""
from __future__ import annotations

from ..graph import Limits


def spec_arg(p) -> None:
    """The spec positional and the --max-params/--max-tensor limits of checking it."""
    p.add_argument("spec", help="a spec YAML file")
    p.add_argument("--max-params", type=int, default=Limits.max_total_params, metavar="N",
                   help="refuse networks with more weights in all (default %(default)s)")
    p.add_argument("--max-tensor", type=int, default=Limits.max_tensor_elements, metavar="N",
                   help="refuse layer outputs with more elements per sample (default %(default)s)")


def limits(args) -> Limits:
    return Limits(max_tensor_elements=args.max_tensor, max_total_params=args.max_params)


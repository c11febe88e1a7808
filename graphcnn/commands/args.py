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



def weights_args(p, flag: str = "--weights") -> None:
    """A checkpoint to load and how to read it (compile, run, bench, predict; train's --init)."""
    p.add_argument(flag, dest="weights", metavar="FILE",
                   help="weights from a checkpoint: .npz, .safetensors, or PyTorch .pth/.pt/.bin "
                        "(read without PyTorch; no pickled code runs)")
    p.add_argument("--map", dest="weights_map", metavar="NAME|FILE",
                   help="rename checkpoint names to spec ids by a map of the spec's weights: "
                        "section or a map file (default: none when the names are spec ids, else "
                        "the spec's map that places them)")
    p.add_argument("--weights-key", metavar="KEY",
                   help="where the tensors sit in a nested checkpoint (default: state_dict, "
                        "model, ... found by itself)")
    p.add_argument("--partial", action="store_true",
                   help="load the tensors that fit; the rest keep their initial values (a new head)")


def weights_options(args) -> dict:
    """The weights flags as keyword arguments of model_with_weights / ExportOptions."""
    return {"weights_map": args.weights_map, "weights_key": args.weights_key,
            "partial": args.partial}

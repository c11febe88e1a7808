"""Arguments several commands share: a spec (with its --set overrides) and the size limits
of checking it."""
from __future__ import annotations

import argparse

from ..graph import Limits

SET_HELP = ("override a value of the spec (repeatable), Hydra's grammar: nodes.fc.features=10, "
            "inputs.image=[3,320,320], blocks.basic.params.width=32; +path=value adds a key the "
            "spec does not write, ~path deletes one")


class SpecPath(str):
    """A spec path as given on the command line, carrying its --set overrides. Commands hand
    args.spec to the API (load_spec, check_spec, model_with_weights, training_job) as a path,
    and the API applies the overrides the path carries: every command that takes a spec through
    spec_arg or spec_positional honours --set without handling it itself."""

    overrides: tuple[str, ...] = ()


def _carrying(path: str, overrides) -> SpecPath:
    out = SpecPath(path)
    out.overrides = tuple(overrides or ())
    return out


class _SpecAction(argparse.Action):
    """The positional: a SpecPath with the --set options seen so far."""

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, _carrying(value, getattr(namespace, "set", None)))


class _SetAction(argparse.Action):
    """--set: appended, and given to the positional if it came first (either order works)."""

    def __init__(self, *args, target: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.target = target

    def __call__(self, parser, namespace, value, option_string=None):
        namespace.set = [*(namespace.set or []), value]
        if isinstance(getattr(namespace, self.target, None), str):
            setattr(namespace, self.target, _carrying(getattr(namespace, self.target), namespace.set))


def spec_positional(p, dest: str = "spec", help: str = "a spec YAML file") -> None:
    """A spec positional (`spec`, or `model` for MODEL|SPEC) and its repeatable --set."""
    p.add_argument(dest, action=_SpecAction, help=help)
    p.add_argument("--set", action=_SetAction, target=dest, default=None, metavar="PATH=VALUE",
                   help=SET_HELP)


def spec_arg(p) -> None:
    """The spec positional (with --set) and the --max-params/--max-tensor limits of checking it."""
    spec_positional(p)
    p.add_argument("--max-params", type=positive_int(), default=Limits.max_total_params,
                   metavar="N",
                   help="refuse networks with more weights in all (default %(default)s)")
    p.add_argument("--max-tensor", type=positive_int(), default=Limits.max_tensor_elements,
                   metavar="N",
                   help="refuse layer outputs with more elements per sample (default %(default)s)")


def limits(args) -> Limits:
    return Limits(max_tensor_elements=args.max_tensor, max_total_params=args.max_params)


# Upper ends of numeric flags. A value past them is a usage error (exit 2) before any work,
# never a traceback from onnx or onnxruntime, nor an allocation of that size.
MAX_BATCH = 2 ** 24  # rows of a run or step; the tensors' own sizes are checked where made
MAX_SEED = 2 ** 63 - 1  # numpy takes any size; ONNX metadata and int64 fields do not
MAX_REPEAT = 10 ** 6  # timed runs of bench
MAX_EPOCHS = 10 ** 6  # a run's epochs, each at least one step


def whole_number(low: int, high: int | None = None):
    """An argparse `type`: an integer from `low` to `high` (None: no upper end)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number; received {text!r}") \
                from None
        if value < low or (high is not None and value > high):
            span = f"from {low:,} to {high:,}" if high is not None else f"of {low:,} or more"
            raise argparse.ArgumentTypeError(f"expected a whole number {span}; received {text}")
        return value

    return parse


def positive_int(max: int | None = None):
    return whole_number(1, max)


def non_negative_int(max: int | None = None):
    return whole_number(0, max)


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

"""Check a shipped spec against the torchvision model it claims to equal, weight for weight.

    python tools/torchvision_check.py resnet18 fcn_resnet50 [--size H,W] [--tolerance 1e-5]

For each NAME: build torchvision's model (weights=None, no download), give every batchnorm
random running statistics and every constant-initialised parameter (norm affine parameters,
zero biases, layer scales) random values from a seeded generator, eval(); save its state_dict
with torch.save (the layout of torchvision's published checkpoints), compile `specs/NAME.yaml`
with that file as `compile --weights` does (graphcnn's own checkpoint reader and the spec's
`weights: torchvision` map: the path a user's downloaded checkpoint takes), run both on the
same seeded random input and print max |ours - torch| / max |torch| at the final output and at
an early node (the case's probe). Exit 0 when every NAME is within --tolerance, 1 when one is
not (or its checkpoint does not load), 2 when torch/torchvision cannot be imported.

What the check needs besides the spec is its case file, `tools/torchvision_cases/NAME.yaml`:

    probe: {torch: layer1, spec: stage1}   # optional: a torch module, a spec node (or block)
    builder: resnet18                      # optional: the torchvision builder (default NAME)
    kwargs: {}                             # optional: its keyword arguments besides weights
    size: [64, 64]                         # optional: the input size the check uses

Input size: --size, else the case's `size`, else the spec's own input shape. Specs whose input
size is free (global pooling, `resize like:` the input) are compiled at that size in memory;
with --dynamic the spec is compiled at its own size with symbolic spatial axes (`compile
--dynamic`) and that model runs at the size.

Installing the oracles beside graphcnn (CPU only; see README.md): a CPU build of torch and
torchvision without dependencies, e.g. torch 2.13.0+cpu with torchvision 0.28.0. PyPI's
torchvision wheel carries a CUDA build of its C++ ops that does not load beside a CPU torch;
the models do not need those ops, so `import_torchvision` defines the two op schemas its
import registers fakes for (torchvision::nms, torchvision::qnms) and imports it again.
"""
from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing graphcnn
SPECS = ROOT / "specs"
CASES = ROOT / "tools" / "torchvision_cases"  # probe, builder, size: data of this tool

# Keyword arguments per torchvision builder, besides weights=None (and weights_backbone=None
# where the builder takes it, so nothing is downloaded). A map file's `kwargs` override these.
BUILDER_KWARGS = {
    "fcn_resnet50": {"aux_loss": False},
    "fcn_resnet101": {"aux_loss": False},
    "deeplabv3_resnet50": {"aux_loss": False},
    "deeplabv3_resnet101": {"aux_loss": False},
    "deeplabv3_mobilenet_v3_large": {"aux_loss": False},
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


class Missing(Exception):
    """torch or torchvision cannot be imported."""


class MapError(Exception):
    """A case file or a probe that does not fit."""


def import_torchvision():
    """torchvision, imported beside whatever torch is installed (Missing when it cannot be).

    A CUDA wheel of torchvision beside a CPU torch cannot load its C++ ops; its import then
    fails registering fakes for torchvision::nms and ::qnms. The models need neither op, so
    their schemas are defined and the import repeated."""
    try:
        import torch
    except ImportError as exc:
        raise Missing(f"torch is not installed ({exc})") from None
    try:
        import torchvision
        return torchvision
    except ImportError as exc:
        raise Missing(f"torchvision is not installed ({exc})") from None
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise Missing(f"torchvision does not import: {exc}") from None
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    for op in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{op}", NMS_SCHEMA)
        except RuntimeError:
            pass  # already there
    try:
        import torchvision
    except (ImportError, RuntimeError) as exc:
        raise Missing(f"torchvision does not import beside torch {torch.__version__}: {exc}") from None
    return torchvision


@dataclass
class Case:
    probe: dict | None = None
    builder: str | None = None
    kwargs: dict = field(default_factory=dict)
    size: tuple[int, ...] | None = None


def case_names() -> list[str]:
    """Every spec with a case file."""
    return sorted(p.stem for p in CASES.glob("*.yaml"))


def read_case(name: str) -> Case:
    path = CASES / f"{name}.yaml"
    if not path.is_file():
        raise MapError(f"no case for {name}: expected {path.relative_to(ROOT)}")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - {"probe", "builder", "kwargs", "size"}
    if unknown:
        raise MapError(f"{path.name}: unknown keys {sorted(unknown)}")
    probe = data.get("probe")
    if probe is not None and set(probe) != {"torch", "spec"}:
        raise MapError(f"{path.name}: probe needs exactly `torch` and `spec`: {probe!r}")
    size = data.get("size")
    return Case(probe, data.get("builder"), data.get("kwargs") or {},
                tuple(size) if size is not None else None)


def build_torchvision(tv, builder: str, kwargs: dict):
    """torchvision's model from its builder, weights=None (weights_backbone=None too)."""
    make = tv.models.get_model_builder(builder)
    args = {"weights": None, **BUILDER_KWARGS.get(builder, {}), **kwargs}
    if "weights_backbone" in inspect.signature(make).parameters:
        args.setdefault("weights_backbone", None)
    return make(**args)


def randomise(model, seed: int) -> None:
    """Random batchnorm statistics and random values for constant-initialised parameters
    (norm weights 1 and biases 0, zero conv/linear biases, layer scales), so each of them
    changes the output and a mis-mapped one shows; eval() mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            mean, var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
            if isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor):
                mean.copy_(torch.randn(mean.shape, generator=g) * 0.1)
                var.copy_(torch.rand(var.shape, generator=g) + 0.5)
        for p in model.parameters():
            flat = p.detach().reshape(-1)
            if flat.numel() > 1 and bool((flat == flat[0]).all()):
                if float(flat[0]) == 0.0:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
                else:
                    p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    model.eval()


@dataclass
class Result:
    name: str
    torch_params: int
    spec_params: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    output_diff: float
    probe: str | None
    probe_diff: float | None
    tolerance: float
    seconds: float
    dynamic: bool = False
    load_report: str = ""

    @property
    def ok(self) -> bool:
        diffs = [self.output_diff] + ([self.probe_diff] if self.probe_diff is not None else [])
        return self.torch_params == self.spec_params and all(d <= self.tolerance for d in diffs)

    def line(self) -> str:
        params = (f"{self.spec_params:,} params = torchvision" if self.torch_params == self.spec_params
                  else f"{self.spec_params:,} params, torchvision {self.torch_params:,}")
        probe = f"; probe {self.probe}: {self.probe_diff:.2e}" if self.probe else ""
        model = " (a --dynamic model)" if self.dynamic else ""
        return (f"{self.name}: {params}; input {list(self.input_shape)}{model}; output "
                f"{list(self.output_shape)}: max |ours - torch| / max |torch| = "
                f"{self.output_diff:.2e}{probe} -> {'ok' if self.ok else 'DIFFERENT'} "
                f"(tolerance {self.tolerance:g}, {self.seconds:.1f} s)")


def relative(ours: np.ndarray, theirs: np.ndarray, what: str) -> float:
    if ours.shape != theirs.shape:
        raise MapError(f"{what}: ours {list(ours.shape)}, torchvision {list(theirs.shape)}")
    scale = float(np.abs(theirs).max())
    return float(np.abs(ours - theirs).max()) / (scale if scale > 0 else 1.0)


def first_tensor(value):
    """The tensor of a module's output: segmentation's {'out': ...}, a tuple's first."""
    if isinstance(value, dict):
        value = value["out"] if "out" in value else next(iter(value.values()))
    if isinstance(value, (tuple, list)):
        value = value[0]
    return value


def sized_spec(spec, size: tuple[int, ...] | None, extra_output: str | None, final: tuple[str, ...]):
    """The spec with its input's spatial size replaced and the probe node as a further output."""
    update = {}
    if size is not None:
        (input_name, shape), = spec.inputs.items()
        if len(size) != len(shape) - 1:
            raise MapError(f"--size {size} needs {len(shape) - 1} values for input {shape}")
        update["inputs"] = {input_name: [shape[0], *size]}
    if extra_output is not None:
        update["outputs"] = [*final, extra_output]
    return spec.model_copy(update=update) if update else spec


def check(name: str, *, size: tuple[int, ...] | None = None, tolerance: float = 1e-5,
          seed: int = 0, keep: Path | None = None, tv=None, dynamic: bool = False) -> Result:
    """Compare specs/<name>.yaml with torchvision's model, loading a torch.save'd state_dict
    through graphcnn's importer (a DataError when it does not fit), MapError when the case does
    not fit, Missing without torchvision. `dynamic`:
    compile at the spec's own size with every spatial axis symbolic (`compile --dynamic`), and
    run that one model at `size`."""
    import torch

    import graphcnn
    from graphcnn.deploy.export import ExportOptions, export
    from graphcnn.runtime import session

    start = time.perf_counter()
    tv = tv or import_torchvision()
    case = read_case(name)
    spec = graphcnn.load_spec(SPECS / f"{name}.yaml")
    base = graphcnn.check_spec(spec)
    size = size or case.size
    if size is None and any(not isinstance(d, int) for d in next(iter(spec.inputs.values()))):
        raise MapError(f"{name}'s input is symbolic: give --size (or `size:` in its map)")
    probe = case.probe
    extra = probe["spec"] if probe else None
    if dynamic:
        from graphcnn.graph.sweep import axis_names

        run_shape = sized_spec(spec, size, None, base.outputs).inputs
        spec = sized_spec(spec, None, extra, base.outputs)
    else:
        spec = sized_spec(spec, size, extra, base.outputs)
    checked = graphcnn.check_spec(spec)
    (input_name, shape), = (run_shape if dynamic else checked.inputs).items()
    axes = tuple(axis_names(checked.inputs[input_name])) if dynamic else ()

    model = build_torchvision(tv, case.builder or name, case.kwargs)
    randomise(model, seed)
    torch_params = sum(p.numel() for p in model.parameters())
    x = np.random.default_rng(seed).standard_normal((1, *shape)).astype(np.float32)

    captured = []
    if probe:
        modules = dict(model.named_modules())
        if probe["torch"] not in modules:
            raise MapError(f"probe: torchvision's model has no module '{probe['torch']}'")
        modules[probe["torch"]].register_forward_hook(
            lambda _m, _i, out: captured.append(first_tensor(out).detach().clone()))
    with torch.no_grad():
        theirs = first_tensor(model(torch.from_numpy(x))).numpy()

    with tempfile.TemporaryDirectory() as tmp:
        folder = keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = folder / f"{name}.pth"
        torch.save(model.state_dict(), checkpoint)
        del model
        opts = ExportOptions(weights=str(checkpoint), seed=seed, dynamic=axes)
        onnx_model, notes = export(checked, spec.to_yaml(), opts)
    sess = session(onnx_model)
    del onnx_model
    outputs = sess.run(None, {input_name: x})
    output_diff = relative(outputs[0], theirs, f"{name} output")
    probe_diff = None
    if probe:
        probe_diff = relative(outputs[-1], captured[0].numpy(),
                              f"{name} probe {probe['torch']} / {probe['spec']}")
    return Result(name, torch_params, checked.total_params, tuple(x.shape), tuple(theirs.shape),
                  output_diff, f"{probe['torch']} = {probe['spec']}" if probe else None,
                  probe_diff, tolerance, time.perf_counter() - start, dynamic, notes[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="specs with a case in tools/torchvision_cases/ (default: all of them)")
    parser.add_argument("--size", help="spatial input size, e.g. 64,64 (default: the map's "
                        "`size`, else the spec's)")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest max |ours - torch| / max |torch| accepted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dynamic", action="store_true", help="compile at the spec's own size "
                        "with the spatial axes symbolic (compile --dynamic), run at --size")
    parser.add_argument("--keep", type=Path, help="keep the checkpoints (NAME.pth) in this folder")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split(",")) if args.size else None
    try:
        tv = import_torchvision()
    except Missing as exc:
        print(f"cannot check against torchvision: {exc}\ninstall the oracles: a CPU build of "
              "torch (e.g. 2.13.0+cpu), then pip install --no-deps torchvision==0.28.0 "
              "(README.md: Checking against torchvision)", file=sys.stderr)
        return 2
    from graphcnn.errors import GraphCnnError

    failed = 0
    for name in args.names or case_names():
        try:
            result = check(name, size=size, tolerance=args.tolerance, seed=args.seed,
                           keep=args.keep, tv=tv, dynamic=args.dynamic)
        except (MapError, GraphCnnError) as exc:  # a case or checkpoint that does not fit
            print(f"{name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(result.load_report, flush=True)
        print(result.line(), flush=True)
        failed += not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

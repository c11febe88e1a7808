"""A Triton Inference Server model repository for a model (`graphcnn export-triton`):
DIR/NAME/config.pbtxt, DIR/NAME/VERSION/model.onnx (external data beside it past 2 GiB) and
DIR/NAME/labels.txt, for Triton's onnxruntime backend. graphcnn serves nothing itself: it writes
what the existing engine reads, with what only graphcnn knows (the admissible sizes of a
`--dynamic` axis become TensorRT's shape profile).

The config is protobuf text written here field by field (deterministic, no dependency):
Triton's schema ships in tritonclient, which is a test oracle (tests/test_triton.py parses
every config with its ModelConfig), not something a user needs to write a repository."""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
from google.protobuf.text_encoding import CEscape

from ..errors import RunError
from ..fileio import check_output, write_error, write_text_atomic
from .preprocess import read_labels

PLATFORM = "onnxruntime_onnx"
MODEL_FILE, LABELS_FILE, CONFIG_FILE = "model.onnx", "labels.txt", "config.pbtxt"
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
ACCELERATORS = {"openvino": "cpu", "tensorrt": "gpu"}  # the instance kind each runs on
TRT_PRECISIONS = ("FP32", "FP16", "INT8")
_T = onnx.TensorProto
DATA_TYPES = {_T.FLOAT: "TYPE_FP32", _T.FLOAT16: "TYPE_FP16", _T.BFLOAT16: "TYPE_BF16",
              _T.DOUBLE: "TYPE_FP64", _T.UINT8: "TYPE_UINT8", _T.INT8: "TYPE_INT8",
              _T.UINT16: "TYPE_UINT16", _T.INT16: "TYPE_INT16", _T.UINT32: "TYPE_UINT32",
              _T.INT32: "TYPE_INT32", _T.UINT64: "TYPE_UINT64", _T.INT64: "TYPE_INT64",
              _T.BOOL: "TYPE_BOOL", _T.STRING: "TYPE_STRING"}


@dataclass(frozen=True)
class TritonOptions:
    name: str
    version: int = 1
    max_batch: int | None = None      # None: 1 when the model has a batch axis, else 0
    dynamic_batching: bool = False
    preferred: tuple[int, ...] = ()
    max_queue_delay_us: int | None = None
    instances: int | None = None
    kind: str | None = None           # cpu | gpu; None: Triton's choice
    accelerator: str | None = None    # openvino | tensorrt
    trt_precision: str | None = None  # FP32 | FP16 | INT8; None: the model's own precision
    size_range: tuple[int, int] | None = None  # searched for the TensorRT profile; None: 1..2x
    force: bool = False


def check_options(opts: TritonOptions) -> None:
    """The flag combinations that are wrong whatever the model (before anything is compiled)."""
    _check_name(opts.name)
    if opts.version < 1:
        raise RunError("--version is a positive whole number (Triton's version folders)",
                       received=str(opts.version))
    if opts.max_batch is not None and opts.max_batch < 0:
        raise RunError("--max-batch cannot be negative", received=str(opts.max_batch))
    _check_batching(opts)
    if opts.instances is not None and opts.instances < 1:
        raise RunError("--instances takes a count of at least 1", received=str(opts.instances))
    wanted = ACCELERATORS.get(opts.accelerator)
    if wanted and opts.kind and opts.kind != wanted:
        raise RunError(f"--accelerator {opts.accelerator} runs on {wanted.upper()} instances",
                       received=f"--kind {opts.kind}", hint=f"--kind {wanted}")
    if opts.trt_precision and opts.accelerator != "tensorrt":
        raise RunError("--trt-precision needs --accelerator tensorrt")


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise RunError("the model name becomes a folder of the repository: no '/', no leading "
                       "'.'", received=repr(name), hint="--name NAME")


def _check_batching(opts: TritonOptions) -> None:
    if not opts.dynamic_batching and (opts.preferred or opts.max_queue_delay_us is not None):
        raise RunError("--preferred and --max-queue-delay-us need --dynamic-batching")
    if opts.dynamic_batching and opts.max_batch is not None and opts.max_batch < 1:
        raise RunError("--dynamic-batching needs --max-batch of at least 1",
                       received=f"--max-batch {opts.max_batch}")
    if opts.max_queue_delay_us is not None and opts.max_queue_delay_us < 0:
        raise RunError("--max-queue-delay-us cannot be negative")
    limit = opts.max_batch if opts.max_batch is not None else 1
    bad = [b for b in opts.preferred if not 1 <= b <= limit]
    if bad:
        raise RunError(f"--preferred batch sizes must lie within 1..{limit} (--max-batch)",
                       received=",".join(map(str, opts.preferred)))


# --- the model's tensors as Triton sees them ---------------------------------------------------

@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: tuple        # ONNX's: a size, or a symbol (str) or None where it is not fixed

    def config_dims(self, batched: bool) -> list[int]:
        """Without the batch axis when Triton batches; -1 where the model's axis is symbolic."""
        return [d if isinstance(d, int) else -1 for d in self.dims[1 if batched else 0:]]


def tensors(values) -> list[Tensor]:
    out = []
    for v in values:
        kind = v.type.tensor_type
        if kind.elem_type not in DATA_TYPES:
            raise RunError(f"'{v.name}' has a tensor type Triton has no name for",
                           received=_T.DataType.Name(kind.elem_type))
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in kind.shape.dim)
        out.append(Tensor(v.name, DATA_TYPES[kind.elem_type], dims))
    return out


def has_batch_axis(model: onnx.ModelProto) -> bool:
    """Triton batches along a first axis that every input and output leaves free (server#1889)."""
    values = tensors(model.graph.input) + tensors(model.graph.output)
    return all(t.dims and not isinstance(t.dims[0], int) for t in values)


def max_batch_of(model: onnx.ModelProto, opts: TritonOptions) -> int:
    batched = has_batch_axis(model)
    if opts.max_batch is None:
        return 1 if batched else 0
    if opts.max_batch > 0 and not batched:
        raise RunError("--max-batch above 0 needs a free batch axis: this model's batch is fixed",
                       hint="--max-batch 0, or compile without --batch")
    if opts.max_batch == 0 and batched:
        # Triton's onnxruntime backend would autofill max_batch_size for a batchable model, and
        # the dims written with the batch axis would then no longer match the model
        raise RunError("--max-batch 0 for a model with a free batch axis",
                       hint="--max-batch B (1 or more): Triton sends batches of up to B")
    return opts.max_batch


# --- config.pbtxt ---------------------------------------------------------------------------

def config_text(model: onnx.ModelProto, opts: TritonOptions, labels: bool,
                profile: dict[str, str] | None) -> str:
    """The config, in model_config.proto's field order."""
    max_batch = max_batch_of(model, opts)
    lines = [f"name: {_quote(opts.name)}", f"platform: {_quote(PLATFORM)}",
             f"max_batch_size: {max_batch}"]
    lines += _tensor_list("input", tensors(model.graph.input), max_batch > 0, None)
    lines += _tensor_list("output", tensors(model.graph.output), max_batch > 0,
                          LABELS_FILE if labels else None)
    lines += _instance_group(opts) + _dynamic_batching(opts)
    lines += _optimization(opts, trt_precision(model, opts), profile)
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + CEscape(text, as_utf8=True) + '"'


def _tensor_list(field: str, items: list[Tensor], batched: bool, labels: str | None) -> list[str]:
    """Labels go on the first output: graphcnn.labels names the first output's classes."""
    blocks = []
    for i, t in enumerate(items):
        dims = t.config_dims(batched)
        body = [f"name: {_quote(t.name)}", f"data_type: {t.data_type}",
                f"dims: [ {', '.join(map(str, dims or [1]))} ]"]
        if not dims:  # one value per sample: Triton wants dims [1] reshaped to a scalar
            body.append("reshape: { shape: [ ] }")
        if labels and i == 0:
            body.append(f"label_filename: {_quote(labels)}")
        blocks.append(["  {"] + [f"    {b}" for b in body] + ["  }"])
    return [f"{field} ["] + _commas(blocks) + ["]"]


def _commas(blocks: list[list[str]]) -> list[str]:
    """The text format's list syntax needs a comma between elements."""
    out = []
    for i, block in enumerate(blocks):
        out += block[:-1] + [block[-1] + ("," if i < len(blocks) - 1 else "")]
    return out


def _instance_group(opts: TritonOptions) -> list[str]:
    if opts.instances is None and opts.kind is None:
        return []  # Triton's default: one instance per GPU, or one on the CPU
    body = [f"    count: {opts.instances or 1}"]
    body += [f"    kind: {KINDS[opts.kind]}"] if opts.kind else []
    return ["instance_group [", "  {", *body, "  }", "]"]


def _dynamic_batching(opts: TritonOptions) -> list[str]:
    if not opts.dynamic_batching:
        return []
    body = [f"  preferred_batch_size: [ {', '.join(map(str, sorted(set(opts.preferred))))} ]"] \
        if opts.preferred else []
    if opts.max_queue_delay_us is not None:
        body.append(f"  max_queue_delay_microseconds: {opts.max_queue_delay_us}")
    return ["dynamic_batching {", *body, "}"] if body else ["dynamic_batching { }"]


def _optimization(opts: TritonOptions, precision: str | None, profile) -> list[str]:
    if not opts.accelerator:
        return []
    params = {"precision_mode": precision} if precision else {}
    for key in ("min", "opt", "max") if profile else ():
        params[f"trt_profile_{key}_shapes"] = profile[key]
    body = [f"        parameters {{ key: {_quote(k)} value: {_quote(v)} }}"
            for k, v in params.items()]
    field = f"{ACCELERATORS[opts.accelerator]}_execution_accelerator"
    return ["optimization {", "  execution_accelerators {", f"    {field}: [", "      {",
            f"        name: {_quote(opts.accelerator)}", *body, "      }", "    ]", "  }", "}"]


def trt_precision(model: onnx.ModelProto, opts: TritonOptions) -> str | None:
    """--trt-precision, else what the model computes in: INT8 for QDQ, FP16 for fp16 weights."""
    if opts.accelerator != "tensorrt":
        return None
    if opts.trt_precision:
        return opts.trt_precision
    if any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return "INT8"
    if any(t.data_type == _T.FLOAT16 for t in model.graph.initializer):
        return "FP16"
    return "FP32"


# --- TensorRT's shape profile from the admissible sizes --------------------------------------

def trt_profile(model: onnx.ModelProto, opts: TritonOptions) -> dict[str, str] | None:
    """min / opt / max shapes of every input ("image:1x3x32x32,..."), where an axis is free:
    the batch from 1 through --max-batch (opt: the largest preferred size), a `--dynamic` axis
    from the smallest to the largest size its spec admits within the range (opt: the spec's
    own size), found by the sweep behind `graphcnn sizes`. None when no axis is free."""
    if opts.accelerator != "tensorrt":
        return None
    inputs = tensors(model.graph.input)
    free = {d for t in inputs for d in t.dims[1:] if not isinstance(d, int)}
    batch = has_batch_axis(model)
    if not free and not batch:
        return None
    max_batch = max_batch_of(model, opts)
    extents = _spatial_extents(model, free, opts.size_range) if free else {}
    batches = (1, max(opts.preferred, default=max_batch), max_batch)
    shapes = {k: [] for k in ("min", "opt", "max")}
    for t in inputs:
        _check_profile_name(t.name)
        for i, key in enumerate(shapes):
            dims = [batches[i] if j == 0 and batch else extents[d][i] if d in extents else d
                    for j, d in enumerate(t.dims)]
            shapes[key].append(f"{t.name}:{'x'.join(map(str, dims))}")
    return {k: ",".join(v) for k, v in shapes.items()}


def _check_profile_name(name: str) -> None:
    if any(c in name for c in ":,"):
        raise RunError("TensorRT's shape profile cannot name an input with ':' or ','",
                       received=name)


def _spatial_extents(model: onnx.ModelProto, free: set, size_range) -> dict:
    """axis name -> (smallest, the spec's own, largest) admissible size."""
    checked = _carried_spec(model)
    unnamed = [d for d in free if d is None]
    if unnamed:
        raise RunError("an input axis of the model is free but unnamed: its sizes are unknown")
    return {name: axis_extent(checked, name, size_range) for name in sorted(free)}


def _carried_spec(model: onnx.ModelProto):
    from ..graph import check
    from ..spec import NetworkSpec

    text = {p.key: p.value for p in model.metadata_props}.get("graphcnn_spec")
    if text is None:
        raise RunError("the model has free spatial axes but carries no graphcnn spec, so the "
                       "sizes it admits (TensorRT's profile) are unknown")
    return check(NetworkSpec.from_text(text, "<the model's spec>"))


def axis_extent(checked, name: str, size_range) -> tuple[int, int, int]:
    """The smallest and largest admissible size of one spatial axis within the range (the
    others at the checked sizes), and the checked size itself between them."""
    from ..graph.sweep import Sweep
    from ..graph.wiring import build_graph, topological
    from ..spec.expand import flatten

    flat = flatten(checked.spec)
    flat.inputs = dict(checked.inputs)  # a symbolic spec at the sizes it was checked at
    sweep = Sweep(flat, topological(build_graph(flat), flat), axis=name)
    low, high = size_range or (1, 2 * sweep.base)
    if not low <= sweep.base <= high:
        raise RunError(f"--range must hold the spec's own size of {name}, {sweep.base}",
                       received=f"{low}:{high}")
    # the checked size is admissible, so both scans stop there at the latest
    smallest = next(n for n in range(low, sweep.base + 1) if sweep.admits(n) is not None)
    largest = next(n for n in range(high, sweep.base - 1, -1) if sweep.admits(n) is not None)
    return smallest, sweep.base, largest


# --- the repository on disk --------------------------------------------------------------------

def model_folder(repo: str | Path, opts: TritonOptions) -> tuple[Path, Path]:
    folder = Path(repo) / opts.name
    return folder, folder / str(opts.version)


def check_target(repo: str | Path, opts: TritonOptions) -> None:
    """Refuse before any work: an existing version without --force, a version folder holding
    one of the command's inputs, a config or labels path that is no regular file."""
    if Path(repo).exists() and not Path(repo).is_dir():
        raise RunError(f"--repo {repo} is not a folder")
    folder, version = model_folder(repo, opts)
    if version.exists() or version.is_symlink():
        if not opts.force:
            raise RunError(f"{version} exists; it is never overwritten without --force")
        if not version.is_dir() or version.is_symlink():
            raise RunError(f"{version} exists and is not a folder; it is never replaced")
        for path in version.rglob("*"):
            if path.is_file() and not path.is_symlink():
                check_output(path)  # refuses replacing one of the command's inputs
    if folder.is_dir():
        for name in (CONFIG_FILE, LABELS_FILE):
            check_output(folder / name)


@dataclass(frozen=True)
class Written:
    folder: Path
    version: Path
    labels: int          # names written to labels.txt (0: none)
    model: onnx.ModelProto


def write_repository(repo: str | Path, opts: TritonOptions,
                     write_model: Callable[[Path], onnx.ModelProto]) -> Written:
    """write_model(path) writes the model file and returns it (its initializers may be left
    out). The version folder is built hidden beside its place and renamed into it whole, so
    Triton never loads half a version; a failure leaves the repository as it was."""
    check_options(opts)
    check_target(repo, opts)
    folder, version = model_folder(repo, opts)
    created = _missing_parents(folder)
    work = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{version.name}.", suffix=".tmp", dir=folder))
        # mkdtemp's 0700 would hide the version from a server running as another user
        os.chmod(work, stat.S_IMODE(folder.stat().st_mode))
        model = write_model(work / MODEL_FILE)
        labels = _labels_text(model)
        config = config_text(model, opts, labels is not None, trt_profile(model, opts))
        _swap_in(work, version)
    except BaseException as exc:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        _remove_empty(created)
        if isinstance(exc, OSError):  # read-only, no space, no permission: name the path
            raise write_error(folder, exc) from None
        raise
    if labels is not None:
        write_text_atomic(folder / LABELS_FILE, labels)
    write_text_atomic(folder / CONFIG_FILE, config)  # last: a config names what is there
    return Written(folder, version, labels.count("\n") if labels else 0, model)


def _labels_text(model: onnx.ModelProto) -> str | None:
    labels = read_labels(model)
    if labels is None:
        return None
    broken = [name for name in labels if "\n" in name or "\r" in name]
    if broken:
        raise RunError("a label holds a line break; Triton's labels file has one name a line",
                       received=repr(broken[0]))
    return "".join(name + "\n" for name in labels)


def _missing_parents(folder: Path) -> list[Path]:
    """The folders mkdir will create, deepest first (removed again when the export fails)."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _swap_in(work: Path, version: Path) -> None:
    """Rename the finished folder onto the version; a replaced version (--force) is moved
    aside first and put back when the rename fails."""
    aside = None
    if version.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{version.name}.old.", suffix=".tmp",
                                      dir=version.parent))
        os.replace(version, aside / version.name)
    try:
        os.replace(work, version)
    except BaseException:
        if aside is not None:  # when this fails too, the old version stays in `aside`
            os.replace(aside / version.name, version)
            aside.rmdir()
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)

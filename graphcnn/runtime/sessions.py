"""onnxruntime sessions: the one place that picks execution providers, threads and spinning.

Every session graphcnn runs a model in (`graphcnn run`, `bench`, the training step, the
per-epoch evaluation, the quantization and precision reports) is made by `session`, so how
worker threads behave is decided here and nowhere else.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..errors import RunError
from .failures import load_failure

PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider", "dml": "DmlExecutionProvider",
                    "coreml": "CoreMLExecutionProvider", "openvino": "OpenVINOExecutionProvider"}

Spinning = Literal["always", "never", "during-run"]
MAX_THREADS = 1024  # intra-op threads: onnxruntime takes an int32, and each is a real thread

# The session config entries of each spinning mode ("always" is onnxruntime's default).
# "never": idle worker threads do not busy-wait, which matters when several sessions share the
# cores: a spinning idle session took half the CPU from the other (resnet50 batch 1: 79 ms
# instead of 40 ms when two sessions alternated).
# "during-run": threads spin while a run goes on (woken from sleep before every op, 2 threads
# took 15% longer on the small ResNet's training step) and stop when it ends, where they would
# take the cores from the caller's own work between runs (MNIST-1D's training: 10.2 s instead
# of 7.2 s when they went on spinning between steps).
SPINNING_ENTRIES: dict[str, tuple[tuple[str, str], ...]] = {
    "always": (),
    "never": (("session.intra_op.allow_spinning", "0"),),
    "during-run": (("session.intra_op.allow_spinning", "1"),
                   ("session.force_spinning_stop", "1")),
}


# onnxruntime's memory pattern in the training step's session on the CPU provider (StepRunner;
# train/memory.py's prediction assumes the same): off, see session_options
CPU_STEP_MEMORY_PATTERN = False


def resolve_provider(name: str) -> list[str]:
    """The providers list for onnxruntime, CPU as the fallback for ops a device lacks."""
    import onnxruntime as ort

    full = PROVIDER_ALIASES.get(name.lower(), name)
    available = ort.get_available_providers()
    if full not in available:
        short = {v: k for k, v in PROVIDER_ALIASES.items()}
        names = ", ".join(f"{short.get(p, p)} ({p})" if p in short else p for p in available)
        raise RunError(f"execution provider '{name}' is not available in this onnxruntime",
                       expected=f"one of: {names}", received=full,
                       hint="for cuda, install onnxruntime-gpu" if full.startswith("CUDA") else None)
    return [full] + (["CPUExecutionProvider"] if full != "CPUExecutionProvider" else [])


def session(model, provider: str = "cpu", threads: int | None = None,
            spinning: Spinning = "always", nchwc: bool = False,
            options: dict[str, str] | None = None, memory_pattern: bool = True,
            optimized_to: str | None = None):
    """An InferenceSession for a path, bytes or ModelProto. `threads` sets the intra-op pool
    (default: onnxruntime's, one per core); `spinning` says when idle worker threads busy-wait
    (see SPINNING_ENTRIES); `nchwc` runs a ModelProto's convs with non-constant weights in
    onnxruntime's blocked layout on the CPU provider (runtime/blocked.py); `options`: the
    chosen provider's own options (e.g. CUDA's enable_cuda_graph); `optimized_to`: a path
    where onnxruntime writes the graph its optimizer made (the one that runs)."""
    import onnxruntime as ort

    providers = resolve_provider(provider)
    if nchwc:
        model = _blocked_for(model, providers)
    chosen = [(providers[0], options), *providers[1:]] if options else providers
    settings = session_options(threads, spinning, memory_pattern)
    if optimized_to is not None:
        settings.optimized_model_filepath = str(optimized_to)
        settings.log_severity_level = 3  # its warning that the file is CPU-specific: we know
    try:
        return ort.InferenceSession(_serialized(model), settings, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own exception types for bad models
        raise load_failure(model, exc) from None


def session_options(threads: int | None = None, spinning: Spinning = "always",
                    memory_pattern: bool = True):
    """SessionOptions with this intra-op thread count and spinning mode. `memory_pattern`
    False: every run takes its values one by one from the arena, as the first run does; with
    onnxruntime's pattern, later runs ask for one block that the first run's regions cannot
    hold, and the arena keeps both (the small ResNet's training step: 262 against 126 MiB at
    the same speed; tools/train_memory.py --options)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None and not 0 <= threads <= MAX_THREADS:
        raise RunError(f"threads must be from 1 to {MAX_THREADS:,} (0: onnxruntime's default)",
                       received=str(threads))
    if threads:
        options.intra_op_num_threads = threads
    for key, value in SPINNING_ENTRIES[spinning]:
        options.add_session_config_entry(key, value)
    options.enable_mem_pattern = memory_pattern
    return options


def _blocked_for(model, providers: list[str]):
    from .blocked import for_providers

    return for_providers(model, providers)


def _serialized(model):
    """What InferenceSession takes: bytes for a ModelProto, a str for a Path, else as given."""
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    return str(model) if isinstance(model, Path) else model

"""onnxruntime sessions: execution-provider choice and running a model."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RunError

PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider", "dml": "DmlExecutionProvider",
                    "coreml": "CoreMLExecutionProvider", "openvino": "OpenVINOExecutionProvider"}


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


def session(model, provider: str = "cpu", threads: int | None = None, spinning: bool = True):
    """An InferenceSession for a path, bytes or ModelProto. `spinning=False` stops its idle
    worker threads from busy-waiting, which matters when several sessions share the cores: a
    spinning idle session took half the CPU from the other (resnet50 batch 1: 79 ms instead of
    40 ms when two sessions alternated)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model) \
        if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, options, providers=resolve_provider(provider))
    except RunError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for bad models
        raise RunError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    seconds: float


def random_inputs(sess, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal inputs; symbolic axes get `batch`."""
    if batch < 1:
        raise RunError("batch must be at least 1", received=str(batch))
    rng = np.random.default_rng(seed)
    feeds = {}
    sizes = dynamic_sizes(sess)
    for inp in sess.get_inputs():
        dims = [d if isinstance(d, int) else sizes.get(d, batch) for d in inp.shape]
        feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def dynamic_sizes(sess) -> dict[str, int]:
    """A size that fits each dynamic spatial axis (`compile --dynamic` records the checked one)."""
    text = sess.get_modelmeta().custom_metadata_map.get("graphcnn_dynamic", "")
    return {k: int(v) for k, v in (item.split("=") for item in text.split(",") if item)}


def run(sess, feeds: dict[str, np.ndarray]) -> RunResult:
    check_feeds(sess, feeds)
    start = time.perf_counter()
    values = sess.run(None, feeds)
    seconds = time.perf_counter() - start
    return RunResult({o.name: v for o, v in zip(sess.get_outputs(), values)}, seconds)


def check_feeds(sess, feeds: dict[str, np.ndarray]) -> None:
    for inp in sess.get_inputs():
        if inp.name not in feeds:
            raise RunError(f"no value for model input '{inp.name}'", expected=str(inp.shape))
        got = feeds[inp.name].shape
        want = inp.shape
        if len(got) != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want, got)):
            raise RunError(f"input '{inp.name}' has the wrong shape", expected=str(want),
                           received=str(list(got)))

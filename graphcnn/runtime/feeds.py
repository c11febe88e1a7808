"""Feeding a session: random inputs of the right shapes, checked feeds, one timed run."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import RunError
from .failures import run_session

# Elements of one random input (float64 while drawn): a --batch of 10**12 is refused here, before
# numpy allocates; the same bound as a layer output's per sample (graph/limits.py).
MAX_RANDOM_ELEMENTS = 2 ** 31 - 1


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    seconds: float


# Random values for an input of each element type onnxruntime names: images whose
# preprocessing was folded into the model (`compile --fold-preprocess`) take uint8 pixels.
RANDOM_INTS = {"tensor(uint8)": (np.uint8, 0, 256), "tensor(int8)": (np.int8, -128, 128),
               "tensor(int64)": (np.int64, 0, 2), "tensor(int32)": (np.int32, 0, 2)}


def random_inputs(sess, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal inputs (uniform integers for an integer input: uint8 pixels over
    0-255); symbolic axes get `batch`."""
    if batch < 1:
        raise RunError("batch must be at least 1", received=str(batch))
    rng = np.random.default_rng(seed)
    feeds = {}
    sizes = dynamic_sizes(sess)
    for inp in sess.get_inputs():
        dims = [d if isinstance(d, int) else sizes.get(d, batch) for d in inp.shape]
        if int(np.prod(dims, dtype=object)) > MAX_RANDOM_ELEMENTS:
            raise RunError(f"a random input '{inp.name}' of shape {dims} is too large",
                           expected=f"at most {MAX_RANDOM_ELEMENTS:,} elements",
                           hint="give a smaller --batch")
        feeds[inp.name] = random_values(rng, inp.type, dims)
    return feeds


def random_values(rng, onnx_type: str, dims: list[int]) -> np.ndarray:
    if onnx_type in RANDOM_INTS:
        kind, low, high = RANDOM_INTS[onnx_type]
        return rng.integers(low, high, dims).astype(kind)
    kind = {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(onnx_type, np.float32)
    return rng.standard_normal(dims).astype(kind)


def dynamic_sizes(sess) -> dict[str, int]:
    """A size that fits each dynamic spatial axis (`compile --dynamic` records the checked one)."""
    text = sess.get_modelmeta().custom_metadata_map.get("graphcnn_dynamic", "")
    sizes = {}
    for item in (i for i in text.split(",") if i):
        name, equals, value = item.partition("=")
        if not (equals and name.strip() and value.strip().isascii() and value.strip().isdigit()
                and 0 < int(value) <= 2 ** 31 - 1):
            raise RunError("the model's graphcnn_dynamic metadata is malformed",
                           expected="name=size pairs, comma-separated, sizes from 1 "
                           "(what compile --dynamic writes)", received=text[:200])
        sizes[name.strip()] = int(value)
    return sizes


def run(sess, feeds: dict[str, np.ndarray]) -> RunResult:
    check_feeds(sess, feeds)
    start = time.perf_counter()
    values = run_session(sess, feeds)
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

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


def random_inputs(sess, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal inputs; symbolic axes get `batch`."""
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
        feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def dynamic_sizes(sess) -> dict[str, int]:
    """A size that fits each dynamic spatial axis (`compile --dynamic` records the checked one)."""
    text = sess.get_modelmeta().custom_metadata_map.get("graphcnn_dynamic", "")
    return {k: int(v) for k, v in (item.split("=") for item in text.split(",") if item)}


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

"""Latency and throughput of ONNX models in onnxruntime, measured side by side.

With two models, runs alternate (A, B, A, B, ...) inside one process so that a noisy machine
slows both alike; the ratios are what to read. Their worker threads do not spin between runs,
so neither session takes cores from the other.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import RunError
from ..runtime import random_inputs, session
from ..runtime.failures import quiet_run, run_failure


@dataclass
class Timing:
    batch: int
    seconds: list[float] = field(default_factory=list)

    def stat(self, q: float) -> float:
        return float(np.quantile(self.seconds, q))

    def row(self) -> dict:
        median = self.stat(0.5)
        return {"batch": self.batch, "min_ms": min(self.seconds) * 1e3, "median_ms": median * 1e3,
                "p90_ms": self.stat(0.9) * 1e3, "samples_per_s": self.batch / median}


def bench(models: list, batches: list[int], *, provider: str = "cpu", threads: int | None = None,
          repeat: int = 20, warmup: int = 3, seed: int = 0) -> dict:
    """{'results': [[Timing per batch] per model], 'max_abs_diff': {batch: float}}."""
    if repeat < 1 or warmup < 0:  # no timing at all has no median
        raise RunError("bench needs repeat >= 1 and warmup >= 0",
                       received=f"repeat={repeat}, warmup={warmup}")
    # sessions that take turns must not spin while waiting, or each slows the other
    spinning = "always" if len(models) == 1 else "never"
    sessions = [session(m, provider, threads, spinning=spinning) for m in models]
    results = [[Timing(b) for b in batches] for _ in sessions]
    diffs = {}
    quiet = quiet_run()  # made once: not part of any timed run
    for bi, batch in enumerate(batches):
        feeds = [_feeds_for(s, batch, seed) for s in sessions]
        outs = [_run(s, f, quiet) for s, f in zip(sessions, feeds)]
        for _ in range(warmup):
            for s, f in zip(sessions, feeds):
                _run(s, f, quiet)
        for _ in range(repeat):
            for si, (s, f) in enumerate(zip(sessions, feeds)):
                start = time.perf_counter()
                _run(s, f, quiet)
                results[si][bi].seconds.append(time.perf_counter() - start)
        if len(outs) > 1:
            diffs[batch] = max(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                               for a, b in zip(outs[0], outs[1]) if a.shape == b.shape)
    return {"results": results, "max_abs_diff": diffs}


def _run(sess, feeds: dict, options) -> list:
    """One run; a failure inside onnxruntime is a RunError naming the node (run_failure)."""
    try:
        return sess.run(None, feeds, options)
    except Exception as exc:  # onnxruntime's own exception types
        raise run_failure(sess, exc) from None


def _feeds_for(sess, batch: int, seed: int) -> dict:
    """Same random values for every model; cast to each model's input type (fp16 models)."""
    feeds = random_inputs(sess, batch, seed)
    for inp in sess.get_inputs():
        if inp.type == "tensor(float16)":
            feeds[inp.name] = feeds[inp.name].astype(np.float16)
    return feeds

"""Deterministic weight initialisation: each tensor from its own stream, keyed by the seed and
the tensor's name, so adding a layer never changes the weights of the others."""
from __future__ import annotations

import math
import zlib

import numpy as np

from ..layers import Param


def initial_value(name: str, param: Param, seed: int) -> np.ndarray:
    """He normal (std sqrt(2 / fan_in)) for 'he', else a constant."""
    if param.init == "he":
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        values = rng.standard_normal(param.shape, dtype=np.float32)
        values *= np.float32(math.sqrt(2.0 / max(param.fan_in, 1)))
        return values
    fill = {"zeros": 0.0, "ones": 1.0}.get(param.init, param.init)
    return np.full(param.shape, fill, dtype=np.float32)

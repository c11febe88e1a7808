"""Every layer family registers its ops on import; the registry is the single list of ops."""
from . import activation, conv, dense, merge, norm, pool  # noqa: F401  (registration)
from . import detect  # noqa: F401  (registration)
from . import resample, shape  # noqa: F401  (registration)
from . import adaptive, resize  # noqa: F401  (registration)
from . import channels, groupnorm  # noqa: F401  (registration)
from . import regularize  # noqa: F401  (registration)
from .base import GLOBAL, REGISTRY, Layer, Param, Shape, Window, fmt_shape

__all__ = ["GLOBAL", "REGISTRY", "Layer", "Param", "Shape", "Window", "fmt_shape"]

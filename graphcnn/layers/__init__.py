"""Every layer family registers its ops on import; the registry is the single list of ops."""
from . import activation, conv, dense, merge, norm, pool  # noqa: F401  (registration)
from . import detect  # noqa: F401  (registration)
from . import resample, shape  # noqa: F401  (registration)
from . import adaptive, resize  # noqa: F401  (registration)
from . import channels, groupnorm  # noqa: F401  (registration)
from . import regularize  # noqa: F401  (registration)
from .base import GLOBAL, REGISTRY, Layer, Param, Shape, Window, fmt_shape
from . import plugins

# Third-party ops join here, after the built-in ones and before graphcnn.spec builds its schema
# from the registry (a plugin may import Layer from this package: it is bound above).
plugins.load_installed()

__all__ = ["GLOBAL", "REGISTRY", "Layer", "Param", "Shape", "Window", "fmt_shape"]

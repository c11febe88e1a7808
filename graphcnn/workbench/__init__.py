"""Tools that look at two or more networks at once (graphcnn diff). A layer above api/, deploy/
and runtime/ (it reads specs, models and weight files alike) and below commands/."""
from .diff import Diff, diff, diff_structure, diff_weights

__all__ = ["Diff", "diff", "diff_structure", "diff_weights"]

from .check import check
from .checked import CheckedGraph, NodeInfo, ReceptiveField
from .limits import Limits

__all__ = ["CheckedGraph", "Limits", "NodeInfo", "ReceptiveField", "check"]

from .model import BlockCall, BlockDef, NetworkSpec, Node

__all__ = ["BlockCall", "BlockDef", "NetworkSpec", "Node"]

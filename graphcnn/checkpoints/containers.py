"""Where in an unpickled checkpoint the tensors are, and their names.

A bare state dict is used as is; otherwise `key` (a dotted path) or one of the conventional
keys training scripts save under ("state_dict", "model", "ema", ...). Nested dicts of tensors
are flattened with "." joining; other values beside the tensors are listed, not read; a prefix
every name shares ("module." from DataParallel, "model." from Lightning) is stripped.
"""
from __future__ import annotations

from ..errors import DataError

CONVENTIONAL = ("state_dict", "model_state_dict", "model", "module", "net", "network", "params",
                "weights", "ema")
PREFIXES = ("module.", "model.")
MAX_DEPTH = 32  # nesting deeper than any checkpoint's; bounds the recursion
# names a checkpoint may hold (ResNet-200's state dict has about 3,000): a pickle whose dicts
# hold one child twice over, 30 levels deep, is 2 KB and names 2^30 tensors
MAX_NAMES = 100_000


def has_tensors(obj, is_tensor, depth: int = 0, seen: dict | None = None) -> bool:
    """Whether `obj` is a tensor or a dict with one inside. `seen` remembers each dict's answer:
    a pickle can make dicts that hold themselves, twice over (exponential without it)."""
    if is_tensor(obj):
        return True
    if not isinstance(obj, dict) or depth > MAX_DEPTH:
        return False
    seen = {} if seen is None else seen
    if id(obj) not in seen:
        seen[id(obj)] = False  # while looking inside: a cycle adds nothing
        seen[id(obj)] = any(has_tensors(v, is_tensor, depth + 1, seen) for v in obj.values())
    return seen[id(obj)]


def _keys(obj) -> str:
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}"
    shown = [str(k) for k in list(obj)[:12]]
    return "keys " + ", ".join(shown) + (" ..." if len(obj) > 12 else "") if obj else "no keys"


def _follow(top, key: str, path) -> tuple[dict, str, str]:
    """(the dict holding `key`, its last part, the path to that dict): `key` as a key of the
    top dict, else as a dotted path through nested dicts."""
    if isinstance(top, dict) and key in top:
        return top, key, ""
    node, parts = top, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise DataError(f"{path} has no '{key}'", expected="one of its top-level keys",
                            received=_keys(top))
        if i == len(parts) - 1:
            return node, part, ".".join(parts[:-1]) + "."
        node = node[part]
    raise AssertionError("unreachable")


def _beside(parent: dict, chosen, where: str = "") -> list[str]:
    """The other values next to the container (a Lightning checkpoint's epoch, optimizer
    state): listed by name, not looked into."""
    return [where + str(k) for k in parent if k != chosen]


def choose(top, key: str | None, is_tensor, path) -> tuple[str | None, dict, list[str]]:
    """(container, the dict holding the tensors, the names of the values beside it)."""
    if isinstance(top, dict) and top and all(is_tensor(v) for v in top.values()):
        return None, top, []
    if key is not None:
        parent, last, where = _follow(top, key, path)
        level = parent[last]
        if not isinstance(level, dict) or not has_tensors(level, is_tensor):
            raise DataError(f"'{key}' in {path} holds no tensors", expected="a dict of tensors",
                            received=_keys(level))
        return key, level, _beside(parent, last, where)
    if isinstance(top, dict):
        for name in CONVENTIONAL:
            if isinstance(top.get(name), dict) and has_tensors(top[name], is_tensor):
                return name, top[name], _beside(top, name)
        if has_tensors(top, is_tensor):
            return None, top, []
    what = "a single tensor" if is_tensor(top) else _keys(top)
    raise DataError(f"no named tensors found in {path}", expected="a state dict (names -> "
                    "tensors), or one under a key such as 'state_dict' (pass key=...)",
                    received=what)


def flatten(level: dict, is_tensor, path) -> tuple[dict, list[str]]:
    """Tensors by dotted name, and the names of the other values at that level."""
    tensors, ignored = {}, []

    def walk(node: dict, prefix: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise DataError(f"{path}: dicts nested deeper than {MAX_DEPTH} levels")
        if len(tensors) + len(ignored) + len(node) > MAX_NAMES:
            raise DataError(f"{path} names more than {MAX_NAMES:,} values (dicts shared "
                            "between levels multiply them)", expected="a state dict of tensors")
        for k, v in node.items():
            if not isinstance(k, str):
                if has_tensors(v, is_tensor):
                    raise DataError(f"{path}: a tensor is named {k!r}, not a string")
                ignored.append(prefix + str(k))
            elif is_tensor(v):
                if prefix + k in tensors:
                    raise DataError(f"{path}: two tensors are named '{prefix + k}'")
                tensors[prefix + k] = v
            elif isinstance(v, dict) and has_tensors(v, is_tensor):
                walk(v, prefix + k + ".", depth + 1)
            else:
                ignored.append(prefix + k)

    walk(level, "", 0)
    return tensors, ignored


def strip_prefix(names) -> str | None:
    """The prefix every name starts with (and has more after), or None."""
    names = list(names)
    for prefix in PREFIXES:
        if names and all(n.startswith(prefix) and len(n) > len(prefix) for n in names):
            return prefix
    return None


def select_flat(names, key: str | None, path) -> tuple[str | None, list[str]]:
    """For formats that store names only (npz, safetensors): `key` keeps the names under
    `key.` (the flattened form of a nested dict), and removes that part."""
    names = list(names)
    if key is None:
        return None, names
    inside = [n for n in names if n.startswith(key + ".") and len(n) > len(key) + 1]
    if not inside:
        tops = sorted({n.split(".")[0] for n in names})
        raise DataError(f"{path} has no tensors under '{key}'",
                        expected="one of its top-level name parts",
                        received=", ".join(tops[:12]) or "no tensors")
    return key, inside

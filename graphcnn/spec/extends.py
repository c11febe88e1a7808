"""`extends: base.yaml`: a spec written as changes to another spec.

The base (relative to the extending spec's folder; it may extend another, up to
MAX_EXTENDS_DEPTH, a cycle refused) is read and resolved first, then the child's keys are laid
over it:

- `nodes`: each child entry addresses the base's nodes by id. `{id: fc, ...}` replaces node fc
  where it stands; `{id: fc, delete: true}` removes it; an entry with `after: <id>` or
  `before: <id>` is a new node put there (several after one id keep their written order). An
  entry whose id the base lacks and that says neither is refused: a misspelt id would
  otherwise add a layer silently. A base without `nodes` takes the child's as they are.
- `blocks`, `training`, `preprocess`, `weights`, `scale` (every mapping but `inputs`) merge
  key by key, the child's value replacing the base's whole.
- `imports` add up (the base's made relative to the child's folder); every other key, `inputs`
  included (a renamed input must not become a second one), is the child's if it has it.

The merged data keeps each value's own location, so an error names the line of whichever file
wrote it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import Location, SpecError, nearest
from ..fileio import is_file
from .yamlio import LocatedData, grafted, load_yaml, read_text

MAX_EXTENDS_DEPTH = 16
_PLACING = ("after", "before", "delete")  # keys of a child's node entry that are not the node's
_WHOLE = ("inputs",)  # mappings the child replaces whole


def resolve_extends(located: LocatedData, path: Path | None) -> LocatedData:
    """The spec read from `path` (None: from text, resolved against the working folder) with
    its `extends:` chain merged in; a spec that extends nothing comes back as it is."""
    chain = (path.resolve(),) if path is not None else ()
    return _resolve(located, path.parent if path is not None else Path("."), chain)


def _resolve(located: LocatedData, folder: Path, chain: tuple[Path, ...]) -> LocatedData:
    data = located.data
    if not isinstance(data, dict) or "extends" not in data:
        return located
    name, loc = data["extends"], located.loc(("extends",))
    if not isinstance(name, str) or not name:
        raise SpecError("extends: names one base spec file", loc=loc, received=repr(name))
    base_path = folder / name
    _check_chain(base_path, name, chain, loc)
    base = load_yaml(read_text(base_path), str(base_path))
    if not isinstance(base.data, dict):
        raise SpecError("a base spec is a mapping (name, inputs, nodes, ...)", loc=base.loc(()),
                        received=type(base.data).__name__)
    base = _resolve(base, base_path.parent, chain + (base_path.resolve(),))
    return _merge(base, located, _relocate(base_path.parent, folder))


def _check_chain(path: Path, name: str, chain: tuple[Path, ...], loc: Location | None) -> None:
    if not is_file(path):
        raise SpecError(f"base spec '{name}' not found", loc=loc, expected=f"a file at {path}")
    if path.resolve() in chain:
        cycle = " -> ".join(p.name for p in chain + (path.resolve(),))
        raise SpecError(f"specs extend each other in a cycle: {cycle}", loc=loc)
    if len(chain) > MAX_EXTENDS_DEPTH:
        raise SpecError("specs extend each other too deeply", loc=loc,
                        expected=f"at most {MAX_EXTENDS_DEPTH} levels")


def _relocate(base_folder: Path, folder: Path):
    """A file name relative to the base's folder, made relative to the child's."""
    def moved(name: Any) -> Any:
        if not isinstance(name, str) or Path(name).is_absolute():
            return name
        try:
            return Path(os.path.relpath(base_folder / name, folder)).as_posix()
        except ValueError:  # another drive (Windows): no relative path exists
            return str((base_folder / name).resolve())
    return moved


def _merge(base: LocatedData, child: LocatedData, moved) -> LocatedData:
    """The child's keys over the base's (the rules in the module docstring)."""
    bl, cl = base.children(()), child.children(())
    data: dict = {}
    locs = {(): child.loc(())}
    for key in [*base.data, *(k for k in child.data if k not in base.data)]:
        if key == "extends":
            continue
        value, rel = _merged_key(key, base, child, bl.get(key, {}), cl.get(key, {}), moved)
        data[key] = value
        locs.update(grafted((key,), rel))
    return LocatedData(data, locs, child.file)


def _merged_key(key: str, base: LocatedData, child: LocatedData, bl: dict, cl: dict, moved):
    """(value, its locations relative to `key`) of one top-level key of the merged spec."""
    if key in base.data and key == "imports" and isinstance(base.data[key], list):
        base_value = [moved(name) for name in base.data[key]]
        if key not in child.data or not isinstance(child.data[key], list):
            return (base_value, bl) if key not in child.data else (child.data[key], cl)
        shifted = {(p[0] + len(base_value),) + p[1:]: l for p, l in cl.items() if p}
        return base_value + child.data[key], {**bl, **shifted, (): cl.get((), bl.get(()))}
    if key == "labels" and key not in child.data:
        return moved(base.data[key]), bl
    if key not in child.data:
        return base.data[key], bl
    if key not in base.data:
        return child.data[key], cl
    b, c = base.data[key], child.data[key]
    if key == "nodes" and isinstance(b, list) and isinstance(c, list):
        return _NodeMerge(b, bl, c, cl, child).result()
    if isinstance(b, dict) and isinstance(c, dict) and key not in _WHOLE:
        return _merged_mapping(b, bl, c, cl)
    return c, cl


def _merged_mapping(b: dict, bl: dict, c: dict, cl: dict) -> tuple[dict, dict]:
    """Key by key, the child's value replacing the base's whole."""
    merged, locs = {**b, **c}, {(): cl.get(())}
    bg, cg = _split(bl), _split(cl)
    for name in merged:
        locs.update(grafted((name,), (cg if name in c else bg).get(name, {})))
    return merged, locs


def _split(rel: dict) -> dict:
    """Relative locations grouped by their first key (what LocatedData.children gives)."""
    out: dict = {}
    for path, loc in rel.items():
        if path:
            out.setdefault(path[0], {})[path[1:]] = loc
    return out


class _NodeMerge:
    """The child's node entries applied to the base's list, in the child's order."""

    def __init__(self, base: list, bl: dict, child: list, cl: dict, located: LocatedData):
        groups = _split(bl)
        # each entry: [node, its locations relative to the node, the anchor it was put at]
        self.entries = [[node, groups.get(i, {}), None] for i, node in enumerate(base)]
        self.child, self.cl, self.located = child, _split(cl), located
        self.root = cl.get(())  # the child's `nodes:` key

    def result(self) -> tuple[list, dict]:
        for i, entry in enumerate(self.child):
            self.apply(i, entry)
        locs = {(): self.root}
        for k, (_, rel, _) in enumerate(self.entries):
            locs.update(grafted((k,), rel))
        return [node for node, _, _ in self.entries], locs

    def loc(self, i: int, *keys) -> Location | None:
        return self.located.loc(("nodes", i) + keys)

    def ids(self) -> list:
        return [node.get("id") if isinstance(node, dict) else None for node, _, _ in self.entries]

    def apply(self, i: int, entry: Any) -> None:
        if not isinstance(entry, dict):
            raise SpecError("a node is a mapping such as {id: fc, op: linear, features: 10}",
                            loc=self.loc(i), received=repr(entry))
        node = {k: v for k, v in entry.items() if k not in _PLACING}
        rel = {p: l for p, l in self.cl.get(i, {}).items() if not p or p[0] not in _PLACING}
        places = [k for k in ("after", "before") if k in entry]
        if "delete" in entry:
            return self.delete(i, entry, places)
        if len(places) > 1:
            raise SpecError("a node goes after one node or before one, not both",
                            loc=self.loc(i, "before"))
        if places:
            return self.insert(i, node, rel, places[0], entry[places[0]])
        self.replace(i, node, rel)

    def position(self, i: int, name: Any, key: str | None) -> int:
        """Where node `name` stands now; refused, with the nearest id, when it is not there."""
        ids = self.ids()
        if name in ids:
            return ids.index(name)
        hint = nearest(str(name), [n for n in ids if isinstance(n, str)])
        raise SpecError(f"unknown node '{name}' in the base spec" + (f"; {hint}" if hint else ""),
                        loc=self.loc(i, *((key,) if key else ("id",))),
                        expected="one of: " + ", ".join(n for n in ids if isinstance(n, str)))

    def delete(self, i: int, entry: dict, places: list) -> None:
        if entry["delete"] is not True or set(entry) - {"id", "delete"}:
            raise SpecError("a deleting entry is {id: <base node>, delete: true}, nothing else",
                            loc=self.loc(i, "delete"),
                            received=", ".join(sorted(map(str, entry))))
        del self.entries[self.position(i, entry.get("id"), None)]

    def insert(self, i: int, node: dict, rel: dict, place: str, anchor: Any) -> None:
        if node.get("id") is not None and node["id"] in self.ids():
            raise SpecError(f"node '{node['id']}' is in the base spec already: an entry with "
                            f"{place}: adds a new node", loc=self.loc(i, "id"),
                            hint="to replace it where it stands, leave out " + place)
        pos = self.position(i, anchor, place)
        if place == "after":  # after the anchor and what this spec put after it before
            pos += 1
            while pos < len(self.entries) and self.entries[pos][2] == anchor:
                pos += 1
        self.entries.insert(pos, [node, rel, anchor if place == "after" else None])

    def replace(self, i: int, node: dict, rel: dict) -> None:
        name = node.get("id")
        if name is None:
            raise SpecError("a node of an extending spec needs an id (to replace or delete the "
                            "base's node of that id) or after:/before: (to add one)",
                            loc=self.loc(i))
        if name not in self.ids():
            hint = nearest(str(name), [n for n in self.ids() if isinstance(n, str)])
            raise SpecError(f"node '{name}' is not in the base spec" + (f"; {hint}" if hint else ""),
                            loc=self.loc(i, "id"),
                            hint="to add a node, say where: after: <id> or before: <id>")
        self.entries[self.position(i, name, None)][:2] = [node, rel]

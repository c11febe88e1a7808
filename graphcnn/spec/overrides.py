"""Command-line overrides of a spec (`--set`), in Hydra's basic grammar, on the located data.

`path=value` changes a value the spec writes; `+path=value` adds one it does not write (a
default, a new key; on a list, an item at a position: `+nodes.3={op: relu}`); `++path=value`
sets it either way; `~path` deletes (`~path=value`: only while it holds that value). A path
is keys joined by dots; in a list a number is a position and a name is the item with that id
(`nodes.fc.features`, `blocks.basic.nodes.conv1.channels`; an id with dots, `l1.conv`, is
matched whole, the longest first). The value is YAML: `[3,320,320]`, `10`, `relu`, `null`
(nothing after `=` is the empty string, as in Hydra).

The overrides edit the data before it is validated, and the values they bring carry their own
locations: file `--set`, line = the override's position (1-based), column in its text. So every
later error about such a value (schema, shapes) names the override, not the spec's old line.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import Location, SpecError, nearest
from ..fileio import is_file
from .labels import check_label_count, spec_labels
from .yamlio import LocatedData, grafted, load_yaml, read_text

SET_FILE = "--set"
MAX_IMPORT_DEPTH = 16  # as expand.py's: deeper chains are refused there
_OPS = ("++", "+", "~")  # longest first: `++a=1` is not `+` of `+a`
_FORMS = "path=value, +path=value, ++path=value or ~path"


@dataclass(frozen=True)
class Override:
    """One `--set` text, split: its operation, the keys of its path and where each stands."""

    op: str  # "=", "+", "++" or "~"
    keys: tuple[str, ...]
    cols: tuple[int, ...]  # 1-based column of each key in the text
    value: str | None  # the text after '=' (None: `~path` without a value)
    value_col: int
    line: int
    text: str

    def at(self, k: int) -> Location:
        """The location of key k (len(keys): of the value)."""
        return Location(SET_FILE, self.line, self.cols[k] if k < len(self.cols) else self.value_col)

    def path_text(self, k: int) -> str:
        """The path as written, up to (not including) key k; 'the spec' at the root."""
        return ".".join(self.keys[:k]) or "the spec"


def parse_override(text: str, line: int) -> Override:
    """Split `text` into an Override; a malformed one is refused at its line."""
    op = next((p for p in _OPS if text.startswith(p)), "")
    path, eq, value = text[len(op):].partition("=")
    if not eq and op != "~":
        raise SpecError(f"an override is {_FORMS}", loc=Location(SET_FILE, line, 1),
                        received=repr(text))
    keys = tuple(path.split("."))
    cols = tuple(len(op) + 1 + sum(len(k) + 1 for k in keys[:i]) for i in range(len(keys)))
    for key, col in zip(keys, cols):
        if not key:
            raise SpecError("empty key in the override's path", loc=Location(SET_FILE, line, col),
                            expected=f"keys joined by dots: {_FORMS}", received=repr(text))
    return Override(op or "=", keys, cols, value if eq else None, len(op) + len(path) + 2,
                    line, text)


def apply_overrides(located: LocatedData, overrides: Sequence[str] | None,
                    folder: Path = Path(".")) -> LocatedData:
    """`located` with each override applied in order (a new LocatedData; the input is kept).
    `folder` is the spec's, where its `imports:` are found."""
    if not overrides:
        return located
    edit = LocatedData(copy.deepcopy(located.data), dict(located.locs), located.file)
    for line, text in enumerate(overrides, 1):
        _apply(edit, parse_override(text, line), folder)
    return edit


def _apply(edit: LocatedData, ov: Override, folder: Path) -> None:
    if not isinstance(edit.data, dict):
        raise SpecError("a spec is a mapping; there is nothing to override", loc=ov.at(0),
                        received=type(edit.data).__name__)
    if ov.keys[0] == "blocks" and len(ov.keys) > 1:
        _own_block(edit, ov, folder)
    container, path, k, key = _locate(edit, ov)
    if ov.op == "~":
        return _delete(edit, container, path, key, ov, k)
    value = _value(ov)
    if ov.op == "+" and isinstance(container, list):
        return _insert(edit, container, path, key, value, ov, k)
    if ov.op == "+" and key in container:
        raise SpecError(f"{ov.path_text(len(ov.keys))} is written already (as "
                        f"{container[key]!r}); `+` adds a key the spec does not write",
                        loc=ov.at(k), hint=f"to change it: {ov.text[1:]}")
    _put(edit, container, path + (key,), value, ov, k)
    container[key] = value.data


def _own_block(edit: LocatedData, ov: Override, folder: Path) -> None:
    """`blocks.NAME...` on a block the spec imports: the block is copied into the spec's own
    `blocks:` (with its library's locations), where it replaces the import; then the override
    edits the copy. So the spec (and a model compiled from it) carries the changed block."""
    own = edit.data.get("blocks")
    name = ov.keys[1]
    if isinstance(own, dict) and name in own:
        return
    imported = _library_blocks(folder, edit.data.get("imports"), {}, set(), 0)
    if name not in imported:
        if ov.op in ("+", "++") and len(ov.keys) == 2:
            return  # a new block
        known = [*(own if isinstance(own, dict) else ()), *imported]
        hint = nearest(name, known)
        raise SpecError(f"unknown block '{name}' (defined in the spec or imported)"
                        + (f"; {hint}" if hint else ""), loc=ov.at(1),
                        expected="one of: " + ", ".join(sorted(known)) if known else None)
    if not isinstance(own, dict):
        own = edit.data["blocks"] = {}
        edit.locs[("blocks",)] = ov.at(0)
    own[name], rel = copy.deepcopy(imported[name][0]), imported[name][1]
    edit.locs.update(grafted(("blocks", name), rel))


def _library_blocks(folder: Path, names: Any, found: dict, seen: set, depth: int) -> dict:
    """{block name: (raw data, locations relative to it)} of the spec's block libraries, in
    expand.py's order (a library's imports first, a later block replacing an earlier one).
    A missing or malformed library is passed over: expansion refuses it at its line."""
    for name in names if isinstance(names, list) and depth <= MAX_IMPORT_DEPTH else ():
        path = folder / str(name)
        if not is_file(path) or path.resolve() in seen:
            continue
        seen.add(path.resolve())
        library = load_yaml(read_text(path), str(path))
        blocks = library.data.get("blocks") if isinstance(library.data, dict) else None
        if not isinstance(blocks, dict):
            continue
        _library_blocks(path.parent, library.data.get("imports"), found, seen, depth + 1)
        groups = library.children(("blocks",))
        found.update({b: (data, groups.get(b, {})) for b, data in blocks.items()})
    return found


def _locate(edit: LocatedData, ov: Override) -> tuple[Any, tuple, int, Any]:
    """Follow the path: (the container of its last key, the container's path, the index of
    the last key in ov.keys, the concrete last key or position). `+`/`++` create missing
    mappings on the way (Hydra's `+a.b=1`)."""
    cur, path, k = edit.data, (), 0
    while True:
        if isinstance(cur, list):
            key, used = _item(cur, ov, k, path)
        elif isinstance(cur, dict):
            key, used = _key(cur, ov, k), 1
        else:
            raise SpecError(f"{ov.path_text(k)} is {cur!r}, not a mapping or list: it has no "
                            f"key '{ov.keys[k]}'", loc=ov.at(k))
        if k + used == len(ov.keys):
            return cur, path, k, key
        if isinstance(cur, dict) and key not in cur:
            _missing_inside(edit, cur, path, key, ov, k)
        cur, path, k = cur[key], path + (key,), k + used


def _key(mapping: dict, ov: Override, k: int) -> Any:
    """Key k as the mapping holds it (YAML may have made it an int). A missing key is refused
    unless the override adds (`+`, `++`): Hydra's rule, so a misspelt key is caught here."""
    key = ov.keys[k]
    if key not in mapping and key.lstrip("-").isdigit() and int(key) in mapping:
        key = int(key)
    if key not in mapping and ov.op in ("=", "~"):
        raise _unknown_key(mapping, ov, k)
    return key


def _missing_inside(edit: LocatedData, mapping: dict, path: tuple, key: Any, ov: Override,
                    k: int) -> None:
    """A missing mapping on the way of `+a.b.c=1` is made, located at its key."""
    mapping[key] = {}
    edit.locs[path + (key,)] = ov.at(k)


def _unknown_key(mapping: dict, ov: Override, k: int) -> SpecError:
    hint = nearest(str(ov.keys[k]), [str(m) for m in mapping])
    add = f"to add a key the spec does not write: +{ov.text}" if ov.op == "=" else None
    return SpecError(f"unknown key '{ov.keys[k]}' in {ov.path_text(k)}"
                     + (f"; {hint}" if hint else ""), loc=ov.at(k), hint=add)


def _item(items: list, ov: Override, k: int, path: tuple) -> tuple[int, int]:
    """The list position that keys[k:] name, and how many keys named it: a number, or the
    id of an item (joined keys, the longest that matches: ids may hold dots)."""
    key = ov.keys[k]
    if key.isdigit():
        end = len(items) + (ov.op == "+" and k == len(ov.keys) - 1)  # `+` may append
        if int(key) >= end:
            raise SpecError(f"position {key} is past the end of {ov.path_text(k)} "
                            f"({len(items)} items)", loc=ov.at(k),
                            expected=f"0 to {end - 1}" if end else "an empty list has none")
        return int(key), 1
    ids = [item.get("id") if isinstance(item, dict) else None for item in items]
    for used in range(len(ov.keys) - k, 0, -1):
        name = ".".join(ov.keys[k:k + used])
        if name in ids:
            if ov.op == "+" and k + used == len(ov.keys):
                raise SpecError("`+` on a list inserts at a position, not at an id",
                                loc=ov.at(k), hint=f"e.g. +{ov.path_text(k)}.{ids.index(name)}"
                                f"=... inserts before '{name}'")
            return ids.index(name), used
    raise _unknown_item(ids, ov, k, path)


def _unknown_item(ids: list, ov: Override, k: int, path: tuple) -> SpecError:
    what = "node" if path and path[-1] == "nodes" else "item"
    named = [i for i in ids if isinstance(i, str)]
    hint = nearest(ov.keys[k], named)
    return SpecError(f"unknown {what} '{ov.keys[k]}' in {ov.path_text(k)}"
                     + (f"; {hint}" if hint else ""), loc=ov.at(k),
                     expected=("an id (" + ", ".join(named[:12]) + (", ..." if len(named) > 12
                               else "") + ") or a position" if named else
                               f"a position, 0 to {len(ids) - 1}"))


def _value(ov: Override) -> LocatedData:
    """The override's value as located YAML: locations shifted into the override's text."""
    if ov.value == "":  # Hydra: `key=` is the empty string
        return LocatedData("", {(): ov.at(len(ov.keys))}, SET_FILE)
    try:
        parsed = load_yaml(ov.value, SET_FILE)
    except SpecError as exc:
        exc.loc = _shifted(exc.loc, ov) if exc.loc else ov.at(len(ov.keys))
        exc.args = (exc.render(),)
        raise
    return LocatedData(parsed.data, {p: _shifted(l, ov) for p, l in parsed.locs.items()},
                       SET_FILE)


def _shifted(loc: Location, ov: Override) -> Location:
    """A location in the value's text as one in the override's (past its end: at the end)."""
    col = ov.value_col + loc.col - 1 if loc.line == 1 else ov.value_col + len(ov.value or "")
    return Location(SET_FILE, ov.line, col)


def _put(edit: LocatedData, container: Any, target: tuple, value: LocatedData, ov: Override,
         k: int) -> None:
    """The location table for `target` := value: the old value's entries go, the value's
    come in, and `target` itself names the override's key (as a spec's key names its line)."""
    edit.locs = {p: l for p, l in edit.locs.items() if p[:len(target)] != target}
    edit.locs.update(grafted(target, value.locs))
    edit.locs[target] = ov.at(k)


def _insert(edit: LocatedData, items: list, path: tuple, pos: int, value: LocatedData,
            ov: Override, k: int) -> None:
    edit.locs = _renumbered(edit.locs, path, lambda i: i + 1 if i >= pos else i)
    items.insert(pos, value.data)
    _put(edit, items, path + (pos,), value, ov, k)


def _delete(edit: LocatedData, container: Any, path: tuple, key: Any, ov: Override, k: int) -> None:
    if ov.value is not None and container[key] != _value(ov).data:
        raise SpecError(f"{ov.path_text(len(ov.keys))} is {container[key]!r}, not "
                        f"{_value(ov).data!r}: `~path=value` deletes only a matching value",
                        loc=ov.at(k))
    target = path + (key,)
    edit.locs = {p: l for p, l in edit.locs.items() if p[:len(target)] != target}
    del container[key]
    if isinstance(container, list):
        edit.locs = _renumbered(edit.locs, path, lambda i: i - 1 if i > key else i)


def _renumbered(locs: dict, list_path: tuple, new_index: Callable[[int], int]) -> dict:
    """`locs` with the items of the list at `list_path` moved to new_index(i)."""
    n = len(list_path)
    return {(list_path + (new_index(p[n]),) + p[n + 1:]
             if len(p) > n and p[:n] == list_path else p): loc for p, loc in locs.items()}


def without_stale_labels(checked):
    """A checked graph (graph.CheckedGraph) of an overridden spec whose `labels:` no longer fit
    its classes (`--set nodes.fc.features=10` on an ImageNet spec): the override meant that
    change, so the labels are left out with a warning instead of refusing the spec. Labels
    that an override itself gave are checked as usual."""
    spec = checked.spec
    source = getattr(spec, "_source", None)
    where = source.loc(("labels",)) if source is not None else None
    if getattr(spec, "labels", None) is None or where is None or where.file == SET_FILE \
            or not any(loc.file == SET_FILE for loc in source.locs.values()):
        return checked
    labels = spec_labels(spec, required=False)
    try:
        check_label_count(labels, checked)
    except SpecError as exc:
        note = (f"{where}: {exc.message} after --set: the labels are left out "
                "(--set labels=FILE names the classes)")
        return replace(checked, spec=spec.model_copy(update={"labels": None}),
                       warnings=checked.warnings + (note,))
    return checked

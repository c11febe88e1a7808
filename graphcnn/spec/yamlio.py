"""Safe YAML loading that remembers where every value came from.

We compose YAML into its node tree with the safe loader (no Python tags), then build plain
dicts and lists ourselves, recording `path -> Location` for every mapping key and list item.
Building by hand also lets us refuse duplicate keys and bound alias expansion (a "billion
laughs" document), which PyYAML's own constructor silently accepts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import Location, SpecError
from ..fileio import note_input
from .exprs import MAX_INT

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_VALUES = 200_000  # values built, aliases expanded; a billion-laughs file stops here
MAX_DEPTH = 64
# libyaml's parser when PyYAML was built with it: the pure-Python scanner takes seconds on a
# 10,000-node spec. Both give the same node tree and marks.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Path_ = tuple[Any, ...]
# scalar tags whose constructors return the value itself (others, e.g. !!map, are generators)
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null")}


class LocatedData:
    """Plain data from a YAML document, with the location of each path in it."""

    def __init__(self, data: Any, locs: dict[Path_, Location], file: str | None):
        self.data, self.locs, self.file = data, locs, file

    def loc(self, path: Path_) -> Location | None:
        """The location of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.locs:
                return self.locs[path]
            path = path[:-1]
        return self.locs.get(())

    def children(self, prefix: Path_ = ()) -> dict[Any, dict[Path_, Location]]:
        """The locations below `prefix`, grouped by the key (or index) after it, each keyed by
        the rest of its path. One pass over the table: overrides and `extends:` rebuild the
        table of edited or merged data from these groups (each keeps its own file)."""
        n, groups = len(prefix), {}
        for path, loc in self.locs.items():
            if len(path) > n and path[:n] == prefix:
                groups.setdefault(path[n], {})[path[n + 1:]] = loc
        return groups


def grafted(prefix: Path_, rel: dict[Path_, Location]) -> dict[Path_, Location]:
    """A group of `children` put back under `prefix`."""
    return {prefix + path: loc for path, loc in rel.items()}


def read_text(path: str | Path, limit: int = MAX_FILE_BYTES) -> str:
    path = Path(path)
    note_input(path)  # an imported or extended spec is an input no output may replace
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:  # at most limit + 1 bytes: /dev/zero or a pipe reports
            data = fh.read(limit + 1)  # size 0 and never ends (found while testing limits)
        if max(size, len(data)) > limit:
            raise SpecError(f"spec file is {max(size, len(data)):,}{'+' if len(data) > limit else ''} "
                            "bytes", loc=Location(str(path), 1, 1), expected=f"at most {limit:,} bytes")
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:  # the place of the first bad byte, as an editor counts
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError("spec file is not UTF-8 text", loc=Location(str(path), line, col),
                        received=f"byte {data[exc.start:exc.start + 1]!r}") from None
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror or exc}") from None


def _check_depth(text: str, file: str | None) -> None:
    """Nesting counted on the parser's event stream before anything is composed: LibYAML's
    composer recurses in C, and 30,000 nested brackets (60 KB) overflow its stack (a segfault,
    which no `except` sees)."""
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise SpecError("YAML nesting too deep", loc=Location(file, mark.line + 1,
                                                                     mark.column + 1),
                                expected=f"at most {MAX_DEPTH} levels")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def load_yaml(text: str, file: str | None = None) -> LocatedData:
    """Parse YAML text into plain data and a location table; errors name file:line:col."""
    if len(text) > MAX_FILE_BYTES:
        raise SpecError("spec text too large", loc=Location(file, 1, 1),
                        expected=f"at most {MAX_FILE_BYTES:,} bytes", received=f"{len(text):,}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a --set value of other bytes (lone surrogates)
        raise SpecError("the text is not UTF-8", loc=Location(file, 1, exc.start + 1),
                        received=ascii(text[exc.start:exc.start + 20])) from None
    try:
        _check_depth(text, file)
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else None
        raise SpecError(f"invalid YAML: {exc.problem or exc.context}", loc=loc) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", loc=Location(file, 1, 1)) from None
    except RecursionError:  # the pure-Python composer on absurdly deep nesting
        raise SpecError("YAML nesting too deep", loc=Location(file, 1, 1),
                        expected=f"at most {MAX_DEPTH} levels") from None
    builder = _Builder(file)
    builder.locs[()] = Location(file, 1, 1)  # an empty document still has a place for errors
    if root is not None:
        builder.size(root, 0, {})
    data = builder.build(root, (), 0) if root is not None else None
    return LocatedData(data, builder.locs, file)


class _Builder:
    def __init__(self, file: str | None):
        self.file, self.locs, self.count = file, {}, 0
        self.scalar_loader = yaml.SafeLoader("")

    def where(self, node: yaml.Node) -> Location:
        return Location(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def size(self, node: yaml.Node, depth: int, memo: dict) -> int:
        """Values `node` builds into, aliases expanded, counted on the composed tree where an
        alias is a shared node: a billion-laughs document is refused after visiting its few
        distinct nodes, before anything is expanded."""
        if id(node) in memo:
            return memo[id(node)]
        if depth > MAX_DEPTH:  # also ends a self-referencing anchor (`&a [*a]`)
            raise SpecError("YAML nesting too deep", loc=self.where(node),
                            expected=f"at most {MAX_DEPTH} levels")
        children = [v for _, v in node.value] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else ()
        total = 1 + sum(self.size(child, depth + 1, memo) for child in children)
        if total > MAX_VALUES:
            raise SpecError("YAML document expands to too many values (alias bomb?)",
                            loc=self.where(node), expected=f"at most {MAX_VALUES:,} values",
                            received=f"{total:,} or more")
        memo[id(node)] = total
        return total

    def build(self, node: yaml.Node, path: Path_, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise SpecError("YAML document expands to too many values (alias bomb?)",
                            loc=self.where(node), expected=f"at most {MAX_VALUES:,} values")
        if depth > MAX_DEPTH:
            raise SpecError("YAML nesting too deep", loc=self.where(node),
                            expected=f"at most {MAX_DEPTH} levels")
        self.locs.setdefault(path, self.where(node))
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict:
        out: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise SpecError("YAML merge keys ('<<') are not supported", loc=self.where(key_node))
            key = self.scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise SpecError("mapping keys must be plain names", loc=self.where(key_node),
                                received=repr(key))
            if key in out:
                raise SpecError(f"duplicate key '{key}'", loc=self.where(key_node))
            self.locs[path + (key,)] = self.where(key_node)
            out[key] = self.build(value_node, path + (key,), depth + 1)
        return out

    def scalar(self, node: yaml.Node) -> Any:
        value = self.construct(node)
        # ONNX attributes are int64: a larger integer (`stride: 2**63`) would pass the shape
        # check and then fail inside onnx with no location
        if isinstance(value, int) and abs(value) > MAX_INT:
            raise SpecError("integer too large", loc=self.where(node),
                            expected=f"at most {MAX_INT:,} in size",
                            received=str(value) if len(str(value)) < 40 else f"{len(str(value))} digits")
        return value

    def construct(self, node: yaml.Node) -> Any:
        try:  # the tag's constructor directly: construct_object's bookkeeping doubles load time
            if node.tag in _PLAIN_TAGS and isinstance(node, yaml.ScalarNode):
                return self.scalar_loader.yaml_constructors[node.tag](self.scalar_loader, node)
            return self.scalar_loader.construct_object(node, deep=False)
        except yaml.YAMLError as exc:
            raise SpecError(f"invalid YAML value: {exc}", loc=self.where(node)) from None
        except Exception as exc:  # noqa: BLE001 - PyYAML's constructors for explicit tags
            # raise ValueError (`!!float x`), KeyError (`!!bool maybe`), AttributeError
            # (`!!timestamp nope`) on bad text: each is a bad value the user wrote
            raise SpecError(f"invalid YAML value for tag {node.tag}: {type(exc).__name__}: {exc}",
                            loc=self.where(node)) from None

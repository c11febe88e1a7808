"""Rename maps between a checkpoint's tensor names and spec ids, applied both ways.

A map is the ordered rule list of a spec's `weights:` section (graphcnn/spec/weightmaps.py says
how one is written) or of a map file. Reading a checkpoint, the first rule whose regex is found
in a key rewrites it (`target`). Writing weights back out under the checkpoint's names
(`export-weights --map`), each rule is turned around (`source`): its replacement becomes a
regex whose groups are the rule's own groups, and its regex becomes the replacement. A rule can
be turned around when its regex, outside its groups, is literal text (`^layer(\\d)\\.(\\d+)\\.`
is; `^features\\.\\d+\\.` is not: which number?); every turned-around name is checked by mapping
it forward again.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, SpecError

SKIP = ""  # target() of a key that a [regex, null] rule says is not the spec's
NOT_WEIGHTS = re.compile(r"(^|\.)num_batches_tracked$")  # batchnorm counters: no spec parameter
_REF = re.compile(r"\\(\d+)|\\g<(\w+)>")
_META = set(".^$*+?{}[]|()")


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern
    replacement: str | None       # None: keys it matches are skipped
    shape: tuple[int, ...] | None  # the tensor's shape in the checkpoint, when it differs
    inverse: tuple[re.Pattern, str] | None  # (regex on spec ids, replacement), if invertible

    @property
    def specificity(self) -> int:
        """Literal characters of the replacement: the more, the narrower the turned-around rule."""
        return len(_REF.sub("", self.replacement or ""))


@dataclass(frozen=True)
class NameMap:
    name: str
    rules: tuple[Rule, ...]

    def target(self, key: str) -> str | None:
        """The spec id of a checkpoint key, SKIP when a rule drops it, None when no rule matches."""
        for rule in self.rules:
            if rule.pattern.search(key):
                return SKIP if rule.replacement is None else \
                    rule.pattern.sub(rule.replacement, key, count=1)
        return None

    def rule_for(self, key: str) -> Rule | None:
        return next((r for r in self.rules if r.pattern.search(key)), None)

    def source(self, spec_id: str) -> tuple[str, tuple[int, ...] | None] | None:
        """The checkpoint key (and its shape there, if a rule gives one) of a spec id, or None
        when no rule turned around maps it back onto itself."""
        candidates = [r for r in self.rules if r.inverse is not None]
        for rule in sorted(candidates, key=lambda r: -r.specificity):
            regex, replacement = rule.inverse
            match = regex.match(spec_id)
            if match is None:
                continue
            key = match.expand(replacement) + spec_id[match.end():]
            if self.target(key) == spec_id:
                return key, rule.shape
        return None


IDENTITY = NameMap("none", ())


def build_map(name: str, rules: list[list]) -> NameMap:
    """A NameMap from rules already checked (spec/weightmaps.py: check_rule)."""
    built = []
    for rule in rules:
        pattern = re.compile(rule[0])
        replacement = rule[1]
        shape = tuple(rule[2]) if len(rule) == 3 else None
        built.append(Rule(pattern, replacement, shape,
                          _turn_around(rule[0], replacement) if replacement is not None else None))
    return NameMap(name, tuple(built))


def maps_of(spec) -> dict[str, NameMap]:
    return {name: build_map(name, rules) for name, rules in (spec.weights or {}).items()}


def read_map_file(path: str | Path) -> dict[str, NameMap]:
    """A map file: a YAML list of rules (the map is named after the file), or a mapping of names
    to rule lists (as a spec's `weights:` section). Each rule is checked at its line."""
    from ..spec.weightmaps import check_rule
    from ..spec.yamlio import load_yaml, read_text

    located = load_yaml(read_text(path), str(path))
    data = located.data
    named = {Path(path).stem: data} if isinstance(data, list) else data
    if not isinstance(named, dict) or not named:
        raise SpecError("a map file is a list of [regex, replacement] rules, or maps names to such "
                        "lists", loc=located.loc(()), received=type(data).__name__)
    for name, rules in named.items():
        if not isinstance(rules, list) or not rules:
            raise SpecError(f"map '{name}' needs a list of rules", loc=located.loc(
                (name,) if isinstance(data, dict) else ()), received=repr(rules)[:80])
        for i, rule in enumerate(rules):
            try:
                check_rule(rule)
            except ValueError as exc:
                where = (name, i) if isinstance(data, dict) else (i,)
                raise SpecError(f"map '{name}' rule {i}: {exc}", loc=located.loc(where)) from None
    return {str(name): build_map(str(name), rules) for name, rules in named.items()}


def choose_map(spec, requested: str | None, keys: list[str], expected: set[str]) -> NameMap:
    """The map to read a checkpoint with: `requested` (a map of the spec, or a map file), else
    none when the keys already are spec ids, else the spec's map that places the most keys."""
    maps = maps_of(spec) if spec is not None else {}
    if requested:
        if requested in maps:
            return maps[requested]
        if Path(requested).is_file():
            found = read_map_file(requested)
            if len(found) > 1:
                raise DataError(f"map file {requested} holds several maps; name one of them",
                                expected=", ".join(found))
            return next(iter(found.values()))
        raise DataError(f"no weights map '{requested}'",
                        expected="a map of the spec's `weights:` section (" +
                        (", ".join(maps) or "it has none") + ") or a map file")
    keys = [k for k in keys if not NOT_WEIGHTS.search(k)]
    if all(k in expected for k in keys):
        return IDENTITY

    def placed(m: NameMap) -> int:
        return sum(m.target(k) in expected for k in keys)

    best = max(maps.values(), key=placed, default=None)
    return best if best is not None and placed(best) > 0 else IDENTITY


def _turn_around(pattern: str, replacement: str) -> tuple[re.Pattern, str] | None:
    """(regex on spec ids, replacement giving the checkpoint key), or None when the rule's
    regex has anything but literal text outside its groups."""
    anchored_end = pattern.endswith("$") and not pattern.endswith("\\$")
    body = pattern[1:] if pattern.startswith("^") else None
    if body is None:
        return None  # a rule that may match mid-key cannot say what came before the match
    body = body[:-1] if anchored_end else body
    pieces = _split_groups(body)
    if pieces is None:
        return None
    literal_back, groups = [], []
    for kind, text in pieces:
        if kind == "group":
            groups.append(text)
            literal_back.append(f"\\g<g{len(groups)}>")
        elif kind == "ref":
            literal_back.append(f"\\g<g{text}>")
        else:
            literal_back.append(text.replace("\\", "\\\\"))
    forward = []
    seen = set()
    pos = 0
    for match in _REF.finditer(replacement):
        forward.append(re.escape(replacement[pos:match.start()]))
        ref = match.group(1) or match.group(2)
        if not ref.isdigit() or not 1 <= int(ref) <= len(groups):
            return None  # named groups: not worth turning around
        n = int(ref)
        forward.append(f"(?P=g{n})" if n in seen else f"(?P<g{n}>{groups[n - 1]})")
        seen.add(n)
        pos = match.end()
    forward.append(re.escape(replacement[pos:]))
    if len(seen) != len(groups):
        return None  # a group the replacement drops: its value cannot be recovered
    regex = "".join(forward) + ("$" if anchored_end else "")
    try:
        return re.compile(regex), "".join(literal_back)
    except re.error:
        return None


def _split_groups(body: str) -> list[tuple[str, str]] | None:
    """The regex as ('text', literal) and ('group', inner regex) pieces, or None if anything
    outside a group is not literal (an escape other than of punctuation, a metacharacter, a
    nested or non-capturing group)."""
    pieces, text, i = [], [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and body[i + 1:i + 2].isdigit():  # \1: group 1's text again
            pieces += [("text", "".join(text)), ("ref", body[i + 1])]
            text = []
            i += 2
        elif c == "\\":
            if i + 1 >= len(body) or body[i + 1].isalnum():
                return None  # \d, \w outside a group: not one literal text
            text.append(body[i + 1])
            i += 2
        elif c == "(":
            end = _group_end(body, i)
            if end is None or body[i + 1:i + 2] == "?":
                return None
            inner = body[i + 1:end]
            if _has_group(inner):
                return None
            pieces.append(("text", "".join(text)))
            text = []
            pieces.append(("group", inner))
            i = end + 1
        elif c in _META:
            return None
        else:
            text.append(c)
            i += 1
    pieces.append(("text", "".join(text)))
    return pieces


def _group_end(body: str, start: int) -> int | None:
    """The index of the ')' closing the group that opens at `start`."""
    depth = 0
    for i, c in _structural(body, start):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if c == ")" and depth == 0:
            return i
    return None


def _has_group(inner: str) -> bool:
    return any(c == "(" for _, c in _structural(inner, 0))


def _structural(text: str, start: int):
    """(index, char) of the regex's own characters from `start`: escapes and the insides of
    character classes ([(]) skipped, so a literal parenthesis is never taken for a group."""
    i, in_class = start, False
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        else:
            yield i, c
        i += 1

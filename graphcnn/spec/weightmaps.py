"""The spec's `weights:` section: named maps that rename a checkpoint's tensors to spec ids.

    weights:
      torchvision:                                   # a map's name (`--map torchvision`)
        - ['^conv1\\.', 'stem.conv.']                # [regex, replacement]: a rename rule
        - ['^layer(\\d)\\.(\\d+)\\.', 'stage\\1.block\\2.']
        - ['^aux1\\.', null]                         # null: these tensors are not the spec's
        - ['^features\\.1\\.(\\d+)\\.layer_scale$', 'stage1.block\\1.layer_scale.weight', [-1, 1, 1]]

A rule is Python `re`: the first rule whose regex is found in a checkpoint key rewrites that
match once and the result is the spec id (a rule that matches a prefix carries the rest of
the key, `.weight`, over). A third element gives the tensor's shape in the checkpoint when it
differs from the spec's (-1 allowed), for writing weights back out under the checkpoint's
names. The rules are read and checked here (at the line that wrote them); applying them, both
ways, is graphcnn.deploy.namemap.
"""
from __future__ import annotations

import re
from typing import Any

MAX_RULES = 10_000
_GROUP_REF = re.compile(r"\\(\d+)|\\g<(\w+)>")


def check_maps(maps: Any) -> dict[str, list[list]]:
    """The section as written, each rule checked: a pydantic validator (ValueError)."""
    if not isinstance(maps, dict):
        raise ValueError("weights: maps a name (torchvision) to a list of [regex, replacement] rules")
    for name, rules in maps.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w.-]*", name):
            raise ValueError(f"map name {name!r} is not a plain name")
        if not isinstance(rules, list) or not rules or len(rules) > MAX_RULES:
            raise ValueError(f"map '{name}' needs a list of 1 to {MAX_RULES} rules")
        for i, rule in enumerate(rules):
            try:
                check_rule(rule)
            except ValueError as exc:
                raise ValueError(f"map '{name}' rule {i}: {exc}") from None
    return maps


def check_rule(rule: Any) -> None:
    if not (isinstance(rule, list) and len(rule) in (2, 3) and isinstance(rule[0], str)
            and (rule[1] is None or isinstance(rule[1], str))):
        raise ValueError(f"expected [regex, replacement or null] or [regex, replacement, shape]; "
                         f"received {rule!r}")
    try:
        pattern = re.compile(rule[0])
    except re.error as exc:
        raise ValueError(f"bad regex {rule[0]!r}: {exc}") from None
    if rule[1] is not None:
        for number, name in _GROUP_REF.findall(rule[1]):
            ref = number or name
            if (ref.isdigit() and int(ref) > pattern.groups) or \
                    (not ref.isdigit() and ref not in pattern.groupindex):
                raise ValueError(f"replacement {rule[1]!r} refers to group {ref}, which "
                                 f"{rule[0]!r} does not have")
    if len(rule) == 3:
        shape = rule[2]
        if rule[1] is None or not (isinstance(shape, list) and shape and all(
                isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1)
                for d in shape) and shape.count(-1) <= 1):
            raise ValueError(f"the third element is the checkpoint's shape, whole numbers >= 1 "
                             f"and at most one -1; received {rule[2]!r}")

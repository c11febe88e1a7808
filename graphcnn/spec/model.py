"""The spec language as pydantic models: NetworkSpec and its node union, built from the registry."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag,
                      TypeAdapter, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from ..errors import Location, SpecError, nearest, shown
from ..fileio import exists, is_file
from ..gcpause import gc_paused
from ..layers import REGISTRY, Layer
from ..layers.base import on_registry_change
from .extends import resolve_extends
from .overrides import apply_overrides
from .preprocess import Labels, PreprocessSection, check_labels
from .scaling import Kind, ScaleSection
from .training import TrainingSection
from .weightmaps import check_maps, check_rule
from .yamlio import LocatedData, load_yaml, read_text

Dim = Union[int, str]


class BlockCall(BaseModel):
    """Instantiate a named block `repeat` times; `args` fill its parameters, `first` overrides
    them for the first instance (the usual stride-2 / projection block of a ResNet stage)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    block: str
    repeat: int | str = 1
    args: dict[str, Any] = {}
    first: dict[str, Any] = {}
    inputs: list[str] | None = None

    @field_validator("inputs", mode="before")
    @classmethod
    def _one_input_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("repeat", mode="before")
    @classmethod
    def _no_bool_for_repeat(cls, value: Any) -> Any:
        """pydantic reads `repeat: true` as 1; a count is a number (as a layer's fields)."""
        if isinstance(value, bool):
            raise ValueError("true/false is not a number here")
        return value


class BlockDef(BaseModel):
    """A parametrised sub-graph. Its nodes are validated when instantiated, after `params` are
    substituted, so fields may hold integer expressions such as `width * 4`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    params: dict[str, Any] = {}
    inputs: list[str] = ["x"]
    nodes: list[dict[str, Any]]
    outputs: list[str] | None = None
    scalable: dict[str, Kind] = {}  # param (or `repeat`, the call's count) -> width | depth

    @field_validator("scalable")
    @classmethod
    def _scalable_params(cls, scalable: dict, info: ValidationInfo) -> dict:
        params = info.data.get("params", {})
        unknown = [k for k in scalable if k not in params and k != "repeat"]
        if unknown:
            raise ValueError(f"'{unknown[0]}' is not a param of the block (nor `repeat`, the "
                             f"count of a call); params: {', '.join(params) or 'none'}")
        return scalable


def _node_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return "block" if "block" in value else value.get("op")
    return "block" if isinstance(value, BlockCall) else getattr(value, "op", None)


def _node_union():
    tagged = [Annotated[cls, Tag(op)] for op, cls in REGISTRY.items()]
    return Annotated[Union[tuple(tagged + [Annotated[BlockCall, Tag("block")]])],
                     Discriminator(_node_tag)]


Node = _node_union()
SECTIONS = {"training": TrainingSection, "preprocess": PreprocessSection, "scale": ScaleSection}  # top-level keys that hold a model of their own


class NetworkSpec(BaseModel):
    """A network: named inputs (shapes without the batch, channels first), nodes, outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)  # the ONNX graph's name, which may not be empty
    inputs: dict[str, list[Dim]]
    nodes: list[Node] = Field(min_length=1)
    outputs: list[str] | None = None
    blocks: dict[str, BlockDef] = {}
    imports: list[str] = []
    training: TrainingSection | None = None
    preprocess: PreprocessSection | None = None
    labels: Labels | None = None
    weights: dict[str, list[list[Any]]] = {}
    scale: ScaleSection | None = None
    extends: str | None = Field(None, description=(  # resolved as the spec is read
        "a base spec (relative to this one) that this spec changes: nodes by id (replace, "
        "`delete: true`, new ones `after:`/`before:`), mappings key by key"))

    _source: LocatedData | None = PrivateAttr(default=None)
    _path: Path | None = PrivateAttr(default=None)

    @field_validator("inputs", mode="before")
    @classmethod
    def _sizes_are_sizes(cls, inputs):
        """Before pydantic reads `true` as 1 and `''` as a symbol with no name."""
        for name, shape in (inputs.items() if isinstance(inputs, dict) else ()):
            for d in shape if isinstance(shape, list) else ():
                if isinstance(d, bool) or (isinstance(d, str) and not d.strip()):
                    what = "true/false" if isinstance(d, bool) else "an empty name"
                    raise ValueError(f"input '{name}': {what} is not a size; expected positive "
                                     "integers or symbols such as H")
        return inputs

    @field_validator("inputs")
    @classmethod
    def _shapes_positive(cls, inputs: dict[str, list[Dim]]) -> dict[str, list[Dim]]:
        if not inputs:
            raise ValueError("a network needs at least one input, e.g. {x: [3, 32, 32]}")
        for name, shape in inputs.items():
            if not 2 <= len(shape) + 1 <= 5:
                raise ValueError(f"input '{name}' needs [F], [C, L], [C, H, W] or [C, D, H, W] "
                                 f"(the batch is left out); received {shape}")
            if any(isinstance(d, int) and d < 1 for d in shape):
                raise ValueError(f"input '{name}' sizes must be at least 1; received {shape}")
        return inputs

    @field_validator("extends")
    @classmethod
    def _extends_read(cls, extends: str | None) -> None:
        if extends is not None:  # from YAML it is merged in and gone before validation
            raise ValueError("extends: is resolved when a spec is read from YAML "
                             "(NetworkSpec.from_yaml / from_text)")
        return extends

    @field_validator("weights", mode="before")
    @classmethod
    def _weight_maps(cls, maps):
        return check_maps(maps)

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels):
        return check_labels(labels)

    @model_validator(mode="after")
    def _preprocess_fits_the_input(self):
        """mean/std give one value per channel of the (first) input."""
        if self.preprocess is None:
            return self
        channels = next(iter(self.inputs.values()))[0]
        for key in ("mean", "std"):
            values = getattr(self.preprocess, key)
            if values is not None and isinstance(channels, int) and len(values) != channels:
                raise ValueError(f"preprocess {key} has {len(values)} values for an input of "
                                 f"{channels} channels")
        return self

    @classmethod
    def from_yaml(cls, source: str | Path, *, text: str | None = None,
                  overrides: list[str] | None = None) -> "NetworkSpec":
        """Load from a file path, or from `text` (then `source` names it in errors); its
        `extends:` merged in and `overrides` (`--set` texts) applied before validation."""
        if text is None:
            text = read_text(source)
        located = load_yaml(text, str(source) if source is not None else None)
        path = Path(str(source)) if source is not None and is_file(str(source)) else None
        folder = path.parent if path is not None else Path(".")
        located = apply_overrides(resolve_extends(located, path), overrides, folder)
        spec = parse_located(cls, located)
        spec._path = Path(source) if text is not None and source and exists(str(source)) else None
        return spec

    @classmethod
    def from_text(cls, text: str, name: str = "<spec>",
                  overrides: list[str] | None = None) -> "NetworkSpec":
        """From YAML text; `extends:` is read relative to the working folder."""
        located = resolve_extends(load_yaml(text, name), None)
        return parse_located(cls, apply_overrides(located, overrides))

    def with_overrides(self, overrides: list[str] | None) -> "NetworkSpec":
        """This spec with `--set` overrides applied, on the data it was read from (so its
        locations stay) or, for a spec built in Python, on its YAML text."""
        if not overrides:
            return self
        located = self._source or load_yaml(self.to_yaml(), self.name)
        folder = self._path.parent if self._path else Path(".")
        spec = parse_located(type(self), apply_overrides(located, overrides, folder))
        spec._path = self._path
        return spec

    def __eq__(self, other: object) -> bool:
        """Specs are equal when their content is; where they were read from does not matter."""
        return isinstance(other, NetworkSpec) and self.model_dump() == other.model_dump()

    __hash__ = None  # mutable-looking content equality; specs are not dict keys

    def location(self, path: tuple) -> Location | None:
        return self._source.loc(path) if self._source else None

    def to_dict(self) -> dict:
        """Plain data with defaults left out and every node's `op` first."""
        data = self.model_dump(exclude_defaults=True, exclude={"nodes", "training", "preprocess"})
        data["nodes"] = [node_to_dict(n) for n in self.nodes]
        for section in ("training", "preprocess"):
            if getattr(self, section) is not None:
                data[section] = getattr(self, section).written()
        order = ["name", "imports", "inputs", "scale", "blocks", "nodes", "outputs", "training",
                 "preprocess", "labels", "weights"]
        return {k: data[k] for k in order if k in data}

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


def node_to_dict(node: Layer | BlockCall) -> dict:
    data = node.model_dump(exclude_defaults=True)
    head = {k: data.pop(k) for k in ("id", "block") if k in data}
    if isinstance(node, Layer):
        head["op"] = node.op_name
        data.pop("op", None)
    return {**head, **data}


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
    """Block style at the top, one flow-style line per node: a spec stays readable. (libyaml's
    emitter when present: same text, ten times faster on a 10,000-node spec.)"""


def _represent_dict(dumper, data):
    flow = all(not isinstance(v, (dict, list)) or _short(v) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


def _short(value) -> bool:
    return isinstance(value, list) and all(not isinstance(v, (dict, list)) or _short(v) for v in value)


_Dumper.add_representer(dict, _represent_dict)


@gc_paused()
def dump_yaml(data: dict) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100, default_flow_style=None)


_ADAPTERS: list[TypeAdapter] = []


def node_adapter() -> TypeAdapter:
    """A validator of one node (block expansion), for the ops registered now."""
    if not _ADAPTERS:
        _ADAPTERS.append(TypeAdapter(_node_union()))
    return _ADAPTERS[0]


def _follow_registry() -> None:
    """An op registered after import (a plugin's, a test's) joins NetworkSpec's node union,
    and so its JSON Schema and block expansion."""
    NetworkSpec.model_fields["nodes"].annotation = list[_node_union()]
    NetworkSpec.model_rebuild(force=True)
    _ADAPTERS.clear()


on_registry_change(_follow_registry)


def parse_located(cls, located: LocatedData) -> NetworkSpec:
    """Validate located data; every error names the file:line:col it came from."""
    data = located.data
    if not isinstance(data, dict):
        raise SpecError("a spec is a mapping with name, inputs, nodes and outputs",
                        loc=located.loc(()), received=type(data).__name__)
    check_ops(data.get("nodes"), located)
    check_weight_maps(data.get("weights"), located)
    try:
        spec = cls.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, located) from None
    spec._source = located
    return spec


def check_weight_maps(maps: Any, located: LocatedData) -> None:
    """A bad rename rule is named at its own line (the section's validator says only 'weights')."""
    if not isinstance(maps, dict):
        return
    for name, rules in maps.items():
        for i, rule in enumerate(rules if isinstance(rules, list) else []):
            try:
                check_rule(rule)
            except ValueError as exc:
                raise SpecError(f"weights map '{name}' rule {i}: {exc}",
                                loc=located.loc(("weights", name, i))) from None


def check_ops(nodes: Any, located: LocatedData, path: tuple = ("nodes",)) -> None:
    """Unknown ops get their own message with the nearest known op."""
    if isinstance(nodes, list):
        for i, node in enumerate(nodes):
            check_op(node, located, path + (i,))


def check_op(node: Any, located: LocatedData | None, path: tuple) -> None:
    where = located.loc if located else (lambda p: None)
    if not isinstance(node, (dict, Layer, BlockCall)):  # else pydantic's discriminator message
        raise SpecError("a node is a mapping such as {op: relu} or {id: s1, block: name}",
                        loc=where(path), received=repr(node))
    if not isinstance(node, dict) or "block" in node:
        return
    op = node.get("op")
    if op is None:
        raise SpecError("node has no 'op'", loc=where(path), node=node.get("id"),
                        expected="one of: " + ", ".join(sorted(REGISTRY)))
    if not isinstance(op, str):  # a list or mapping is no name (and no dict key)
        raise SpecError("an op is a name such as relu", loc=where(path + ("op",)),
                        node=node.get("id"), received=repr(op)[:200])
    if op not in REGISTRY:
        hint = nearest(str(op), REGISTRY)
        raise SpecError(f"unknown op '{op}'" + (f"; {hint}" if hint else ""),
                        loc=where(path + ("op",)), node=node.get("id"),
                        expected="one of: " + ", ".join(sorted(REGISTRY)))


def validation_error(exc: ValidationError, located: LocatedData | None,
                     prefix: tuple = ()) -> SpecError:
    """The first pydantic error, re-said with its location, node id and the known fields.
    `prefix` is where the validated value sits in the located document."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    root = _walk(located.data, prefix) if located else None
    rel = data_path(root, err["loc"])
    path = prefix + rel
    where = located.loc if located else (lambda p: None)
    node = node_id_at(located.data, path) if located else None
    field = str(err["loc"][-1]) if err["loc"] else ""
    if err["type"] == "extra_forbidden":
        known = known_fields(_walk(located.data, path[:-1]) if located else None, path[:-1])
        hint = nearest(field, known)
        inside = f" in {path[0]}" if len(path) == 2 and path[0] in SECTIONS else ""
        return SpecError(f"unknown field '{field}'{inside}" + (f"; {hint}" if hint else ""),
                         loc=where(path), node=node,
                         expected="one of: " + ", ".join(known) if known else None)
    received = shown(repr(err.get("input"))) if err["type"] != "missing" else "nothing"
    name = str(path[-1]) if node is not None and path and not isinstance(path[-1], int) \
        else ".".join(map(str, path))
    return SpecError(f"bad value for '{name or 'spec'}': {err['msg']}", loc=where(path),
                     node=node, received=received)


def _walk(data: Any, path: tuple) -> Any:
    for key in path:
        data = data[key]
    return data


def data_path(data: Any, loc: tuple) -> tuple:
    """Pydantic's error path, without the union tags that are not keys of the data."""
    path, cur = [], data
    for i, key in enumerate(loc):
        if key == "block" and i + 1 < len(loc) and isinstance(cur, dict) and "block" in cur:
            continue  # a block call's union tag, before the call's field (`repeat`, `args`)
        if isinstance(cur, dict) and key in cur:
            cur = cur[key]
        elif isinstance(cur, list) and isinstance(key, int) and key < len(cur):
            cur = cur[key]
        elif isinstance(cur, dict) and key not in REGISTRY and key != "block":
            path.append(key)
            break
        else:
            continue
        path.append(key)
    return tuple(path)


def node_id_at(data: Any, path: tuple) -> str | None:
    """The id of the node that `path` points into (the innermost `nodes` list)."""
    for i in range(len(path) - 1, 0, -1):
        if path[i - 1] == "nodes" and isinstance(path[i], int):
            node = _walk(data, path[: i + 1])
            return node.get("id") if isinstance(node, dict) else None
    return None


def known_fields(value: Any, path: tuple) -> list[str]:
    if path == ():
        return list(NetworkSpec.model_fields)
    if len(path) == 1 and path[0] in SECTIONS:
        return list(SECTIONS[path[0]].model_fields)
    if isinstance(value, dict) and len(path) >= 2 and path[-2] == "nodes":
        cls = BlockCall if "block" in value else REGISTRY.get(value.get("op"))
        return [f for f in cls.model_fields if f != "op"] if cls else []
    if isinstance(value, dict) and len(path) >= 2 and path[-2] == "blocks":
        return list(BlockDef.model_fields)
    return []

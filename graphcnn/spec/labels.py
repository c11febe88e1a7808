"""The class names of a spec's `labels:` section: an inline list, or a file of one name per line
next to the spec; and the check that there is one name per class of the first output."""
from __future__ import annotations

from pathlib import Path

from ..errors import Location, SpecError
from .preprocess import MAX_LABELS

MAX_LABELS_BYTES = 64 * 1024 * 1024


def spec_labels(spec, *, required: bool = True) -> list[str] | None:
    """The spec's class names, or None without a `labels:` section. A file is read relative to
    the spec's own file; for a spec read from text that file cannot be found: an error, or None
    when not `required` (the lowering then leaves the names out of the model)."""
    if spec.labels is None:
        return None
    if isinstance(spec.labels, list):
        return list(spec.labels)
    loc = spec.location(("labels",))
    if spec._path is None:
        if not required:
            return None
        raise SpecError(f"labels file '{spec.labels}' is relative to the spec's folder, and this "
                        "spec was read from text", loc=loc,
                        hint="load the spec from its file, or give the labels inline")
    return read_labels_file(spec._path.parent / spec.labels, loc)


def read_labels_file(path: Path, loc: Location | None = None) -> list[str]:
    """One name per line (UTF-8, a final newline optional); bounded in size and count."""
    try:
        with open(path, "rb") as fh:  # at most the limit + 1 bytes, whatever the file claims
            data = fh.read(MAX_LABELS_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read labels file {path}: {exc.strerror or exc}", loc=loc) from None
    if len(data) > MAX_LABELS_BYTES:
        raise SpecError(f"labels file {path} is too large", loc=loc,
                        expected=f"at most {MAX_LABELS_BYTES:,} bytes")
    if b"\0" in data:
        raise SpecError(f"labels file {path} holds a NUL byte: not a text file", loc=loc)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(f"labels file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}",
                        loc=loc) from None
    return _names(text, path, loc)


def _names(text: str, path: Path, loc: Location | None) -> list[str]:
    text = text[:-1] if text.endswith("\n") else text
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if len(lines) > MAX_LABELS:
        raise SpecError(f"labels file {path} has {len(lines):,} lines", loc=loc,
                        expected=f"at most {MAX_LABELS:,}")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise SpecError(f"labels file {path} line {number} is blank; every line names a class",
                            loc=loc)
    return lines


def check_label_count(labels: list[str] | None, checked, loc: Location | None = None) -> None:
    """One name per class: the size of the first output's channel axis (dim 1 of [N, C, ...])."""
    if labels is None or not checked.outputs:
        return
    name = checked.outputs[0]
    shape = checked.shape_of(name)
    classes = shape[0] if shape else None
    if isinstance(classes, int) and classes != len(labels):
        raise SpecError(f"labels: {len(labels):,} names for output '{name}' of {classes:,} classes",
                        loc=loc, expected=f"{classes:,} names", received=f"{len(labels):,}")


def checked_labels(checked, *, required: bool = True) -> list[str] | None:
    """The labels of a checked graph's spec, read and checked against its first output."""
    spec = getattr(checked, "spec", None)
    if spec is None or getattr(spec, "labels", None) is None:
        return None
    labels = spec_labels(spec, required=required)
    check_label_count(labels, checked, spec.location(("labels",)))
    return labels

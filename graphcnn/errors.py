"""User-facing errors. Each carries where (file:line:col, node id) and what (expected vs received)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A position in a spec file; line and column are 1-based, as editors show them."""

    file: str | None
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file or '<spec>'}:{self.line}:{self.col}"


class GraphCnnError(Exception):
    """Base of every error a user can cause. The CLI prints it without a traceback and exits 1."""

    def __init__(self, message: str, *, loc: Location | None = None, node: str | None = None,
                 expected: str | None = None, received: str | None = None,
                 rule: str | None = None, hint: str | None = None,
                 via: tuple[Location, ...] = ()):
        self.message, self.loc, self.node = message, loc, node
        self.expected, self.received, self.rule, self.hint = expected, received, rule, hint
        self.via = via  # further locations, e.g. the block instantiation that led here
        super().__init__(self.render())

    source: str | None = None  # the file the error is about, where no `loc` says (`about`)

    def render(self) -> str:
        head = f"{self.loc}: " if self.loc else f"{self.source}: " if self.source else ""
        node = f"{self.node}: " if self.node else ""
        parts = [f"{head}{node}{self.message}"]
        if self.expected is not None:
            parts.append(f"expected {self.expected}")
        if self.received is not None:
            parts.append(f"received {self.received}")
        if self.rule:
            parts.append(f"rule: {self.rule}")
        if self.hint:
            parts.append(self.hint)
        text = "; ".join(parts)
        for where in self.via:
            text += f"\n  (instantiated at {where})"
        return text

    def at(self, loc: Location | None, node: str | None = None,
           via: tuple[Location, ...] = ()) -> "GraphCnnError":
        """Fill in the location and node id where the raiser did not know them."""
        self.loc = self.loc or loc
        self.node = self.node or node
        self.via = self.via or via
        self.args = (self.render(),)
        return self


class SpecError(GraphCnnError):
    """The spec text or its fields are malformed (YAML, unknown op or field, bad value)."""


class GraphError(GraphCnnError):
    """The wiring is wrong: unknown inputs, duplicate ids, cycles, arity."""


class ShapeError(GraphCnnError):
    """A node cannot accept the shapes it receives."""


class InputsDisagree(ShapeError):
    """A merge's input shapes that no input size reconciles (one broadcasts to the other, as a
    pooled gate [N, C, 1, 1] against [N, C, H, W]): not restated as an input-size problem."""


class CompileError(GraphCnnError):
    """Lowering failed for a reason the user controls (opset, batch, output path)."""


class RunError(GraphCnnError):
    """Running a model failed for a reason the user controls (provider, input file)."""


class DataError(GraphCnnError):
    """Training or calibration data does not fit the spec."""


class OutputError(GraphCnnError):
    """An output cannot go where it was asked to: onto the command's own input, over something
    that is not a regular file, or the file system refuses (read-only, full, no permission)."""


SHOWN_CHARS = 200  # how much of a value an error message echoes


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` as an error message echoes it: cut to `limit` characters, saying how many were
    left out (a 169-byte spec may compute a 20 MB value; its error stays one line)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def nearest(word: str, choices) -> str:
    """' did you mean 'x'?' for the closest choice, or ''."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


@contextmanager
def about(path, *others):
    """Errors raised inside name the file they are about: `path:` goes in front of a message
    that names neither it nor one of `others` (the other files the work reads), so that
    "onnxruntime cannot load the model" says which model."""
    try:
        yield
    except GraphCnnError as exc:
        text = exc.render()
        if exc.loc is None and not any(str(p) in text for p in (path, *others) if p):
            exc.source = str(path)
            exc.args = (exc.render(),)
        raise

"""Third-party ops: the entry points of group `graphcnn.layers`, loaded once when graphcnn.layers
is imported, after the built-in ops and before graphcnn.spec builds its schema from the registry.

An entry point names one of
- a Layer subclass: graphcnn registers it (a class that is also `@register`ed counts once);
- a module: importing it registers its ops (`@register` on its classes);
- a function: called with no arguments, it registers its ops.
A plugin that cannot be used (its import raises, it registers an op name that exists, it names
anything else or registers nothing) stops graphcnn with a PluginError naming its entry point and
distribution, as pytest does with a broken plugin: a silently skipped op would only surface
later as an "unknown op" far from its cause. GRAPHCNN_NO_PLUGINS=1 starts without plugins.
"""
from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from ..errors import GraphCnnError
from .base import (REGISTRY, Layer, RegistryError, late_registration, register,
                   unregister)

GROUP = "graphcnn.layers"
DISABLE = "GRAPHCNN_NO_PLUGINS"


class PluginError(GraphCnnError):
    """A plugin's entry point could not be loaded or used."""


class _Unusable(Exception):
    """What an entry point names is not something graphcnn can register."""


@dataclass(frozen=True)
class Plugin:
    """A loaded entry point, where it came from, and the ops it added."""

    name: str
    value: str
    dist: str
    ops: tuple[str, ...]


LOADED: list[Plugin] = []
_AUTOLOADED: list[bool] = []


def load_installed() -> None:
    """Load every installed plugin, once (graphcnn.layers calls this when it is imported)."""
    if _AUTOLOADED or os.environ.get(DISABLE):
        return
    _AUTOLOADED.append(True)
    try:
        load(entry_points(group=GROUP))
    except PluginError:
        _print_when_uncaught()
        raise


def load(points) -> list[Plugin]:
    """Load these entry points (the installed ones, or a test's), in name order so that which
    of two plugins claiming one op name is refused does not depend on sys.path."""
    return [load_one(point) for point in sorted(points, key=lambda p: (p.name, p.value))]


def load_one(point: EntryPoint) -> Plugin:
    before = set(REGISTRY)
    try:
        with late_registration():  # the schema may exist already when a test loads a plugin
            _use(point.load(), len(before))
    except Exception as exc:  # third-party code: any failure becomes one error naming it
        for op in [op for op in REGISTRY if op not in before]:
            unregister(op)  # a plugin loads whole or not at all
        raise _failure(point, exc) from exc
    added = tuple(op for op in REGISTRY if op not in before)
    plugin = Plugin(point.name, point.value, distribution(point), added)
    LOADED.append(plugin)
    return plugin


def _use(obj, count_before: int) -> None:
    """Register what the entry point names (the rules in the module docstring)."""
    if isinstance(obj, type) and issubclass(obj, Layer):
        if obj not in REGISTRY.values():
            register(obj)
        return
    if not callable(obj) and not inspect.ismodule(obj):
        raise _Unusable(f"it names a {type(obj).__name__}, not a Layer subclass, a module or "
                        "a function")
    if not inspect.ismodule(obj):
        obj()
    if len(REGISTRY) == count_before:
        raise _Unusable("it registered no op (decorate each Layer class with @register)")


def distribution(point: EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    return f"distribution {dist.name} {dist.version}" if dist else "no distribution"


def _failure(point: EntryPoint, exc: Exception) -> PluginError:
    what = str(exc) if isinstance(exc, (RegistryError, _Unusable)) else \
        f"{type(exc).__name__}: {exc}"
    dist = getattr(point, "dist", None)
    name = dist.name if dist else point.module
    return PluginError(f"plugin '{point.name} = {point.value}' ({distribution(point)}, "
                       f"entry-point group {GROUP}) failed to load: {what}",
                       hint=f"fix or uninstall {name}, or set {DISABLE}=1 to run without "
                       "plugins")


def _print_when_uncaught() -> None:
    """The plugins load while `graphcnn` is being imported, before the CLI's handler of user
    errors runs, so an uncaught PluginError is printed as that handler prints one: one line,
    exit status 1, the traceback only under --verbose."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if isinstance(value, PluginError) and "--verbose" not in sys.argv:
            print(f"error: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)
    sys.excepthook = hook

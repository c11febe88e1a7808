"""Pausing Python's cyclic garbage collector around bulk work.

Loading, checking and lowering a spec allocate many long-lived objects that form no cycles;
the collector would rescan all of them again and again (about half the time of a
10,000-layer check). Reference counting still frees everything as usual; collection resumes
when the outermost paused call returns.
"""
from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def gc_paused():
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()

"""Textual's strips freed by their reference counts, not by the garbage collector.

A :class:`textual.strip.Strip` keeps seven small caches of what was made from it. ``Strip.divide(cuts)``
(Textual 8.2), asked for the one cut at the strip's full length, caches the answer ``[self]`` in the strip
itself. The compositor divides every line it paints at the edges of the widgets on it, and a line that
one widget covers is such a cut: nearly every strip painted then references itself, and is freed not when
the last line holding it lets go but only by a full pass of the garbage collector, with its seven caches
and their dicts. In a tour of the app (`benchmarks/tui_bench.py`: 100 pages, 100 searches, 30 members)
that was some 20,000 strips and 190,000 objects, most of the garbage each full pass had to find.

:func:`install` puts a ``divide`` in place that answers that one case without the cache (the same
``[self]``, as Textual returns it); every other division is Textual's own code and cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from textual.strip import Strip

_textual_divide = Strip.divide


def divide(self: Strip, cuts: Iterable[int]) -> Sequence[Strip]:
    """``Strip.divide``, without caching the strip in itself when the one cut is its full length."""
    cell_length = self.cell_length
    kept = [cut for cut in cuts if cut <= cell_length]
    if len(kept) == 1 and kept[0] == cell_length:
        return [self]
    return _textual_divide(self, kept)


def install() -> None:
    """Put ``divide`` in place on Textual's Strip (idempotent)."""
    Strip.divide = divide  # type: ignore[method-assign]

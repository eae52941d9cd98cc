"""Painted strips are freed by their reference counts (carecli/screens/strips.py): ``Strip.divide`` at the
strip's own length no longer caches the strip in itself, and every division answers as Textual's does."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

from carecli.screens import strips

STYLES = [None, Style(bold=True), Style(color="red", bgcolor="blue")]
segments = st.lists(st.tuples(st.text(alphabet=st.sampled_from("ab 1-é漢"), min_size=1, max_size=8),
                              st.sampled_from(STYLES)), max_size=5)


@pytest.fixture(autouse=True)
def installed() -> Iterator[None]:
    before = Strip.divide
    strips.install()
    try:
        yield
    finally:
        Strip.divide = before  # type: ignore[method-assign]


def make(parts: list[tuple[str, Style | None]]) -> Strip:
    return Strip([Segment(text, style) for text, style in parts])


def holds_itself(strip: Strip) -> bool:
    """Whether any of the strip's caches holds the strip, as a value or inside a list value."""
    for name in Strip.__slots__:
        cache = getattr(strip, name, None)
        values = getattr(cache, "_cache", None)
        if isinstance(values, dict):
            for value in values.values():
                if value is strip or (isinstance(value, list) and any(item is strip for item in value)):
                    return True
    return False


def test_the_app_installs_it() -> None:
    from carecli.config import load_settings
    from carecli.screens.app import CareApp

    Strip.divide = strips._textual_divide  # type: ignore[method-assign]
    CareApp(load_settings({}))  # made, not run: no database is opened
    assert Strip.divide is strips.divide


def test_a_strip_divided_at_its_length_is_freed_by_its_reference_count() -> None:
    strip = make([("hello ", None), ("world", STYLES[1])])
    assert [s.text for s in strip.divide([strip.cell_length])] == ["hello world"]
    assert strip.divide([strip.cell_length])[0] is strip
    assert not holds_itself(strip)
    gc.collect()
    gc.disable()
    try:
        gc.set_debug(gc.DEBUG_SAVEALL)
        strip = make([("freed", None)])
        strip.divide([strip.cell_length, strip.cell_length + 3])  # a cut past the end is dropped, as in Textual
        del strip
        gc.collect()
        assert not any(isinstance(item, Strip) for item in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@given(parts=segments, cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=4))
def test_every_division_answers_as_textuals_own(parts: list[tuple[str, Style | None]], cuts: list[int]) -> None:
    """The same strips (text, styles, cell lengths) as Textual's divide on an identical strip, asked twice
    (the second answer from the cache), and the strip never in its own caches."""
    cuts = sorted(cuts)
    ours, theirs = make(parts), make(parts)
    expected = [(list(s), s.cell_length) for s in strips._textual_divide(theirs, cuts)]
    for _ in range(2):
        assert [(list(s), s.cell_length) for s in ours.divide(cuts)] == expected
    assert not holds_itself(ours)

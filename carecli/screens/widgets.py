"""Small widget adjustments shared by the screens."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, cast

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual._types import SegmentLines
from textual.binding import Binding
from textual.cache import LRUCache
from textual.content import Content
from textual.css.query import NoMatches
from textual.css.styles import RenderStyles
from textual.geometry import Region
from textual.message import Message
from textual.render import measure
from textual.scrollbar import ScrollBarRender
from textual.strip import Strip
from textual.widget import NoScreen, Widget
from textual.widgets import Checkbox, DataTable, Footer, Header, Input, Static, TabbedContent, TabPane
from textual.widgets._data_table import CellType, ColumnKey, RowKey, default_cell_formatter
from textual.widgets._header import HeaderTitle


def prune_dead_watchers(obj: Any) -> None:
    """Forget reactive watchers registered by widgets that are no longer on screen.

    Textual keeps a watcher made with ``watch``/``data_bind`` until the watched
    value next changes (Textualize/textual#6666). The footer re-binds a fresh
    key widget on every focus change and each screen's header watches the
    app's title, so an all-day session would otherwise keep every one of them
    alive: thousands of widgets, and ever longer garbage collections. The
    watcher table is a private attribute; drop this once the upstream fix lands.
    """
    watchers: dict[str, list[tuple[Any, Any]]] | None = getattr(obj, "__watchers", None)
    if not watchers:
        return
    for entries in watchers.values():
        entries[:] = [(node, callback) for node, callback in entries
                      if getattr(node, "is_attached", True) and not getattr(node, "_closing", False)]


class CareFooter(Footer):
    """The footer, rebuilt only when what it shows changes, without keeping earlier key widgets alive.

    Textual's footer rebuilds all its key widgets (each restyled as it mounts) after every
    focus change, though moving between the fields of a form or the rows of a screen seldom
    changes a single binding: most of the app's time on a focus change went there.
    """

    _shown: tuple[Any, ...] | None = None

    def _what_is_shown(self) -> tuple[Any, ...]:
        """What compose would draw: each shown binding with its label and state, and the palette key."""
        active = self.screen.active_bindings
        keys = tuple((key, binding.action, binding.description, binding.key_display, binding.group, enabled,
                      tooltip) for key, (_, binding, enabled, tooltip) in active.items() if binding.show)
        return keys, self.show_command_palette, self.compact, self.app.COMMAND_PALETTE_BINDING in active

    async def recompose(self) -> None:
        if not self.is_attached or self._pruning:  # as Widget.recompose: a footer on its way out draws nothing
            return
        shown = self._what_is_shown() if self._bindings_ready else None
        if shown is not None and shown == self._shown:
            return
        self._shown = shown
        await super().recompose()
        prune_dead_watchers(self)


class CareHeader(Header):
    """Textual's header, whose title watcher does not fail when the title is gone.

    Textual's own updates its title when the app's or the screen's title
    changes, and ignores a header that has lost its screen (``NoScreen``) but
    not one whose title widget is already removed (``NoMatches``): a title set
    while a screen is being replaced (a sign-in that opens the worklist) then
    ends the app with that error, seen on a busy machine. Same watchers,
    both cases ignored.
    """

    def _on_mount(self, event: events.Mount) -> None:
        event.prevent_default()  # instead of Header._on_mount, not beside it
        Widget._on_mount(self, event)

        async def set_title() -> None:
            try:
                self.query_one(HeaderTitle).update(self.format_title())
            except (NoScreen, NoMatches):
                pass

        self.watch(self.app, "title", set_title)
        self.watch(self.app, "sub_title", set_title)
        self.watch(self.screen, "title", set_title)
        self.watch(self.screen, "sub_title", set_title)


class WholeCellScrollBarRender(ScrollBarRender):
    """Scrollbars drawn in whole cells: no partial blocks (▂, ▎...) left at the thumb's ends.

    Textual draws the ends of a scrollbar's thumb with eighth-block glyphs for a smoother
    look; on many terminals and fonts those read as stray half blocks beside the tables.
    With a single (blank) glyph the thumb starts and ends on whole cells.
    """

    VERTICAL_BARS: ClassVar[list[str]] = [" "]
    HORIZONTAL_BARS: ClassVar[list[str]] = [" "]


class CareCheckbox(Checkbox):
    """A checkbox whose state reads without colour: ``[x] required`` / ``[ ] required``.

    Textual's own draws the same ``X`` between half blocks either way and tells on from off
    by colour alone (and its compact form takes a tall border, of half blocks, on focus).
    """

    DEFAULT_CSS = """
    CareCheckbox.-textual-compact:focus { border: none !important; }
    """

    @property
    def _button(self) -> Content:
        style = self.get_visual_style("toggle--button")
        return Content.assemble("[", ("x" if self.value else " ", style), "]")


class CareTabbedContent(TabbedContent):
    """Textual's TabbedContent, which ignores a focus in one of its panes once its tabs are gone.

    A widget focused in a pane tells the TabbedContent, which makes that pane's tab the active
    one. While a screen is torn down (removed, or the app ending) its deepest widgets go first:
    the tabs are gone before the panes, and a focus on its way then (a member screen focuses its
    calls as it is mounted) made Textual raise "No Tab with id ..." and end the app (CI, the spare
    member screen torn down at the app's end). There is no tab to show then, so nothing to do.
    """

    def _on_tab_pane_focused(self, event: TabPane.Focused) -> None:
        try:
            self.get_tab(event.tab_pane)
        except (NoMatches, ValueError):  # no tabs left, or none for this pane (or a pane with no id)
            event.stop()
            event.prevent_default()  # Textual's own handler (the next in the MRO) would raise


def show_empty(table: DataTable[Any], note: Static, text: str) -> None:
    """Say ``text`` in ``note`` instead of an empty table's bare header (and nothing once it has rows)."""
    empty = table.row_count == 0
    note.update(text if empty else "")
    note.display = empty
    table.show_header = not empty


class SearchBox(Input):
    """A search or filter box above a list: down and page down go on to the list (it posts :class:`Leave`)."""

    BINDINGS = [
        Binding("down,pagedown", "leave", "To the list", show=False, id="search.to_list",
                tooltip="Go from the search box to the list below it"),
    ]

    class Leave(Message):
        """The user wants to go from the box down into the list."""

        def __init__(self, box: SearchBox) -> None:
            super().__init__()
            self.box = box

        @property
        def control(self) -> SearchBox:
            return self.box

    def __init__(self, value: str | None = None, **kwargs: Any) -> None:
        # Coming back to the box (up from the list, a letter typed on the list) goes on typing: no select-all.
        kwargs.setdefault("select_on_focus", False)
        super().__init__(value, **kwargs)

    #: set by the screen: moves the focus down into the list at once (not through Widget.focus, which
    #: moves it only after the keys already waiting)
    leave_now: Callable[[], None] | None = None

    def action_leave(self) -> None:
        if self.leave_now is not None:
            self.leave_now()
        self.post_message(self.Leave(self))


#: text every character of which is one cell wide and drawn as itself
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


class PlainCell:
    """A table cell holding text as typed (or a styled Text), drawn as a fresh :class:`Text` each time.

    A str handed to DataTable would be parsed as markup; a Text object would be shared between the table's
    measuring and drawing. This is neither: what people typed, shown as typed.
    """

    __slots__ = ("text", "styled", "plain_ascii")

    def __init__(self, text: str | Text) -> None:
        self.styled = text if isinstance(text, Text) else None
        self.text = text.plain if isinstance(text, Text) else text
        #: unstyled printable ASCII: one cell per character, so CareTable measures and draws it itself
        self.plain_ascii = self.styled is None and _PRINTABLE_ASCII.fullmatch(self.text) is not None

    def __rich__(self) -> Text:
        if self.styled is not None:
            return self.styled.copy()
        return Text(self.text, no_wrap=True, end="")

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"PlainCell({self.text!r})"


def _as_data(value: Any) -> Any:
    """A str cell as plain text, a Text as a copy of itself each time; anything else as it is."""
    return PlainCell(value) if isinstance(value, (str, Text)) else value


class UnlinkingLRUCache(LRUCache[Any, Any]):
    """Textual's LRUCache, whose ``clear`` also unlinks the entries.

    Its entries are the nodes of a ring (each ``[previous, next, key, value]``); ``clear`` dropped the ring
    whole, a cycle only the garbage collector's full pass frees, with every Strip and Segment it cached.
    DataTable clears its caches at every new page: over a tour of 60 pages, 100 searches and 20 members
    opened, 1.4 million objects waited for those passes (benchmarks/tui_bench.py), each pass 30 ms or more.
    Unlinked, they go the moment they are dropped.
    """

    def clear(self) -> None:
        for node in self._cache.values():
            node.clear()
        super().clear()


class _FrameComponentStyles:
    """A table component's styles while one frame is drawn: its rich style (an ancestor walk) read once."""

    __slots__ = ("_styles", "rich_style")

    def __init__(self, styles: RenderStyles) -> None:
        self._styles = styles
        self.rich_style = styles.rich_style

    def __getattr__(self, name: str) -> Any:
        return getattr(self._styles, name)


#: DataTable's caches (Textual < 9, pinned), kept at Textual's sizes
_TABLE_CACHES = ("_row_render_cache", "_cell_render_cache", "_row_renderable_cache", "_line_cache",
                 "_offset_cache", "_ordered_row_cache")


class CareTable(DataTable[Any]):
    """The app's tables: a string cell is data, never markup.

    Textual's DataTable parses ``str`` cells as console markup, and what fills carecli's tables was typed
    by people (notes, outcomes, flag descriptions, names, plan names, reasons...): a note reading
    ``call back [/b] monday`` raised a MarkupError that closed the screen for everyone opening that member,
    and ``[@click=app.quit]`` made text into an action. Every table of the app is a CareTable, so every way
    a cell gets in (add_row, add_rows, update_cell, update_cell_at) takes text as typed.
    """

    def add_row(self, *cells: CellType, height: int | None = 1, key: str | None = None,
                label: Any = None) -> RowKey:
        data = [_as_data(cell) for cell in cells]
        row_key = super().add_row(*data, height=height, key=key, label=_as_data(label) if label is not None else None)
        if self._widen_for(data) and label is None and height == 1 and len(data) == len(self.columns):
            self._measured_rows.add(row_key)
        else:  # a key can come back (a row removed, then added again before the table was idle)
            self._measured_rows.discard(row_key)
        return row_key

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        """Textual's, for the new rows add_row has not measured already.

        DataTable measures every cell of its new rows once its message queue is empty, through Rich (a Text per
        cell), to widen its columns: a seventh of paging in a profile. A one-line row without
        a label whose cells are all plain ASCII was measured exactly when it was added (``_widen_for``)."""
        measured = self._measured_rows
        super()._update_dimensions([key for key in new_rows if key not in measured])
        measured.clear()

    def _widen_for(self, cells: list[Any]) -> bool:
        """Columns as wide as the new row's cells now, not on the next idle.

        DataTable measures new rows when its message queue is empty, and keeps the cells it drew before that at
        the width they had then (its render cache is not keyed by width): a table filled while shown could stay
        cut at its header's width ("O'Brie" for "O'Brien, Samantha") until something else redrew it."""
        console = self.app.console
        widened = False
        plain = True
        for column, cell in zip(self.ordered_columns, cells, strict=False):
            if isinstance(cell, PlainCell) and cell.plain_ascii:
                width = len(cell.text)  # one cell per character: what measuring its Text gives, 20x cheaper
            else:
                plain = False
                if not column.auto_width:
                    continue
                width = measure(console, default_cell_formatter(cell, wrap=False, height=1), 1)
            if width > column.content_width:
                column.content_width = width
                widened = widened or column.auto_width
        if widened:
            self._clear_caches()  # private (Textual < 9 is pinned): cells drawn at the old width are not kept
        return plain

    #: draw one-line cells of plain printable ASCII directly (see _render_cell); False: always Textual's way
    fast_cells: bool = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: new rows whose cells add_row measured exactly (see _update_dimensions)
        self._measured_rows: set[RowKey] = set()
        for name in _TABLE_CACHES:
            setattr(self, name, UnlinkingLRUCache(getattr(self, name).maxsize))

    def on_unmount(self) -> None:
        # The screen is going: what it drew goes now, not with the widget tree's cycle at a full collection.
        self._clear_caches()

    #: while a frame is drawn (render_lines): the table's rich style and its components' styles, each read once
    _frame_style: Style | None = None
    _frame_components: dict[tuple[str, ...], _FrameComponentStyles] | None = None

    def render_lines(self, crop: Region) -> list[Strip]:
        """Textual's, with the styles every line reads computed once for the frame.

        DataTable reads its own rich style and its header and row components' styles for every line it draws,
        and each read builds a Styles object, merges the component's rules into it and walks every ancestor to
        blend their backgrounds: three times a line, a fifth of a new page's time in a profile of paging.
        Nothing can restyle the table while one frame is drawn."""
        self._frame_style, self._frame_components = self.rich_style, {}
        try:
            return super().render_lines(crop)
        finally:
            self._frame_style = self._frame_components = None

    def render_line(self, y: int) -> Strip:
        style = self._frame_style
        if style is None:
            return super().render_line(y)
        # DataTable.render_line (Textual < 9 is pinned), its rich style read once per frame
        width, _height = self.size
        scroll_x, scroll_y = self.scroll_offset
        fixed_rows_height = 0
        for row_index in range(self.fixed_rows):
            row_key = self._row_locations.get_key(row_index)
            if row_key is not None:
                fixed_rows_height += self.get_row_height(row_key)
        if self.show_header:
            fixed_rows_height += self.get_row_height(self._header_row_key)
        if y >= fixed_rows_height:
            y += scroll_y
        return self._render_line(y, scroll_x, scroll_x + width, style)

    def get_component_styles(self, *names: str) -> RenderStyles:
        components = self._frame_components
        if components is None:
            return super().get_component_styles(*names)
        styles = components.get(names)
        if styles is None:
            styles = components[names] = _FrameComponentStyles(super().get_component_styles(*names))
        return cast(RenderStyles, styles)

    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int,
                     cursor: bool = False, hover: bool = False) -> SegmentLines:
        """A body cell of plain printable ASCII text in a one-line row, drawn without Rich's layout.

        Textual draws every cell through Rich (Styled, Padding, Text wrapping, line cropping): ~100 µs a cell,
        and a new page of results redraws all of them (most of a PageDown's time). Such a cell is only its
        text cropped or padded to the column, between the two padding spaces, in one style; the segments are
        the ones Textual's way gives (tests/tui/test_tables.py compares both for any such text and width).
        Anything else (headers, labels, styled Text, other scripts, wide or control characters, taller rows)
        goes Textual's way.
        """
        padding = self.cell_padding
        if not self.fast_cells or row_index < 0 or column_index < 0 or width <= 2 * padding:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        if row_key is None or column_key is None:  # not a cell of this table (Textual's way says so)
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        cache_key = (row_key, column_key, base_style, cursor, hover, self._show_hover_cursor, self._update_count,
                     self._pseudo_class_state)
        cached = self._cell_render_cache.get(cache_key)
        if cached is not None:
            return cached
        cell = self._data[row_key].get(column_key)
        row = self.rows[row_key]
        if row.height != 1 or row.auto_height or not isinstance(cell, PlainCell) or not cell.plain_ascii:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        component_style, post_style = self._get_styles_to_render_cell(
            False, False, row_index < self.fixed_rows or column_index < self.fixed_columns, hover, cursor,
            self.show_cursor, self._show_hover_cursor, self.cursor_foreground_priority == "css",
            self.cursor_background_priority == "css")
        style = base_style + Style.from_meta({"row": row_index, "column": column_index}) + component_style
        style = style + post_style
        inner = width - 2 * padding
        text = cell.text[:inner]
        edge = Segment(" " * padding, style)
        line = [edge, Segment(text, style)]
        if len(text) < inner:
            line.append(Segment(" " * (inner - len(text)), style))
        line.append(edge)
        lines = [line]
        self._cell_render_cache[cache_key] = lines
        return lines

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str, value: CellType, *,
                    update_width: bool = False) -> None:
        super().update_cell(row_key, column_key, _as_data(value), update_width=update_width)

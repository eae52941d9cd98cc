"""Every table of the app takes text as typed: a str cell is data, never Rich markup (CareTable)."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.text import Text
from textual.app import App, ComposeResult
from textual.coordinate import Coordinate
from textual.widgets._data_table import RowKey

from carecli.screens.widgets import CareTable
from carecli.screens.worklist import WorklistScreen
from tests.tui.conftest import SIZE
from tests.tui.helpers import schedule_today, screen_text, wait_for
from tests.tui.test_member_screens import app_for, make_member

NASTY = ["call back [/b] monday", "[@click=app.quit]here[/]", "[red]reached[/red]", "[", "]", "[/]", "[[b]]",
         "\\[b]", "[link=https://example.com]x[/link]", ":warning:", "[b", "a[b]c[/b]d"]
SCREENS = Path(__file__).resolve().parents[2] / "carecli" / "screens"


def _drawn(table: CareTable, y: int) -> str:
    """Line ``y`` of the table as it is drawn (0: the header)."""
    return "".join(segment.text for segment in table.render_line(y))


class OneTable(App[None]):
    def compose(self) -> ComposeResult:
        yield CareTable(id="t")


async def test_care_table_keeps_every_cell_as_typed_through_every_way_in() -> None:
    app = OneTable()
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.query_one(CareTable)
        table.add_columns("a", "b")
        for index, text in enumerate(NASTY):
            table.add_row(text, text, key=str(index))
        table.add_rows([[NASTY[0], NASTY[1]]])
        table.update_cell("0", table.ordered_columns[1].key, "[@click=app.quit]x")
        table.update_cell_at(Coordinate(1, 0), "[/b]")
        await pilot.pause()
        table.move_cursor(row=len(NASTY))
        await pilot.pause()
        assert app.is_running
        assert [str(cell) for cell in table.get_row("2")] == ["[red]reached[/red]"] * 2
        assert str(table.get_cell("0", table.ordered_columns[1].key)) == "[@click=app.quit]x"
        assert str(table.get_cell_at(Coordinate(1, 0))) == "[/b]"


async def test_a_cell_drawn_before_its_column_grew_is_whole_once_it_has() -> None:
    """DataTable truncates a Text cell in place when it draws it: drawn at the header's width first (before
    the table measured the new rows), the cell stayed cut for good ("O'Brie" for "O'Brien, Samantha")."""
    app = OneTable()
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.query_one(CareTable)
        table.add_columns("Who", "What")
        table.add_row("O'Brien, Samantha", Text("outreach · scheduled", style="dim"), key="r")
        drawn_at_once = _drawn(table, 1)  # before the next idle
        await pilot.pause()
        drawn_later = _drawn(table, 1)
        for line in (drawn_at_once, drawn_later):
            assert "O'Brien, Samantha" in line and "outreach · scheduled" in line


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]/@=:\\ab ")), max_size=30))
def test_any_bracketed_text_is_a_plain_cell(text: str) -> None:
    from carecli.screens.widgets import _as_data

    cell = _as_data(text).__rich__()
    assert cell.plain == text and not cell.spans  # no style, no link: what was typed


def test_no_screen_makes_a_bare_datatable() -> None:
    """A new table that forgot CareTable would parse what people typed as markup again: neither a bare
    DataTable nor a class of its own built on DataTable instead of CareTable (the member browser's
    results table was one, and drew member names as markup)."""
    offenders = []
    for path in SCREENS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DataTable":
                offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.ClassDef) and node.name != "CareTable":
                bases = [ast.unparse(base) for base in node.bases]
                if any(base == "DataTable" or base.startswith("DataTable[") for base in bases):
                    offenders.append(f"{path.name}:{node.lineno} class {node.name}")
    assert offenders == []


async def test_the_member_browser_lists_a_bracketed_name_as_typed(tui) -> None:
    from carecli.data.crypto.runtime import cipher_provider
    from carecli.data.unit_of_work import PlatformUnitOfWork
    from carecli.screens.members import MemberBrowserScreen

    admin = tui.sign_in("admin")
    with PlatformUnitOfWork(tui.databases.platform, admin.actor,
                            cipher=cipher_provider(tui.settings, tui.databases)) as uow:
        names_by_id = {uow.members.create({"first_name": text, "last_name": f"Zzmarkup{index}", "city": text,
                                           "status": "active"}).id: index for index, text in enumerate(NASTY)}
        uow.commit()
    app = app_for(tui, tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        await pilot.press("f3")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, MemberBrowserScreen) and app.screen)
        await pilot.press(*"zzmarkup")
        await wait_for(pilot, lambda: screen.query_state.text == "zzmarkup" and screen.settled
                       and len(screen.rows) == len(NASTY))
        await pilot.pause()
        table = screen.query_one("#member-results", CareTable)
        names = sorted(str(table.get_row_at(row)[0]) for row in range(table.row_count))
        assert names == sorted(f"Zzmarkup{index}, {text}" for index, text in enumerate(NASTY))
        drawn = "\n".join(_drawn(table, y) for y in range(1, table.row_count + 1))
        assert "Zzmarkup2, [red]reached[/red]" in drawn
        # and each one's file opens, the name as typed in its title line
        for index, text in enumerate(NASTY):
            table.focus()
            table.move_cursor(row=screen.rows.index(next(row for row in screen.rows if names_by_id[row] == index)))
            await pilot.press("enter")
            detail = await wait_for(pilot, lambda: getattr(app.screen, "file", None) is not None and app.screen,
                                    what=f"the file of member {index}")
            assert f"Zzmarkup{index}, {text}" in screen_text(detail)
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is screen)
        assert app.is_running


async def test_the_worklist_shows_a_bracketed_outcome_as_typed_and_names_whole(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    # On the Today tab, the one drawn as its rows arrive (another member: a later call would settle the follow-up).
    other = tui.scalar("platform", "SELECT id FROM members WHERE id <> :m AND deleted_at IS NULL ORDER BY id LIMIT 1",
                       m=known.id)
    schedule_today(tui, desk, other)
    overdue = date.today() - timedelta(days=2)
    started = datetime.combine(overdue - timedelta(days=3), datetime.min.time()).replace(hour=15)
    desk.log_call({"member_id": known.id, "call_type": "support", "call_status": "completed",
                   "started_at": started, "ended_at": started + timedelta(minutes=5), "follow_up_required": True,
                   "follow_up_date": overdue, "outcome": "[@click=app.quit]send forms[/]"})
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen) and app.screen)
        today = await wait_for(pilot, lambda: next((t for t in screen.query(CareTable)
                                                    if t.id == "table-today" and t.row_count), None))
        await pilot.pause(0.3)
        drawn = "\n".join(_drawn(today, y) for y in range(today.row_count + 1))
        name = tui.rows("platform", "SELECT first_name, last_name FROM members WHERE id = :m", m=other)[0]
        assert f"{name.last_name}, {name.first_name}" in drawn  # whole, not cut at the header's width
        await pilot.press("2")  # the Overdue tab
        table = await wait_for(pilot, lambda: next((t for t in screen.query(CareTable)
                                                    if t.id == "table-overdue" and t.row_count), None))
        cells = [str(cell) for key in table.rows for cell in table.get_row(key)]
        assert "[@click=app.quit]send forms[/]" in cells
        assert app.is_running



class _Both(App[None]):
    def compose(self) -> ComposeResult:
        yield CareTable(id="t", cursor_type="row", zebra_stripes=True)


_CELL_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40)


async def test_a_plain_ascii_cell_is_drawn_exactly_as_textual_draws_it() -> None:
    """CareTable draws one-line cells of printable ASCII itself (fast_cells): for any such text, any column
    width, the cursor and hover rows, zebra stripes and a fixed column, the segments (text and style, row and
    column meta included) are the ones Textual's own drawing gives."""
    from hypothesis import HealthCheck
    from rich.style import Style

    app = _Both()
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.query_one(CareTable)

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(rows=st.lists(st.tuples(_CELL_TEXT, _CELL_TEXT), min_size=1, max_size=4),
               width=st.integers(min_value=3, max_value=30), fixed=st.booleans())
        def same(rows: list[tuple[str, str]], width: int, fixed: bool) -> None:
            table.clear(columns=True)
            table.add_columns("a", "b")
            table.fixed_columns = 1 if fixed else 0
            for index, (first, second) in enumerate(rows):
                table.add_row(first, second, key=str(index))
            for row in range(len(rows)):
                for column in range(2):
                    for cursor, hover in ((False, False), (True, False), (False, True)):
                        base = Style(bgcolor="#101010") if row % 2 else Style()
                        drawn = {}
                        for fast in (True, False):
                            table.fast_cells = fast
                            table._clear_caches()
                            drawn[fast] = table._render_cell(row, column, base, width, cursor, hover)
                        table.fast_cells = True
                        assert drawn[True] == drawn[False], (rows[row][column], width, cursor, hover)

        same()
        await pilot.pause()
        assert app.is_running


async def test_text_that_is_not_plain_ascii_is_drawn_by_textual() -> None:
    """Wide, combining, control and other scripts' characters keep Textual's drawing (which measures cells)."""
    from rich.style import Style

    app = _Both()
    async with app.run_test(size=(100, 30)):
        table = app.query_one(CareTable)
        table.add_columns("a")
        for index, text in enumerate(["José", "山田 太郎", "e\u0301", "tab\there", "naïve", "😀x"]):
            table.add_row(text, key=str(index))
        for row in range(table.row_count):
            drawn = {}
            for fast in (True, False):
                table.fast_cells = fast
                table._clear_caches()
                drawn[fast] = table._render_cell(row, 0, Style(), 8)
            assert drawn[True] == drawn[False]


@settings(max_examples=200, deadline=None)
@given(text=_CELL_TEXT)
def test_a_plain_ascii_cell_is_as_wide_as_measuring_it_says(text: str) -> None:
    """CareTable widens its columns for plain ASCII cells by their length: what measuring them gives."""
    from rich.console import Console
    from textual.render import measure
    from textual.widgets._data_table import default_cell_formatter

    from carecli.screens.widgets import PlainCell

    assert measure(Console(), default_cell_formatter(PlainCell(text), wrap=False, height=1), 1) == len(text)


def test_a_cleared_table_cache_frees_what_it_held_without_the_garbage_collector() -> None:
    """Textual's LRUCache.clear drops its ring of entries whole, a cycle only a full collection frees (with every
    Strip it held); CareTable's caches unlink it, so a new page frees the last one's drawing at once."""
    import gc
    import weakref

    from textual.cache import LRUCache

    from carecli.screens.widgets import UnlinkingLRUCache

    class Drawn:
        pass

    def held_after_clear(cache: LRUCache[int, Drawn]) -> bool:
        for key in range(5):
            cache.set(key, Drawn())
        cache.get(2)  # reorders the ring
        probe = weakref.ref(cache.get(3))
        cache.clear()
        return probe() is not None

    gc.disable()
    try:
        assert held_after_clear(LRUCache(10))  # the cycle Textual leaves (why CareTable replaces its caches)
        assert not held_after_clear(UnlinkingLRUCache(10))
    finally:
        gc.enable()
    assert all(isinstance(getattr(CareTable(), name), UnlinkingLRUCache)
               for name in ("_row_render_cache", "_cell_render_cache", "_row_renderable_cache", "_line_cache"))


class _MeasuresAll(CareTable):
    """A CareTable that lets Textual measure every new row, as DataTable does."""

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        self._measured_rows.clear()
        super()._update_dimensions(new_rows)


class _Pair(App[None]):
    def compose(self) -> ComposeResult:
        yield CareTable(id="ours")
        yield _MeasuresAll(id="textuals")


_ANY_CELL = st.one_of(st.none(), _CELL_TEXT, st.text(max_size=12), st.integers(), st.builds(Text, _CELL_TEXT))


async def test_rows_measured_when_added_give_the_widths_textual_measures() -> None:
    """CareTable measures plain ASCII rows as they are added and spares Textual's measuring them again: for
    any rows (plain or not, labelled or not, None cells, numbers, styled Text), the columns, the size and
    the drawn lines are the ones Textual's own measuring gives."""
    from hypothesis import HealthCheck

    app = _Pair()
    async with app.run_test(size=(160, 30)) as pilot:
        ours = app.query_one("#ours", CareTable)
        textuals = app.query_one("#textuals", CareTable)

        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
        @given(pages=st.lists(st.lists(st.tuples(_ANY_CELL, _ANY_CELL, _ANY_CELL), max_size=6), min_size=1,
                              max_size=3),
               labelled=st.booleans())
        def same(pages: list[list[tuple[object, object, object]]], labelled: bool) -> None:
            for table in (ours, textuals):
                table.clear(columns=True)
                table.add_column("a")
                table.add_column("b")
                table.add_column("fixed", width=5)
                for rows in pages:  # a page, then the next one in its place before the table is idle
                    table.clear()
                    for index, row in enumerate(rows):
                        label = f"r{index}" if labelled and index % 2 else None
                        table.add_row(*row, key=str(index), label=label)
                # what DataTable does when its message queue is empty
                new_rows = table._new_rows.copy()
                table._new_rows.clear()
                table._update_dimensions(new_rows)
            assert [(c.content_width, c.get_render_width(ours)) for c in ours.ordered_columns] == \
                [(c.content_width, c.get_render_width(textuals)) for c in textuals.ordered_columns]
            assert ours.virtual_size == textuals.virtual_size
            assert ours._label_column.content_width == textuals._label_column.content_width
            for y in range(len(pages[-1]) + 1):
                assert _drawn(ours, y) == _drawn(textuals, y)

        same()
        await pilot.pause()
        assert app.is_running


class _Styled(App[None]):
    CSS = """
    CareTable { height: 1fr; }
    CareTable > .datatable--odd-row { background: #202040; }
    CareTable > .datatable--fixed { background: #402020; color: #e0e0ff; }
    CareTable > .datatable--header { background: #204020; text-style: bold; }
    """

    def compose(self) -> ComposeResult:
        yield CareTable(id="t")


async def test_a_frame_drawn_with_its_styles_read_once_is_textuals_frame() -> None:
    """CareTable reads its own and its components' styles once per frame instead of once per line: for any
    rows, zebra stripes, fixed rows and columns, labels, header, cursor and scroll position, the frame is
    the one Textual draws reading them line by line."""
    from hypothesis import HealthCheck
    from textual.geometry import Region
    from textual.widgets import DataTable

    app = _Styled()
    async with app.run_test(size=(120, 20)) as pilot:
        table = app.query_one(CareTable)

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(rows=st.lists(st.tuples(_ANY_CELL, _ANY_CELL), min_size=0, max_size=30),
               zebra=st.booleans(), header=st.booleans(), fixed_rows=st.integers(0, 2),
               fixed_columns=st.integers(0, 1), labelled=st.booleans(), cursor=st.integers(0, 29),
               cursor_type=st.sampled_from(["cell", "row", "column", "none"]), scroll=st.integers(0, 20))
        def same(rows: list[tuple[object, object]], zebra: bool, header: bool, fixed_rows: int,
                 fixed_columns: int, labelled: bool, cursor: int, cursor_type: str, scroll: int) -> None:
            table.clear(columns=True)
            table.add_columns("a", "b")
            for index, row in enumerate(rows):
                table.add_row(*row, key=str(index), label=f"r{index}" if labelled else None)
            new_rows = table._new_rows.copy()
            table._new_rows.clear()
            table._update_dimensions(new_rows)
            table.zebra_stripes, table.show_header = zebra, header
            # (more fixed rows than rows: a KeyError in Textual's own drawing)
            table.fixed_rows, table.fixed_columns = min(fixed_rows, len(rows)), fixed_columns
            table.cursor_type = cursor_type  # type: ignore[assignment]  # one of Textual's CursorType
            table.move_cursor(row=min(cursor, max(len(rows) - 1, 0)), animate=False)
            table.scroll_to(y=scroll, animate=False, immediate=True)
            crop = Region(0, 0, table.size.width, table.size.height)
            assert crop.height == 20
            table._clear_caches()
            ours = [list(strip) for strip in table.render_lines(crop)]
            table._clear_caches()
            textuals = [list(strip) for strip in DataTable.render_lines(table, crop)]
            assert ours == textuals

        same()
        await pilot.pause()
        assert app.is_running

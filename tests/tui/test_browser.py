"""The member browser and the command palette, against the seeded database."""

from __future__ import annotations

from textual.widgets import Input, Select

from carecli.screens.member import MemberDetailScreen
from carecli.screens.members import PAGE_SIZE, MemberBrowserScreen, ResultsTable
from carecli.screens.worklist import WorklistScreen
from tests.support.seeded import SEED_MEMBERS
from tests.tui.conftest import SIZE
from tests.tui.helpers import screen_text, wait_for


async def _browser(app, pilot) -> MemberBrowserScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
    await pilot.press("f3")
    screen = await wait_for(pilot, lambda: isinstance(app.screen, MemberBrowserScreen) and app.screen)
    await wait_for(pilot, lambda: screen.settled and screen.rows, what="the first page")
    return screen


# A search word starts the first name, the last name or a word inside either (accents folded).
_STARTS_A_WORD = ("carecli_fold(last_name) LIKE :p OR carecli_fold(first_name) LIKE :p "
                  "OR carecli_name_words(last_name, first_name) @@ carecli_word_prefix(:w)")


def _names(tui, where: str = "true", **params) -> list[str]:
    rows = tui.rows("platform", f"SELECT first_name, last_name FROM members WHERE deleted_at IS NULL AND {where} "
                    "ORDER BY carecli_fold(last_name) COLLATE \"C\", carecli_fold(first_name) COLLATE \"C\", id",
                    **params)
    return [f"{row.last_name}, {row.first_name}" for row in rows]


def _shown(screen: MemberBrowserScreen) -> list[str]:
    table = screen.query_one(ResultsTable)
    return [str(table.get_row(key)[0]) for key in table.rows]


async def test_first_page_is_in_name_order_with_an_honest_count(tui) -> None:
    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        screen = await _browser(app, pilot)
        expected = _names(tui)
        assert _shown(screen) == expected[:PAGE_SIZE]
        status = str(screen.query_one("#member-status-line").render())
        assert status == f"1–{PAGE_SIZE} of {len(expected):,} · PgDn for more"
        assert len(expected) <= SEED_MEMBERS


async def test_the_count_is_asked_once_the_page_is_shown_and_a_stale_count_is_dropped(tui, monkeypatch) -> None:
    """The page the user waits for goes first; the count follows it (the two competed when asked together)."""
    import threading

    from carecli.services.desk import Desk

    asked: list[tuple[str, bool, str]] = []
    hold = threading.Event()
    hold.set()
    real_count = Desk.count_members

    def count_members(desk, query):  # noqa: ANN001, ANN202
        screen = app.screen
        assert isinstance(screen, MemberBrowserScreen)
        asked.append((query.text, screen.shown_request == screen.request, _status(screen)))
        hold.wait(10)
        return real_count(desk, query)

    monkeypatch.setattr(Desk, "count_members", count_members)
    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        screen = await _browser(app, pilot)
        assert asked and asked[-1][0] == "" and asked[-1][1]  # the first page was on screen when it was counted
        hold.clear()  # the next count is held: the page shows "…" meanwhile
        await pilot.press("a")
        await wait_for(pilot, lambda: len(asked) == 2, what="the count of 'a'")
        assert asked[-1][:2] == ("a", True) and " of …" in asked[-1][2]
        # Typing on while that count is held: its answer is for an old search and must not be shown.
        await pilot.press("b")
        await wait_for(pilot, lambda: screen.shown_request == screen.request and screen.query_state.text == "ab",
                       what="the page for 'ab'")
        hold.set()
        await wait_for(pilot, lambda: screen.settled and screen.query_state.text == "ab", what="the count of 'ab'")
        expected = len(_names(tui, f"({_STARTS_A_WORD})", p="ab%", w="ab"))
        assert screen.count is not None and screen.count.describe() == f"{expected:,}"
        assert all(shown for _text, shown, _status_then in asked)


def _status(screen: MemberBrowserScreen) -> str:
    return str(screen.query_one("#member-status-line").render())


async def test_typing_searches_and_filters_narrow(tui) -> None:
    last = tui.scalar("platform", "SELECT last_name FROM members WHERE deleted_at IS NULL "
                      "GROUP BY last_name ORDER BY count(*) DESC, last_name LIMIT 1")
    prefix = last[:3].lower()
    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        screen = await _browser(app, pilot)
        await pilot.press(*prefix)
        expected = [name for name in _names(tui, f"({_STARTS_A_WORD})", p=prefix + "%", w=prefix)]
        await wait_for(pilot, lambda: _shown(screen) == expected[:PAGE_SIZE], what=f"results for {prefix!r}")
        status = screen.query_one("#member-status", Select)
        status.value = "suspended"
        suspended = _names(tui, f"({_STARTS_A_WORD}) AND status = 'suspended'", p=prefix + "%", w=prefix)
        await wait_for(pilot, lambda: _shown(screen) == suspended[:PAGE_SIZE], what="the status filter")
        status.clear()
        search = screen.query_one("#member-search", Input)
        search.value = "zzzzqx"
        await wait_for(pilot, lambda: str(screen.query_one("#member-status-line").render()) == "No members match.")


async def test_paging_walks_every_member_once_with_keyset_pages(tui) -> None:
    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        screen = await _browser(app, pilot)
        expected = _names(tui)
        seen: list[str] = []
        table = screen.query_one(ResultsTable)
        table.focus()
        page = 0
        while True:
            seen.extend(_shown(screen))
            if screen.next_cursor is None:
                break
            table.move_cursor(row=table.row_count - 1)
            await pilot.press("pagedown")  # at the last row: the next page
            page += 1
            await wait_for(pilot, lambda: screen.page_number == page and screen.rows, what=f"page {page + 1}")
        assert seen == expected
        assert len(screen.rows) <= PAGE_SIZE  # one page in memory, never the whole table
        # Back up one page from the top row.
        table.move_cursor(row=0)
        await pilot.press("pageup")
        await wait_for(pilot, lambda: screen.page_number == page - 1)
        assert _shown(screen) == expected[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]


async def test_enter_opens_the_member_and_the_lock_clears_the_results(tui) -> None:
    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        screen = await _browser(app, pilot)
        first_id = screen.rows[0]
        table = screen.query_one(ResultsTable)
        table.focus()
        await pilot.press("enter")
        detail = await wait_for(pilot, lambda: isinstance(app.screen, MemberDetailScreen) and app.screen)
        assert detail.member_id == first_id
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)
        app.lock("Locked.")
        assert screen.query_one(ResultsTable).row_count == 0 and screen.rows == []
        await wait_for(pilot, lambda: "Locked." in screen_text(app.screen))


async def test_command_palette_jumps_to_a_member_by_name(tui) -> None:
    row = tui.rows("platform", "SELECT id, first_name, last_name FROM members WHERE deleted_at IS NULL "
                   "ORDER BY last_name DESC LIMIT 1")[0]
    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        await pilot.press("ctrl+p")
        await pilot.press(*f"{row.first_name} {row.last_name}")
        from textual.command import CommandList

        await wait_for(pilot, lambda: app.screen.query(CommandList) and
                       app.screen.query_one(CommandList).option_count > 0, what="palette hits")
        await pilot.press("enter")
        detail = await wait_for(pilot, lambda: isinstance(app.screen, MemberDetailScreen) and app.screen)
        assert detail.member_id == row.id
    opened = tui.scalar("platform", "SELECT count(*) FROM audit_logs WHERE action = 'read' AND entity_id = :m",
                        m=row.id)
    assert opened == 1


async def test_slash_from_the_results_goes_back_to_the_search_box_and_types_in_it(tui) -> None:
    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        screen = await _browser(app, pilot)
        search = screen.query_one("#member-search", Input)
        table = screen.query_one(ResultsTable)
        table.focus()
        await pilot.pause()
        await pilot.press("slash")
        await wait_for(pilot, lambda: search.has_focus, what="the search box")
        await pilot.press("a", "slash", "b")
        await wait_for(pilot, lambda: search.value == "a/b", what="a slash typed in the box")
        assert search.has_focus


async def test_a_screen_once_painted_is_out_of_the_collectors_full_passes(tui) -> None:
    """What a screen made for its first showing lives as long as it does: frozen once painted (collector.settle),
    so the next full pass of the garbage collector does not walk it; the worklist with its rows too."""
    import gc

    desk = tui.sign_in("specialist")
    app = tui.app(desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _browser(app, pilot)
        worklist = app.screen_stack[-2]
        assert isinstance(worklist, WorklistScreen)
        await pilot.pause()
        walked = {id(obj) for obj in gc.get_objects()}  # every generation a full pass walks; not the frozen
        assert id(screen) not in walked and id(screen.query_one("#member-search", Input)) not in walked
        assert id(worklist) not in walked and id(worklist.query_one("#table-plans")) not in walked

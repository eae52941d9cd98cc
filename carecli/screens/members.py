"""The member browser: search as you type, filter, sort, and page through millions a page at a time.

Only the page on screen is held in memory. Paging is keyset paging (the
repository's cursors), so page 1,000 costs what page 1 costs; going back
re-reads an earlier page from the cursor it started at. Results of a search
that was overtaken by newer typing are dropped.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import DataTable, Input, Select, Static

from carecli.data.models.enums import MEMBER_STATUSES
from carecli.data.records import Plan
from carecli.data.repositories.member_search import CountEstimate, MemberPage, MemberQuery, SortKey
from carecli.screens.base import CareScreen, member_name
from carecli.screens.formatting import show_phone, words
from carecli.screens.live import DataChanged
from carecli.screens.widgets import CareFooter, CareHeader, CareTable, SearchBox

PAGE_SIZE = 50
#: a page not there this long after it was asked for: the status line says "Searching…"
SEARCHING_AFTER_SECONDS = 0.15
#: newest / oldest: by when the member's record was added
SORTS = (("Name A→Z", "name"), ("Name Z→A", "name_desc"), ("Newest added", "newest"), ("Oldest added", "oldest"))


class PageLoaded(Message):
    def __init__(self, request: int, page: MemberPage, page_number: int) -> None:
        super().__init__()
        self.request = request
        self.page = page
        self.page_number = page_number


class CountLoaded(Message):
    def __init__(self, request: int, count: CountEstimate) -> None:
        super().__init__()
        self.request = request
        self.count = count


class PlansLoaded(Message):
    def __init__(self, plans: list[Plan]) -> None:
        super().__init__()
        self.plans = plans


class ResultsTable(CareTable):
    """A page of results; moving past its last or first row asks for the next or previous page.

    A CareTable: names, e-mails and cities are shown as typed, never read as markup (a member named
    ``[/]`` ended the browser with a MarkupError for everyone whose search listed them)."""

    class EdgeReached(Message):
        def __init__(self, forward: bool) -> None:
            super().__init__()
            self.forward = forward

    class LeftTop(Message):
        """Up on the first row: back to the search box."""

    def action_page_down(self) -> None:
        if self.row_count == 0 or self.cursor_row >= self.row_count - 1:
            self.post_message(self.EdgeReached(True))
        else:
            super().action_page_down()

    def action_page_up(self) -> None:
        if self.cursor_row <= 0:
            self.post_message(self.EdgeReached(False))
        else:
            super().action_page_up()

    def action_cursor_down(self) -> None:
        if self.row_count and self.cursor_row >= self.row_count - 1:
            self.post_message(self.EdgeReached(True))
        else:
            super().action_cursor_down()

    def action_cursor_up(self) -> None:
        if self.cursor_row <= 0:
            if self.screen.focused is self:  # at once, as the key comes; LeftTop only tells the screen
                for box in self.screen.query("#member-search").results(Input):
                    self.screen.set_focus(box)
            self.post_message(self.LeftTop())
        else:
            super().action_cursor_up()


class MemberBrowserScreen(CareScreen):
    """Find members by name, e-mail or phone; Enter opens one."""

    HELP = """
## Members

Type in the search box: a name or the start of one (`oka`, `ada oka`), an e-mail
(`ada@`), or phone digits (`503 555`). Results follow your typing. **Down** (or
**Enter**) goes from the box to the results, **Up** on the first result back to
the box. **Tab** goes box → results → status, plan and sort filters.

**PageDown** at the bottom of the list loads the next page, **PageUp** at the top
the previous one; only one page is held at a time, so this stays fast on millions
of members. The count is exact for small results and an estimate ("about 1.2M")
for large ones. **Enter** opens the member (an audited read of their record).
"""

    BINDINGS = [
        Binding("ctrl+f", "focus_search", "Search", id="members.search", tooltip="Put the cursor in the search box"),
        # "/" found a member on the worklist; from the results it goes back to the search box (typed in the
        # box, it is a character like any other: the box takes it first).
        Binding("slash", "focus_search", "Search", id="members.search_slash", show=False,
                tooltip="Put the cursor in the search box"),
        Binding("ctrl+n", "next_page", "Next page", id="members.next_page", tooltip="The next page of results"),
        Binding("ctrl+b", "previous_page", "Prev page", id="members.previous_page",
                tooltip="The previous page of results"),
        Binding("ctrl+r", "reload", "Refresh", id="members.refresh", tooltip="Search again"),
        Binding("escape", "back", "Back", id="members.back", tooltip="Back to the previous screen"),
    ]

    # One line of compact fields (no tall borders): at 80 columns the search box keeps a usable width and
    # the plan list fits the longest plan code (HDHP-PLATINUM-2026); wider terminals give the room to the search.
    DEFAULT_CSS = """
    MemberBrowserScreen #member-filters { height: 1; margin: 0 0 1 0; }
    MemberBrowserScreen #member-filters > * { margin: 0 0 0 1; }
    MemberBrowserScreen #member-search { width: 1fr; min-width: 24; }
    MemberBrowserScreen #member-status { width: 14; }
    MemberBrowserScreen #member-plan { width: 21; }
    MemberBrowserScreen #member-sort { width: 16; }
    MemberBrowserScreen #member-filters SelectOverlay { width: auto; min-width: 100%; }
    """

    WORK_FOCUS = "#member-search"

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self.initial_text = text
        self.query_state = MemberQuery(text=text)
        #: every page fetch gets a number; only the newest one's result is shown
        self.request = 0
        #: the fetch whose page the table shows (equal to ``request`` once the newest page is in)
        self.shown_request = 0
        #: every new search (typing, filters) gets a number; the count belongs to one search
        self.search_id = 0
        #: the cursor each visited page started from (page 1 starts from None)
        self.page_starts: list[Any] = [None]
        self.page_number = 0
        self.next_cursor: Any = None
        self.rows: list[uuid.UUID] = []
        #: the text of each shown row's cells, as added (a page read again redraws only what changed)
        self._cells: list[tuple[str, ...]] = []
        #: says "Searching…" if the page asked for has not come SEARCHING_AFTER_SECONDS later
        self._searching_timer: Timer | None = None
        self.count: CountEstimate | None = None
        #: the search whose count is still to be asked for: it is asked once that search's page is on
        #: screen, not alongside it (the two queries shared the interpreter and the database's two cores,
        #: and the page, which the user waits for, came later; benchmarks/tui_bench.py)
        self._count_due: int | None = None
        #: while a live reload's count is due: the members its notices named (each on the page shown then), and
        #: whether anything else changed too (a coarse notice, a member not on the page). The count is asked
        #: again only then, or when a named member has left the page: members no notice named did not change,
        #: and a named one on the page before and after matched before and matches now, so the number of
        #: matches is the same (on the SSH host, one rename of a member on everyone's page was a page and a
        #: count per session; it is now a page)
        self._reload_named: set[uuid.UUID] = set()
        self._recount = True
        #: a live reload puts the cursor back on this member (by id) when the page comes back
        self._keep_cursor: str | None = None
        #: changed while covered: reload when shown again
        self._stale = False
        #: Esc was pressed once with a search typed: the next Esc leaves
        self._leave_armed = False

    def compose(self) -> ComposeResult:
        yield CareHeader()
        with Horizontal(id="member-filters"):
            yield SearchBox(self.initial_text, placeholder="Name, e-mail or phone… (↓ to the results)",
                            id="member-search", compact=True)
            yield Select([(words(s).capitalize(), s) for s in MEMBER_STATUSES], prompt="Any status",
                         id="member-status", compact=True)
            yield Select([], prompt="Any plan", id="member-plan", compact=True)
            yield Select(SORTS, value="name", allow_blank=False, id="member-sort", compact=True)
        yield ResultsTable(id="member-results", cursor_type="row", zebra_stripes=True)
        yield Static("", id="member-status-line", classes="status-line")
        yield CareFooter()

    def on_mount(self) -> None:
        self.query_one(ResultsTable).add_columns("Name", "Status", "Phone", "E-mail", "City")
        box = self.query_one("#member-search", SearchBox)
        box.leave_now = self._down_from_search
        box.focus()
        self.load_plans()
        self.search(reset=True)

    @property
    def focus_chain(self) -> list[Widget]:
        """Tab goes search box -> results -> filters (the filters sit beside the box, the results below)."""
        chain = list(super().focus_chain)
        results = self.query_one(ResultsTable)
        search = self.query_one("#member-search", Input)
        if results in chain and search in chain:
            chain.remove(results)
            chain.insert(chain.index(search) + 1, results)
        return chain

    def _down_from_search(self) -> None:
        """Down or PgDn in the box: on to the first result (the search typed so far is sent first); the
        box calls it as the key comes (``SearchBox.leave_now``), so Enter typed right after opens the member."""
        if self.current_query() != self.query_state:
            self.search(reset=True)
        table = self.query_one(ResultsTable)
        self.set_focus(table)
        if table.row_count:
            table.move_cursor(row=0)

    def on_results_table_left_top(self, message: ResultsTable.LeftTop) -> None:
        self.set_focus(self.query_one("#member-search", Input))

    # -- inputs ------------------------------------------------------------------------

    @on(Input.Changed, "#member-search")
    def text_changed(self, event: Input.Changed) -> None:
        """Every key searches at once (no debounce): a page of 50 by name costs the server a few ms, and
        the results of a key overtaken by the next one are dropped (``request``)."""
        self.search(reset=True)

    @on(Input.Submitted, "#member-search")
    def text_submitted(self) -> None:
        """Enter: search now (unless these results are already for this text), then go to the results."""
        if self.current_query() != self.query_state:
            self.search(reset=True)
        self.query_one(ResultsTable).focus()

    @on(Select.Changed)
    def filter_changed(self, event: Select.Changed) -> None:
        self.search(reset=True)

    @property
    def settled(self) -> bool:
        """The table shows the newest page asked for and the count of the newest search is in."""
        return self.shown_request == self.request and self.count is not None

    def current_query(self) -> MemberQuery:
        status = self.query_one("#member-status", Select)
        plan = self.query_one("#member-plan", Select).value  # a plan's id, or blank (NoSelection)
        sort = self.query_one("#member-sort", Select).value
        return MemberQuery(
            text=self.query_one("#member-search", Input).value.strip(),
            status=None if status.is_blank() else str(status.value),
            plan_id=plan if isinstance(plan, uuid.UUID) else None,
            sort=cast(SortKey, sort) if isinstance(sort, str) else "name",  # the options are SORTS
        )

    # -- searching -----------------------------------------------------------------------

    def search(self, *, reset: bool, page_number: int = 0) -> None:
        """Ask for a page (the first of a new search when ``reset``)."""
        if not self.is_mounted:
            return
        if reset:
            self.query_state = self.current_query()
            self.page_starts = [None]
            page_number = 0
            self.search_id += 1
            self.count = None
            self._count_due = self.search_id
            self._recount = True
        self.request += 1
        # Said only when the page is slow to come: most come within a few ms, and saying it anyway was one
        # more frame per keystroke (and per live update, on every screen showing the browser).
        if self._searching_timer is not None:
            self._searching_timer.stop()
        self._searching_timer = self.set_timer(SEARCHING_AFTER_SECONDS, self._say_searching)
        self.fetch_page(self.request, self.query_state, self.page_starts[page_number], page_number)

    def _say_searching(self) -> None:
        self._searching_timer = None
        if self.shown_request != self.request:
            self.query_one("#member-status-line", Static).update("Searching…")

    @work(thread=True, exclusive=True, group="member-page")
    def fetch_page(self, request: int, query: MemberQuery, after: Any, page_number: int) -> None:
        try:
            page = self.desk.search_members(query, after=after, limit=PAGE_SIZE)
        except Exception as exc:
            self.fail("search members", exc)
            return
        self.post_message(PageLoaded(request, page, page_number))

    @work(thread=True, exclusive=True, group="member-count")
    def fetch_count(self, request: int, query: MemberQuery) -> None:
        try:
            count = self.desk.count_members(query)
        except Exception as exc:
            self.fail("count members", exc)
            return
        self.post_message(CountLoaded(request, count))

    @work(thread=True, exclusive=True, group="member-plans")
    def load_plans(self) -> None:
        try:
            plans = self.desk.plans()
        except Exception as exc:
            self.fail("load the plans", exc)
            return
        self.post_message(PlansLoaded(plans))

    def on_plans_loaded(self, message: PlansLoaded) -> None:
        select = self.query_one("#member-plan", Select)
        select.set_options([(plan.plan_code, plan.id) for plan in message.plans if plan.is_active is not False])

    def on_page_loaded(self, message: PageLoaded) -> None:
        if message.request != self.request:
            return  # overtaken by newer typing or paging
        page = message.page
        self.page_number = message.page_number
        self.next_cursor = page.next_cursor
        if page.next_cursor is not None and len(self.page_starts) == self.page_number + 1:
            self.page_starts.append(page.next_cursor)
        if self.care.locked:
            return  # asked for before the lock: the unlock asks again
        table = self.query_one(ResultsTable)
        self.shown_request = message.request
        cells: list[tuple[str, ...]] = [
            (member_name(row.first_name, row.last_name), words(row.status), show_phone(row.phone), row.email or "",
             ", ".join(part for part in (row.city, row.state) if part)) for row in page.rows]
        ids = [row.id for row in page.rows]
        if ids and ids == self.rows and len(self._cells) == len(ids) == table.row_count:
            # The same members in the same order (a live update read the page again, or typing that did
            # not change the results): only the cells that changed are redrawn, and the cursor stays.
            self._keep_cursor = None
            columns = [column.key for column in table.ordered_columns]
            for member_id, old, new in zip(ids, self._cells, cells, strict=True):
                for column, before, after in zip(columns, old, new, strict=True):
                    if before != after:
                        table.update_cell(str(member_id), column, after, update_width=True)
        else:
            table.clear()
            for member_id, row_cells in zip(ids, cells, strict=True):
                table.add_row(*row_cells, key=str(member_id))
            keep, self._keep_cursor = self._keep_cursor, None
            if keep is not None and keep in table.rows:
                table.move_cursor(row=table.get_row_index(keep))
        self.rows, self._cells = ids, cells
        self.show_status()
        if self._count_due == self.search_id:
            if self.count is not None and not self._recount and self._reload_named <= set(ids):
                self._count_due = None  # a live reload of members who stayed on the page: the count holds
                return
            self._count_due = None
            self.fetch_count(self.search_id, self.query_state)

    def on_count_loaded(self, message: CountLoaded) -> None:
        if message.request == self.search_id:
            self.count = message.count
            self.show_status()

    def show_status(self) -> None:
        if self._searching_timer is not None and self.shown_request == self.request:
            self._searching_timer.stop()
            self._searching_timer = None
        shown = len(self.rows)
        first = self.page_number * PAGE_SIZE + (1 if shown else 0)
        last = self.page_number * PAGE_SIZE + shown
        total = self.count.describe() if self.count is not None else "…"
        more = " · PgDn for more" if self.next_cursor is not None else ""
        if shown == 0:
            text = "No members match."
        else:
            text = f"{first:,}–{last:,} of {total}{more}"
        self.query_one("#member-status-line", Static).update(text)

    # -- paging and opening -------------------------------------------------------------------

    def on_results_table_edge_reached(self, message: ResultsTable.EdgeReached) -> None:
        if message.forward:
            self.action_next_page()
        else:
            self.action_previous_page()

    def action_next_page(self) -> None:
        if self.next_cursor is not None:
            self.search(reset=False, page_number=self.page_number + 1)

    def action_previous_page(self) -> None:
        if self.page_number > 0:
            self.search(reset=False, page_number=self.page_number - 1)

    def action_focus_search(self) -> None:
        self.query_one("#member-search", Input).focus()

    def action_reload(self) -> None:
        self.search(reset=True)

    def action_back(self) -> None:
        """Back to the previous screen; with text typed in the search box, only at a second Esc (as forms do)."""
        typed = self.query_one("#member-search", Input).value.strip()
        if typed and not self._leave_armed:
            self._leave_armed = True
            self.query_one("#member-status-line", Static).update(
                "Press Esc again to leave the member search (what you typed is dropped).")
            return
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def on_key(self, event: events.Key) -> None:
        if event.key != "escape" and self._leave_armed:
            self._leave_armed = False
            self.show_status()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.care.open_member(uuid.UUID(event.row_key.value))

    # -- live updates ------------------------------------------------------------------------

    def on_data_changed(self, message: DataChanged) -> None:
        """Members changed (or joined or left a plan, when filtering by plan): read this page again."""
        if self.care.locked or not self._concerned(message):
            return
        if self.is_current:
            self.refresh_page(self._named_members(message))
        else:
            self._stale = True

    def _concerned(self, message: DataChanged) -> bool:
        if message.changes.full_refresh:
            return True
        entities = self._entities()
        return any(change.entity in entities for change in message.changes.all())

    def _entities(self) -> set[str]:
        # Any member change may move a member into (or out of) this page: names sort, statuses filter.
        return {"member"} | ({"member_insurance_plan"} if self.query_state.plan_id is not None else set())

    def _named_members(self, message: DataChanged) -> set[uuid.UUID] | None:
        """The members whose changes concern this page, when every such change names one on the page shown."""
        if message.changes.full_refresh:
            return None
        named: set[uuid.UUID] = set()
        for change in message.changes.all():
            if change.entity not in self._entities():
                continue
            if change.many or change.member_id is None:
                return None
            named.add(change.member_id)
        return named if named <= set(self.rows) else None

    def refresh_page(self, named: set[uuid.UUID] | None = None) -> None:
        """Read the page on screen again, keeping the page, the cursor and whatever is typed.

        ``named``: the changed members, all on the page shown (None: unknown); see ``_reload_named``.
        """
        self._stale = False
        table = self.query_one(ResultsTable)
        if table.row_count:
            row = min(max(table.cursor_row, 0), table.row_count - 1)
            self._keep_cursor = str(self.rows[row]) if row < len(self.rows) else None
        if self._count_due != self.search_id:  # no reload's count pending: a new reckoning
            self._reload_named, self._recount = set(), False
        if named is None:
            self._recount = True
        else:
            self._reload_named |= named
        self._count_due = self.search_id  # counted again once the page is back, unless it cannot have changed
        self.search(reset=False, page_number=self.page_number)

    def on_screen_resume(self, event: events.ScreenResume) -> None:
        self.catch_up()

    def catch_up(self) -> None:
        if self._stale and not self.care.locked:
            self.refresh_page()

    # -- the lock --------------------------------------------------------------------------

    def clear_phi(self) -> None:
        self.query_one(ResultsTable).clear()
        self.rows, self._cells = [], []
        self.query_one("#member-status-line", Static).update("")

    def restore_after_unlock(self) -> None:
        self.search(reset=False, page_number=self.page_number)

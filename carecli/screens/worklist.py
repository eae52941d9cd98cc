"""Home: the signed-in specialist's calls today, follow-ups, urgent flags and plan members."""

from __future__ import annotations

import uuid

from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Static, TabbedContent, TabPane

from carecli.data.repositories.worklist import WorkItem, Worklist
from carecli.screens.base import CareScreen
from carecli.screens.collector import collector
from carecli.screens.formatting import in_zone, show_when
from carecli.screens.live import DataChanged
from carecli.screens.widgets import CareFooter, CareHeader, CareTabbedContent, CareTable, show_empty

#: tab id, title, the Worklist attribute it shows
SECTIONS = (
    ("today", "Today", "calls_today"),
    ("overdue", "Overdue", "overdue"),
    ("upcoming", "Upcoming", "upcoming"),
    ("flags", "Urgent flags", "urgent_flags"),
    ("plans", "My plans", "plan_members"),
)
#: what an empty tab says
EMPTY = {
    "today": "No calls scheduled for you today.",
    "overdue": "No overdue follow-ups.",
    "upcoming": "No follow-ups due in the next 14 days.",
    "flags": "No urgent risk flags on your members.",
    "plans": "No members enrolled in your plans.",
}


#: the kinds of record a worklist is made of
WORKLIST_ENTITIES = frozenset({"member", "call_record", "risk_flag", "member_insurance_plan",
                               "specialist_insurance_plan", "specialist", "insurance_plan"})
#: plan membership changes: any of them may add or remove a row of "My plans"
PLAN_ENTITIES = frozenset({"member_insurance_plan", "specialist_insurance_plan", "insurance_plan"})


def _item_key(item: WorkItem) -> tuple[object, ...]:
    """What a row is, independent of its position (to keep the cursor on it across a reload)."""
    return (item.kind, item.member_id, item.call_id, item.flag_id)


class WorklistLoaded(Message):
    def __init__(self, worklist: Worklist) -> None:
        super().__init__()
        self.worklist = worklist


class WorklistScreen(CareScreen):
    """The worklist; Enter on a row opens its call, flag or member, and ``o`` the member behind it."""

    HELP = """
## Worklist

Your day: **Today** lists your calls scheduled for today, **Overdue** and **Upcoming**
the follow-ups you promised (a follow-up counts as done once a later call with the
member is completed or scheduled), **Urgent flags** the open high and critical risk
flags on members you have called, and **My plans** members enrolled in the plans you
specialise in.

Press **Enter** on a call (Today, Overdue, Upcoming) to open that call: there you
complete, reschedule or cancel it, or record that nobody answered. **Enter** on an
urgent flag opens the flag, on a member of your plans the member; **o** opens the
member behind any row. A call done leaves Today at once. Switch tabs with the mouse
or **←/→** on the tab bar; **ctrl+r** reloads.
"""

    BINDINGS = [
        Binding("ctrl+r", "reload", "Refresh", id="worklist.refresh", tooltip="Load the worklist again"),
        Binding("o", "open_member", "Open member", id="worklist.open_member",
                tooltip="Open the member of the selected row"),
        Binding("slash", "app.go('members')", "Find member", id="worklist.find",
                tooltip="Search all members"),
    ]

    #: the table of the tab shown (the others are hidden)
    WORK_FOCUS = "DataTable"

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, list[WorkItem]] = {}
        self._shown_once = False
        #: changed while covered: reload when shown again
        self._stale = False
        #: the signed-in user's specialist id, from the last load (a change of one of "my" calls concerns me)
        self._specialist_id: uuid.UUID | None = None

    def compose(self) -> ComposeResult:
        yield CareHeader()
        yield Static("Loading your worklist…", id="worklist-summary", classes="status-line")
        with CareTabbedContent(id="worklist-tabs"):
            for tab_id, title, _attribute in SECTIONS:
                with TabPane(title, id=f"tab-{tab_id}"):
                    yield Static("", id=f"empty-{tab_id}", classes="empty-note", markup=False)
                    table: DataTable[str] = CareTable(id=f"table-{tab_id}", cursor_type="row", zebra_stripes=True)
                    yield table
        yield CareFooter()

    def on_mount(self) -> None:
        for tab_id, _title, _attribute in SECTIONS:
            table = self.query_one(f"#table-{tab_id}", DataTable)
            table.add_columns(in_zone("When"), "Member", "What")
        self.load()

    def action_reload(self) -> None:
        self.load()

    def load(self) -> None:
        """Read the worklist again (in a worker); the first time, take the one read while the app started."""
        self._stale = False
        prefetched = self.care.take_prefetched_worklist(self.care.desk)
        if prefetched is not None:
            self.post_message(WorklistLoaded(prefetched))
            return
        self._load_in_background()

    @work(thread=True, exclusive=True, group="worklist")
    def _load_in_background(self) -> None:
        try:
            worklist = self.desk.worklist()
        except Exception as exc:
            self.fail("load the worklist", exc)
            return
        self.post_message(WorklistLoaded(worklist))

    def on_worklist_loaded(self, message: WorklistLoaded) -> None:
        worklist = message.worklist
        if self.care.locked:
            return  # read before the lock, arrived after it: not shown under the lock screen
        self._specialist_id = worklist.specialist.id if worklist.specialist is not None else None
        summary = self.query_one("#worklist-summary", Static)
        tabs = self.query_one(TabbedContent)
        # Open on the first section with something in it (today's calls when there are any).
        first = next((tab_id for tab_id, _title, attribute in SECTIONS if getattr(worklist, attribute)),
                     SECTIONS[0][0])
        later: list[tuple[str, list[WorkItem]]] = []
        for tab_id, title, attribute in SECTIONS:
            items: list[WorkItem] = getattr(worklist, attribute)
            previous = self.items.get(tab_id, [])
            table = self.query_one(f"#table-{tab_id}", DataTable)
            selected = previous[table.cursor_row] if 0 <= table.cursor_row < len(previous) else None
            self.items[tab_id] = items
            if self._shown_once or tab_id == first:
                self._fill(tab_id, items, selected)
            else:  # the first time, the tabs not shown are filled once the shown one is on screen
                later.append((tab_id, items))
            count = f"{len(items)}+" if len(items) >= 100 else str(len(items))
            tabs.get_tab(f"tab-{tab_id}").label = f"{title} ({count})"
        if worklist.specialist is None:
            summary.update("You have no specialist record, so there is no worklist for you. "
                           "Press F3 to search members.")
        else:
            plans = ", ".join(worklist.plan_names) or "none yet"
            summary.update(f"Your plans: {plans}")
        if not self._shown_once:
            if tabs.active != f"tab-{first}":
                tabs.active = f"tab-{first}"
            if later:
                self.call_after_refresh(self._fill_later, later)
            # The session's first screen, painted: what it made lives as long as the session (see collector).
            self.call_after_refresh(collector.settle)
        self._shown_once = True
        active = (tabs.active or f"tab-{first}").removeprefix("tab-")
        self.query_one(f"#table-{active}", DataTable).focus()

    def _fill(self, tab_id: str, items: list[WorkItem], selected: WorkItem | None) -> None:
        """Show ``items`` in the tab's table; a reload keeps the cursor on the same row where it still is."""
        table = self.query_one(f"#table-{tab_id}", DataTable)
        table.clear()
        for index, item in enumerate(items):
            table.add_row(show_when(item.when), item.member_name, item.detail, key=str(index))
        show_empty(table, self.query_one(f"#empty-{tab_id}", Static), EMPTY[tab_id])
        if selected is not None:
            keys = [_item_key(item) for item in items]
            if _item_key(selected) in keys:
                table.move_cursor(row=keys.index(_item_key(selected)))

    def _fill_later(self, pending: list[tuple[str, list[WorkItem]]]) -> None:
        """The first load's tabs not shown, filled after its first paint: the rows a busy specialist's
        worklist adds to them (about 250 of 350), which the first paint does not draw, no longer wait in
        front of it. A tab a later load filled already keeps that load's rows. (A first load has no cursor
        to keep.)"""
        for tab_id, items in pending:
            if self.items.get(tab_id) is items:
                self._fill(tab_id, items, None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter: a call row opens the call, an urgent flag the flag, a plan member the member."""
        tab_id = (event.data_table.id or "").removeprefix("table-")
        items = self.items.get(tab_id, [])
        index = int(event.row_key.value or 0)
        if index >= len(items) or self.care.locked:
            return
        item = items[index]
        if item.kind == "urgent_flag" and item.flag_id is not None:
            from carecli.screens.call import open_flag

            open_flag(self.app, item.flag_id)
        elif item.call_id is not None:
            from carecli.screens.call import CallScreen

            self.app.push_screen(CallScreen(item.call_id))
        else:
            self.care.open_member(item.member_id)

    def selected_item(self) -> WorkItem | None:
        """The row under the cursor on the tab shown."""
        tabs = self.query_one(TabbedContent)
        tab_id = (tabs.active or "").removeprefix("tab-")
        items = self.items.get(tab_id, [])
        tables = self.query(f"#table-{tab_id}")
        if not items or not tables:
            return None
        row = tables.first(DataTable).cursor_row
        return items[row] if 0 <= row < len(items) else None

    def action_open_member(self) -> None:
        item = self.selected_item()
        if item is None:
            self.notify("Choose a row first.", severity="warning")
            return
        self.care.open_member(item.member_id)

    # -- live updates ----------------------------------------------------------------------------

    def on_data_changed(self, message: DataChanged) -> None:
        """Reload when a change may touch a row shown here, or may add one (own writes count too)."""
        if self.care.locked or not self._concerned(message):
            return
        if self.is_current:
            self.load()
        else:
            self._stale = True

    def _concerned(self, message: DataChanged) -> bool:
        changes = message.changes
        if changes.full_refresh:
            return True
        shown = {item.member_id for items in self.items.values() for item in items}
        for change in changes.all():
            if change.entity not in WORKLIST_ENTITIES:
                continue
            if change.many or change.entity in PLAN_ENTITIES or change.member_id in shown:
                return True
            if self._specialist_id is not None and change.specialist_id == self._specialist_id:
                return True  # e.g. a call of mine, for a member not on the list yet
            if change.entity == "risk_flag":
                return True  # an urgent flag may be raised by anyone on a member I called
        return False

    def on_screen_resume(self, event: events.ScreenResume) -> None:
        self.catch_up()

    def catch_up(self) -> None:
        if self._stale and not self.care.locked:
            self.load()

    def clear_phi(self) -> None:
        self.items = {}
        for tab_id, _title, _attribute in SECTIONS:
            self.query_one(f"#table-{tab_id}", DataTable).clear()
        self.query_one("#worklist-summary", Static).update("")

    def restore_after_unlock(self) -> None:
        self.load()

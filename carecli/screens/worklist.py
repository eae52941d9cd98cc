"""Home: the signed-in specialist's calls today, follow-ups, urgent flags and plan members."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Header, Static, TabbedContent, TabPane

from carecli.data.repositories.worklist import WorkItem, Worklist
from carecli.screens.widgets import CareFooter
from carecli.screens.base import CareScreen, show_when

#: tab id, title, the Worklist attribute it shows
SECTIONS = (
    ("today", "Today", "calls_today"),
    ("overdue", "Overdue", "overdue"),
    ("upcoming", "Upcoming", "upcoming"),
    ("flags", "Urgent flags", "urgent_flags"),
    ("plans", "My plans", "plan_members"),
)


class WorklistLoaded(Message):
    def __init__(self, worklist: Worklist) -> None:
        super().__init__()
        self.worklist = worklist


class WorklistScreen(CareScreen):
    """The worklist; Enter on a row opens the member behind it."""

    HELP = """
## Worklist

Your day: **Today** lists your calls scheduled for today, **Overdue** and **Upcoming**
the follow-ups you promised (a follow-up counts as done once a later call with the
member is completed or scheduled), **Urgent flags** the open high and critical risk
flags on members you have called, and **My plans** members enrolled in the plans you
specialise in.

Press **Enter** on any row to open that member. Switch tabs with the mouse or
**←/→** on the tab bar; **ctrl+r** reloads.
"""

    BINDINGS = [
        Binding("ctrl+r", "reload", "Refresh", id="worklist.refresh", tooltip="Load the worklist again"),
        Binding("slash", "app.go('members')", "Find member", id="worklist.find",
                tooltip="Search all members"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, list[WorkItem]] = {}
        self._shown_once = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Loading your worklist…", id="worklist-summary", classes="status-line")
        with TabbedContent(id="worklist-tabs"):
            for tab_id, title, _attribute in SECTIONS:
                with TabPane(title, id=f"tab-{tab_id}"):
                    table: DataTable[str] = DataTable(id=f"table-{tab_id}", cursor_type="row", zebra_stripes=True)
                    yield table
        yield CareFooter()

    def on_mount(self) -> None:
        for tab_id, _title, _attribute in SECTIONS:
            table = self.query_one(f"#table-{tab_id}", DataTable)
            table.add_columns("When (UTC)", "Member", "What")
        self.load()

    def action_reload(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="worklist")
    def load(self) -> None:
        try:
            worklist = self.desk.worklist()
        except Exception as exc:
            self.fail("load the worklist", exc)
            return
        self.post_message(WorklistLoaded(worklist))

    def on_worklist_loaded(self, message: WorklistLoaded) -> None:
        worklist = message.worklist
        summary = self.query_one("#worklist-summary", Static)
        tabs = self.query_one(TabbedContent)
        for tab_id, title, attribute in SECTIONS:
            items: list[WorkItem] = getattr(worklist, attribute)
            self.items[tab_id] = items
            table = self.query_one(f"#table-{tab_id}", DataTable)
            table.clear()
            for index, item in enumerate(items):
                table.add_row(show_when(item.when), item.member_name, item.detail, key=str(index))
            count = f"{len(items)}+" if len(items) >= 100 else str(len(items))
            tabs.get_tab(f"tab-{tab_id}").label = f"{title} ({count})"
        if worklist.specialist is None:
            summary.update("You have no specialist record, so there is no worklist for you. "
                           "Press F3 to search members.")
        else:
            plans = ", ".join(worklist.plan_names) or "none yet"
            summary.update(f"Your plans: {plans}")
        # Open on the first section with something in it (today's calls when there are any).
        first = next((tab_id for tab_id, _title, _attribute in SECTIONS if self.items.get(tab_id)), SECTIONS[0][0])
        if tabs.active != f"tab-{first}" and not self._shown_once:
            tabs.active = f"tab-{first}"
        self._shown_once = True
        active = (tabs.active or f"tab-{first}").removeprefix("tab-")
        self.query_one(f"#table-{active}", DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        tab_id = (event.data_table.id or "").removeprefix("table-")
        items = self.items.get(tab_id, [])
        index = int(event.row_key.value or 0)
        if index < len(items):
            self.care.open_member(items[index].member_id)

    def clear_phi(self) -> None:
        self.items = {}
        for tab_id, _title, _attribute in SECTIONS:
            self.query_one(f"#table-{tab_id}", DataTable).clear()
        self.query_one("#worklist-summary", Static).update("")

    def restore_after_unlock(self) -> None:
        self.load()

"""The insurance plan catalog: plan code, name, type, premium, deductible, copay and coverage details.

The catalog is small (tens of plans) and not PHI, so it is read once in a
worker and filtered on the client as the user types. The coverage details
(JSONB) are shown as labelled values, never as raw JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Input, Static

from carecli.data.records import Plan
from carecli.screens.base import CareScreen
from carecli.screens.formatting import plural, show_date, words
from carecli.screens.widgets import CareCheckbox, CareFooter, CareHeader, CareTable, SearchBox

#: words shown upper-case in coverage labels ("hsa_eligible" -> "HSA eligible")
_ACRONYMS = frozenset({"hsa", "fsa", "hmo", "ppo", "epo", "pos", "hdhp", "er", "oop", "rx", "id", "pcp"})
#: a number under a key with one of these words is an amount of money
_MONEY_WORDS = frozenset({"copay", "premium", "deductible", "max", "maximum", "cost", "amount", "limit"})
#: longer values get a line of their own; shorter ones sit two to a line (fits 80 columns)
_SHORT_VALUE = 18


def money(value: Decimal | float | int | None) -> str:
    """An amount as the catalog shows it ("$1,234.50"; "—" when unknown)."""
    if value is None:
        return "—"
    return f"${value:,.2f}"


def coverage_label(key: str) -> str:
    """A JSON key as a readable label: ``out_of_pocket_max`` -> ``Out of pocket max``."""
    words = [w.upper() if w.lower() in _ACRONYMS else w for w in str(key).replace("-", "_").split("_") if w]
    if not words:
        return str(key)
    first = words[0]
    words[0] = first if first.isupper() else first[:1].upper() + first[1:]
    return " ".join(words)


def coverage_value(key: str, value: Any) -> str:
    """One coverage value as text: yes/no, money for amount-like keys, lists joined."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, Decimal)):
        words = set(str(key).lower().replace("-", "_").split("_"))
        if words & _MONEY_WORDS:
            return f"${value:,.2f}" if isinstance(value, float) and not value.is_integer() else f"${int(value):,}"
        return f"{value:,}" if isinstance(value, int) else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(coverage_value(key, item) for item in value) or "—"
    if isinstance(value, dict):
        return "; ".join(f"{coverage_label(k)}: {coverage_value(k, v)}" for k, v in value.items()) or "—"
    return str(value)


def coverage_items(details: Any) -> list[tuple[str, str]]:
    """The coverage details as (label, value) pairs; nested objects become "Parent › child" labels."""
    if details is None:
        return []
    if not isinstance(details, dict):
        # Not the usual object: still readable, never a crash.
        return [("Coverage", coverage_value("coverage", details))]
    items: list[tuple[str, str]] = []

    def walk(prefix: str, mapping: dict[str, Any]) -> None:
        for key, value in mapping.items():
            label = f"{prefix} › {coverage_label(key)}" if prefix else coverage_label(key)
            if isinstance(value, dict) and value:
                walk(label, value)
            else:
                items.append((label, coverage_value(key, value)))

    walk("", details)
    return items


def render_coverage(plan: Plan) -> RenderableType:
    """The selected plan's summary line and its coverage details, laid out for a narrow pane."""
    heading = Text.assemble((plan.plan_name, "bold"), "  ", (plan.plan_code, "dim"))
    items = coverage_items(plan.coverage_details)
    if not items:
        return Group(heading, Text("No coverage details are recorded for this plan.", style="dim"))
    long_items = [(k, v) for k, v in items if len(v) > _SHORT_VALUE]
    short_items = [(k, v) for k, v in items if len(v) <= _SHORT_VALUE]
    parts: list[RenderableType] = [heading]
    if long_items:
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for label, value in long_items:
            table.add_row(Text(f"{label}:"), Text(value))  # Text(): keys and values are data, never markup
        parts.append(table)
    if short_items:
        grid = Table.grid(padding=(0, 1))
        for _ in range(2):
            grid.add_column(style="bold", no_wrap=True)
            grid.add_column(min_width=8)
        for index in range(0, len(short_items), 2):
            row: list[RenderableType] = []
            for label, value in short_items[index:index + 2]:
                row += [Text(f"{label}:"), Text(value)]
            grid.add_row(*row)
        parts.append(grid)
    return Group(*parts)


def plan_period(plan: Plan) -> str:
    start = show_date(plan.effective_date) if plan.effective_date else "…"
    end = show_date(plan.expiration_date) if plan.expiration_date else "…"
    return f"{start}..{end}"


def plan_matches(plan: Plan, text: str) -> bool:
    """Whether the filter text occurs in the plan's code or name (case-insensitive)."""
    needle = text.strip().casefold()
    return not needle or needle in plan.plan_code.casefold() or needle in plan.plan_name.casefold()


def is_active(plan: Plan) -> bool:
    return plan.is_active is not False  # NULL counts as active, as in the repository


class PlansLoaded(Message):
    """The catalog was read (``plans``), or could not be (None: the failure was already reported)."""

    def __init__(self, plans: Sequence[Plan] | None) -> None:
        super().__init__()
        self.plans = list(plans) if plans is not None else None


class PlansScreen(CareScreen):
    """Plans catalog (plan code, name, type, premium, deductible, copay, coverage details)."""

    DEFAULT_CSS = """
    PlansScreen #plans-bar { height: 1; padding: 0 1; }
    PlansScreen #plans-filter { width: 1fr; margin: 0 2 0 0; }
    PlansScreen #plans-inactive { width: auto; }
    PlansScreen #plans-table { height: 1fr; min-height: 5; }
    PlansScreen #plan-detail { height: 9; border: round $primary-darken-2; border-title-color: $text-muted;
                               padding: 0 1; }
    """

    HELP = """
## Plans

The insurance plan catalog. Just type to narrow the list by plan code or name
(whatever is focused, the letters go to the filter box); **Down** goes from the box
to the list, **Esc** empties the box. **ctrl+t** shows or hides inactive (expired)
plans. The coverage details of the highlighted plan are shown below the list.
"""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+f", "focus_filter", "Filter", id="plans.filter",
                tooltip="Type part of a plan code or name to narrow the list"),
        Binding("ctrl+t", "toggle_inactive", "Inactive", id="plans.inactive",
                tooltip="Show or hide inactive (expired) plans"),
        Binding("ctrl+r", "reload", "Refresh", id="plans.refresh", tooltip="Read the plan catalog again"),
        Binding("escape", "back", "Back", id="plans.back",
                tooltip="Empty the filter; when it is empty, back to the previous screen"),
    ]

    #: typing filters at once: the filter box has the focus on arrival (down goes on to the list)
    WORK_FOCUS = "#plans-filter"

    def __init__(self) -> None:
        super().__init__()
        self.plans: list[Plan] = []
        #: the rows on screen, in table order (row key = plan id as text)
        self.shown: list[Plan] = []

    def compose(self) -> ComposeResult:
        yield CareHeader()
        with Horizontal(id="plans-bar"):
            yield SearchBox(placeholder="Type to filter by plan code or name (↓ to the list)", id="plans-filter",
                            compact=True)
            yield CareCheckbox("Show inactive", False, id="plans-inactive", compact=True)
        yield CareTable(id="plans-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="plan-detail"):
            yield Static(id="plan-coverage")
        yield Static("Loading the plan catalog…", id="plans-status", classes="status-line")
        yield CareFooter()

    def on_mount(self) -> None:
        self.sub_title = "Plans"
        table = self.query_one("#plans-table", DataTable)
        table.add_column("Code", key="code")
        table.add_column("Name", key="name")
        table.add_column("Type", key="type")
        table.add_column("Premium", key="premium")
        table.add_column("Deductible", key="deductible")
        table.add_column("Copay", key="copay")
        table.add_column("Active", key="active")
        table.add_column("Effective..expires", key="period")
        self.query_one("#plan-detail").border_title = "Coverage"
        self.query_one("#plans-filter", SearchBox).leave_now = self._filter_submitted  # ↓: at once
        self.load_plans()

    # -- loading --------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="plans")
    def load_plans(self) -> None:
        """Read the catalog (worker thread)."""
        try:
            plans = self.desk.plans()
        except Exception as exc:
            self.fail("load the plan catalog", exc)
            self.post_message(PlansLoaded(None))
            return
        self.post_message(PlansLoaded(plans))

    def on_plans_loaded(self, message: PlansLoaded) -> None:
        if message.plans is None:
            # What went wrong was shown by ActionFailed; what is on screen (if anything) stays.
            self.query_one("#plans-status", Static).update("The plan catalog could not be read · ctrl+r tries again")
            return
        self.plans = message.plans
        self.refresh_rows()

    # -- showing --------------------------------------------------------------------

    @property
    def show_inactive(self) -> bool:
        return self.query_one("#plans-inactive", CareCheckbox).value

    def visible_plans(self) -> list[Plan]:
        """The plans passing the filter and the inactive switch, by code."""
        text = self.query_one("#plans-filter", Input).value
        return [plan for plan in self.plans
                if (self.show_inactive or is_active(plan)) and plan_matches(plan, text)]

    def refresh_rows(self) -> None:
        """Fill the table from the loaded catalog, keeping the cursor on the same plan when it is still shown."""
        table = self.query_one("#plans-table", DataTable)
        current = self.selected_plan()
        self.shown = self.visible_plans()
        table.clear()
        for plan in self.shown:
            # Text(): a plan name is data, and a str cell would be parsed as markup
            table.add_row(Text(plan.plan_code), Text(plan.plan_name), Text(words(plan.plan_type)),
                          money(plan.premium_amount),
                          money(plan.deductible_amount), money(plan.copay_amount),
                          "yes" if is_active(plan) else "no", plan_period(plan), key=str(plan.id))
        ids = [plan.id for plan in self.shown]
        if current is not None and current.id in ids:
            table.move_cursor(row=ids.index(current.id))
        self.show_status()
        self.show_detail(self.selected_plan())

    def show_status(self) -> None:
        hidden = 0 if self.show_inactive else sum(1 for plan in self.plans if not is_active(plan))
        if not self.plans:
            self.query_one("#plans-status", Static).update("The plan catalog is empty.")
            return
        text = f"{len(self.shown)} of {plural(len(self.plans), 'plan')}"
        if hidden:
            text += f" · {hidden} inactive hidden (ctrl+t shows them)"
        if not self.shown and self.plans:
            text += " · nothing matches the filter"
        self.query_one("#plans-status", Static).update(text)

    def selected_plan(self) -> Plan | None:
        table = self.query_one("#plans-table", DataTable)
        if not self.shown or table.row_count == 0:
            return None
        row = table.cursor_row
        return self.shown[row] if 0 <= row < len(self.shown) else None

    def show_detail(self, plan: Plan | None) -> None:
        pane = self.query_one("#plan-detail")
        coverage = self.query_one("#plan-coverage", Static)
        if plan is None:
            pane.border_title = "Coverage"
            coverage.update(Text("Select a plan to see its coverage.", style="dim"))
            return
        pane.border_title = f"Coverage · {plan.plan_code}"
        coverage.update(render_coverage(plan))

    @on(DataTable.RowHighlighted, "#plans-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail(self.selected_plan())

    @on(Input.Changed, "#plans-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.refresh_rows()

    @on(Input.Submitted, "#plans-filter")
    def _filter_submitted(self) -> None:
        self.set_focus(self.query_one("#plans-table", DataTable))

    def on_key(self, event: events.Key) -> None:
        """A letter typed anywhere on this screen (the list, the checkbox) goes to the filter box."""
        box = self.query_one("#plans-filter", Input)
        if box.has_focus or not event.is_printable or event.character is None or event.character == " ":
            return
        event.stop()
        event.prevent_default()
        box.focus()
        box.insert_text_at_cursor(event.character)

    @on(CareCheckbox.Changed, "#plans-inactive")
    def _inactive_changed(self, event: CareCheckbox.Changed) -> None:
        self.refresh_rows()

    # -- actions --------------------------------------------------------------------

    def action_focus_filter(self) -> None:
        self.query_one("#plans-filter", Input).focus()

    def action_back(self) -> None:
        box = self.query_one("#plans-filter", Input)
        if box.value or box.has_focus:
            box.value = ""  # Input.Changed refreshes the rows
            self.query_one("#plans-table", DataTable).focus()
        elif len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def action_toggle_inactive(self) -> None:
        self.query_one("#plans-inactive", CareCheckbox).toggle()

    def action_reload(self) -> None:
        self.query_one("#plans-status", Static).update("Loading the plan catalog…")
        self.load_plans()

    # The catalog is not member data: nothing to clear on lock, and nothing stale to reload.


"""The two steps of a risk flag's life after it is raised: resolve it with a note, re-open it with a reason."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from textual.widget import Widget
from textual.widgets import Static, TextArea

from carecli.screens.formatting import show_time_zoned, words
from carecli.screens.forms import FormModal

if TYPE_CHECKING:
    from uuid import UUID

    from carecli.services.desk import FlagView


class _FlagStepForm(FormModal):
    """A flag step: one required text (a note or a reason), saved with the flag's ``updated_at``."""

    RECORD_WORD = "flag"
    #: the form's text field and what it asks for
    TEXT_FIELD: ClassVar[str] = "note"
    TEXT_LABEL: ClassVar[str] = ""
    TEXT_MISSING: ClassVar[str] = ""

    def __init__(self, view: FlagView) -> None:
        super().__init__()
        self.view = view

    def edited_record(self) -> tuple[str, UUID] | None:
        return ("risk_flag", self.view.flag.id)

    def heading(self) -> str:
        return f"{self.HEADING}: {self.view.member_name}"

    def _about(self) -> str:
        flag = self.view.flag
        return f"{words(flag.severity)} · {words(flag.risk_type)} · raised {show_time_zoned(flag.created_at)}"

    def compose_fields(self) -> Iterable[Widget]:
        yield Static(self._about(), id="flag-step-about", classes="read-only", markup=False)
        yield self.field(self.TEXT_FIELD, self.TEXT_LABEL, TextArea(compact=True))

    def refill_read_only(self) -> None:
        self.query_one("#flag-step-about", Static).update(self._about())

    def on_mount(self) -> None:
        self.query_one(f"#field-{self.TEXT_FIELD}").focus()

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        text = self.query_one(f"#field-{self.TEXT_FIELD}", TextArea).text.strip()
        return {"text": text}, ({} if text else {self.TEXT_FIELD: self.TEXT_MISSING})


class ResolveFlagDialog(_FlagStepForm):
    """Resolve an open flag: say how it was resolved (required)."""

    HEADING = "Resolve the flag"
    ACTION = "resolve the flag"
    SAVE_LABEL = "Resolve"
    TEXT_FIELD = "note"
    TEXT_LABEL = "How was it resolved? (required)"
    TEXT_MISSING = "say how the flag was resolved"
    FIELD_ALIASES = {"resolution_note": "note"}

    def perform(self, values: dict[str, Any]) -> Any:
        flag = self.view.flag
        return self.desk.resolve_flag(flag.id, flag.updated_at, values["text"])


class ReopenFlagDialog(_FlagStepForm):
    """Open a resolved flag again: say why (required; kept in the flag's history)."""

    HEADING = "Re-open the flag"
    ACTION = "re-open the flag"
    SAVE_LABEL = "Re-open"
    TEXT_FIELD = "reason"
    TEXT_LABEL = "Why re-open it? (required)"
    TEXT_MISSING = "say why the flag is open again"

    def perform(self, values: dict[str, Any]) -> Any:
        flag = self.view.flag
        return self.desk.reopen_flag(flag.id, flag.updated_at, values["text"])

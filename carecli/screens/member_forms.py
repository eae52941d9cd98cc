"""Correct a member's contact details and status (``members:write``).

Each field is checked on the form with the parsers ``carecli import`` uses
(:mod:`carecli.data.bulk.fields`, through the members import's own parser
table), so the rules and their messages are the same both ways in; every
problem is shown next to its field at once. Only the fields that changed are
sent, with the ``updated_at`` the form was opened with: if someone saved the
member meanwhile, the save is refused as a conflict naming who, and what was
typed stays on the form.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING, Any

from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import Input, Select

from carecli.data.bulk import fields as f
from carecli.data.models.enums import MEMBER_STATUSES
from carecli.screens.base import member_name
from carecli.screens.formatting import show_phone, words
from carecli.screens.forms import FormModal

if TYPE_CHECKING:
    from uuid import UUID

    from carecli.data.records import Member

#: the text fields of the form: (field, label, placeholder)
TEXT_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("first_name", "First name", ""),
    ("last_name", "Last name", ""),
    ("email", "E-mail", "name@example.org"),
    ("phone", "Phone", "(555) 123-4567"),
    ("address_line1", "Address line 1", ""),
    ("address_line2", "Address line 2", ""),
    ("city", "City", ""),
    ("state", "State", "OR"),
    ("zip_code", "ZIP", "12345 or 12345-6789"),
)
#: fields a member cannot be without (import's rule for members too)
REQUIRED = frozenset({"first_name", "last_name"})


@cache
def import_parsers() -> dict[str, f.Parser]:
    """The members import's parser for each column (the same rules, the same messages)."""
    from carecli.data.bulk.members import MembersKind

    return MembersKind().parsers


def parse_member_fields(raw: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Typed text -> stored values (blank is None), and field -> message for each value import would refuse."""
    parsers = import_parsers()
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, text in raw.items():
        if f.blank(text):
            values[name] = None
            if name in REQUIRED:
                errors[name] = "is required"
            continue
        try:
            values[name] = parsers[name](text)
        except f.FieldProblem as problem:
            errors[name] = problem.message
    return values, errors


class MemberEditScreen(FormModal):
    """Edit a member's name, contact details, address and status; sends only what changed."""

    HEADING = "Edit member"
    ACTION = "save the member"
    RECORD_WORD = "member"

    def __init__(self, member: Member) -> None:
        super().__init__()
        self.member = member

    def heading(self) -> str:
        return f"Edit {member_name(self.member.first_name, self.member.last_name)}"

    def edited_record(self) -> tuple[str, UUID] | None:
        return ("member", self.member.id)

    def shown_value(self, name: str) -> str:
        """A stored value as the form shows it (phones in national format)."""
        value = getattr(self.member, name)
        if name == "phone":
            return show_phone(value)
        return "" if value is None else str(value)

    def compose_fields(self) -> Iterable[Widget]:
        def text_field(name: str) -> Widget:
            label, placeholder = next((label, hint) for field, label, hint in TEXT_FIELDS if field == name)
            return self.field(name, label, Input(self.shown_value(name), placeholder=placeholder, compact=True))

        yield Horizontal(text_field("first_name"), text_field("last_name"), classes="row")
        yield Horizontal(text_field("email"), text_field("phone"), classes="row")
        yield text_field("address_line1")
        yield text_field("address_line2")
        yield Horizontal(text_field("city"), text_field("state"), text_field("zip_code"), classes="row")
        status = self.member.status if self.member.status in MEMBER_STATUSES else Select.NULL
        yield self.field("status", "Status", Select([(words(value), value) for value in MEMBER_STATUSES], value=status,
                                                   allow_blank=status is Select.NULL, compact=True))

    def on_mount(self) -> None:
        self.query_one("#field-first_name").focus()

    def changes(self, values: dict[str, Any]) -> dict[str, Any]:
        """The values that differ from the member as read."""
        return {name: value for name, value in values.items() if value != getattr(self.member, name)}

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        values, errors = parse_member_fields({name: self.input_value(name) for name, _l, _p in TEXT_FIELDS})
        status = self.query_one("#field-status", Select).value
        if status is Select.NULL:
            errors["status"] = "choose one"
        values["status"] = status
        return self.changes(values), errors

    def action_save(self) -> None:
        if not self.saving:
            values, errors = self.collect()
            if not errors and not values:
                self.clear_errors()
                self.set_status("Nothing has changed: there is nothing to save.")
                return
        super().action_save()

    def perform(self, values: dict[str, Any]) -> Any:
        return self.desk.update_member(self.member.id, self.member.updated_at, values)

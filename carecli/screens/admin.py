"""Administration screens: users and roles (users:admin), and the audit log viewer (audit:read).

Permissions are checked where they count, in the services and repositories
(which also audit a refusal); these screens ask anyway and, when refused,
say so in the screen itself with what to do, rather than only in a toast.
Audit rows already hold field names and non-PHI values only (see
:mod:`carecli.data.audit`); they are shown as stored.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timezone
from typing import Any, ClassVar

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable, Input, Select, Static, TabbedContent, TabPane

from carecli.data.permissions import Permission
from carecli.data.records import Role
from carecli.errors import PermissionDenied
from carecli.screens.base import CareModal, CareScreen, Problem, describe
from carecli.screens.confirm import ConfirmDialog
from carecli.screens.formatting import display_zone, in_zone, plural, show_time, words, zone_name
from carecli.screens.forms import FormModal
from carecli.screens.widgets import CareFooter, CareHeader, CareTabbedContent, CareTable
from carecli.services.desk import AccessEntry, AuditFilter

#: entity types that audit rows name (repositories' ``entity_type`` and the services' own rows)
ENTITY_TYPES: tuple[str, ...] = (
    "member", "call_record", "risk_flag", "member_insurance_plan", "insurance_plan", "specialist",
    "specialist_insurance_plan", "metadata", "user", "role", "session", "token", "data_key",
    "pending_platform_change", "audit_log", "worklist",
)
#: actions written to the audit log (repositories, sign-in, key management, sync)
ACTIONS: tuple[str, ...] = (
    "create", "update", "delete", "restore", "read", "deny", "login", "login_refused", "auth_refused",
    "deactivate", "revoke", "name", "rotate", "retire", "rewrap", "sync",
)
PAGE_SIZE = 100
#: the Details column shows this much; the whole row is one Enter away
SUMMARY_WIDTH = 60


def cell(value: Any) -> Text:
    """A table cell holding data: Text, because a str cell would be parsed as markup ("[redacted]")."""
    return Text("—" if value is None or value == "" else str(value), no_wrap=True)


def refusal_text(what: str, problem: Problem, hint: str) -> Text:
    """The in-screen explanation shown instead of data the user may not see."""
    return Text.assemble((f"You cannot see {what}.\n\n", "bold"), (problem.message, ""), "\n\n",
                         (problem.hint or hint, "italic"))


# -- users and roles ------------------------------------------------------------------------


class UsersLoaded(Message):
    """The user list was read (``users``), or refused / failed (``problem``)."""

    def __init__(self, users: Sequence[Any] | None, problem: Problem | None = None) -> None:
        super().__init__()
        self.users = list(users) if users is not None else None
        self.problem = problem


class RolesLoaded(Message):
    """The roles were read (``roles``), or failed (``problem``)."""

    def __init__(self, roles: Sequence[Role] | None, problem: Problem | None = None) -> None:
        super().__init__()
        self.roles = list(roles) if roles is not None else None
        self.problem = problem


def role_permissions(role: Role) -> list[str]:
    permissions = role.permissions
    if isinstance(permissions, str):  # tolerate a JSON string where a list is expected
        permissions = [permissions]
    return sorted(str(p) for p in (permissions or []))


def render_role(role: Role) -> RenderableType:
    """A role's description and every permission it grants, wrapped for the pane."""
    permissions = role_permissions(role)
    listing = Text("   ").join(Text(p) for p in permissions) if permissions else Text("none", style="dim")
    return Group(
        Text.assemble((role.name, "bold"), "  ", (role.description or "(no description)", "")),
        Text(""),
        Text.assemble((f"Permissions ({len(permissions)}): ", "bold"), listing),
    )


class AddUserForm(FormModal):
    """A new staff account with a role, as ``carecli users add`` makes it (users:admin; audited)."""

    HEADING = "Add a user"
    ACTION = "add the user"
    SAVE_LABEL = "Add"
    FIELD_ALIASES = {"external_user_id": "external_id", "role_id": "role"}

    def __init__(self, roles: Iterable[Role]) -> None:
        super().__init__()
        self.role_names = [role.name for role in roles]

    def compose_fields(self) -> Iterable[Widget]:
        yield self.field("email", "E-mail address", Input(placeholder="name@example.org", max_length=255,
                                                          compact=True))
        yield self.field("external_id", "Subject at the identity provider (OIDC 'sub')",
                         Input(placeholder="e.g. auth0|64f0c0ffee", max_length=255, compact=True))
        yield self.field("role", "Role", Select([(name, name) for name in self.role_names], prompt="choose a role…",
                                                compact=True))
        yield Horizontal(
            self.field("first_name", "First name", Input(max_length=100, compact=True)),
            self.field("last_name", "Last name", Input(max_length=100, compact=True)),
            classes="row")

    def on_mount(self) -> None:
        self.query_one("#field-email").focus()

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        values, errors = self.collect_choices(("role",))
        if "role" in errors:
            errors["role"] = "Choose the user's role."
        for name in ("email", "external_id", "first_name", "last_name"):
            values[name] = self.input_value(name).strip()
        if not values["email"]:
            errors["email"] = "The e-mail address is required."
        elif "@" not in values["email"]:
            errors["email"] = "The e-mail address needs an @, e.g. name@example.org."
        if not values["external_id"]:
            errors["external_id"] = "The subject at the identity provider is required: the user signs in with it."
        return values, errors

    def perform(self, values: dict[str, Any]) -> Any:
        return self.desk.add_user(email=values["email"], external_id=values["external_id"], role=values["role"],
                                  first_name=values["first_name"] or None, last_name=values["last_name"] or None)


class RoleForm(FormModal):
    """Give one user another role, as ``carecli users set-role`` does (users:admin; audited)."""

    HEADING = "Change a user's role"
    ACTION = "change the role"
    FIELD_ALIASES = {"role_id": "role"}

    def __init__(self, summary: Any, roles: Iterable[Role]) -> None:
        super().__init__()
        self.summary = summary
        self.role_names = [role.name for role in roles]

    def heading(self) -> str:
        return f"Change the role of {self.summary.user.email}"

    def compose_fields(self) -> Iterable[Widget]:
        current = self.summary.role if self.summary.role in self.role_names else Select.NULL
        yield self.field("role", "Role", Select([(name, name) for name in self.role_names], value=current,
                                                prompt="choose a role…", compact=True))

    def on_mount(self) -> None:
        self.query_one("#field-role").focus()

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        values, errors = self.collect_choices(("role",))
        if "role" in errors:
            errors["role"] = "Choose the user's new role."
        return values, errors

    def perform(self, values: dict[str, Any]) -> Any:
        return self.desk.set_user_role(self.summary.user.id, values["role"])


class StatusChanged(Message):
    """A user was deactivated or reactivated (``change``), or could not be (``problem``)."""

    def __init__(self, change: Any = None, problem: Problem | None = None) -> None:
        super().__init__()
        self.change = change
        self.problem = problem


class UsersScreen(CareScreen):
    """Admin: users and roles (the user list needs users:admin; every signed-in user may read the roles)."""

    DEFAULT_CSS = """
    UsersScreen TabbedContent { height: 1fr; }
    UsersScreen TabPane { padding: 0; }
    UsersScreen .refusal { display: none; height: auto; padding: 1 2; border: round $warning; margin: 1 2; }
    UsersScreen #roles-table { height: auto; max-height: 12; }
    UsersScreen #role-detail { height: 1fr; min-height: 4; border: round $primary-darken-2; padding: 0 1; }
    """

    HELP = """
## Users and roles

**Users** lists the staff accounts with their role and last sign-in (this needs the
`users:admin` permission). With it, **a** adds a user, **c** changes the selected
user's role, **d** deactivates the selected user after asking (their sessions and
API tokens end at once) or reactivates an inactive one: the same steps, checks and
audit rows as `carecli users`. **Roles** lists every role and, below it, the
permissions the highlighted role grants; anyone signed in may read them.
Roles are changed with `carecli roles`.
"""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("u", "show_tab('users-tab')", "Users", id="users.users_tab", tooltip="Staff accounts and their roles"),
        Binding("r", "show_tab('roles-tab')", "Roles", id="users.roles_tab",
                tooltip="Roles and the permissions each grants"),
        Binding("a", "add_user", "Add user", id="users.add", tooltip="Add a staff account with a role (users:admin)"),
        Binding("c", "change_role", "Role", id="users.set_role",
                tooltip="Give the selected user another role (users:admin)"),
        Binding("d", "toggle_active", "(De)activate", id="users.deactivate",
                tooltip="Deactivate the selected user (asks first), or reactivate an inactive one (users:admin)"),
        Binding("ctrl+r", "reload", "Refresh", id="users.refresh", tooltip="Read users and roles again"),
        Binding("escape", "back", "Back", id="users.back", tooltip="Back to the previous screen"),
    ]

    #: the users' table (the roles' when the user list is refused and hidden)
    WORK_FOCUS = "#users-table, #roles-table"

    def __init__(self) -> None:
        super().__init__()
        self.roles: list[Role] = []
        #: the users shown, in table order
        self.users: list[Any] = []

    def compose(self) -> ComposeResult:
        yield CareHeader()
        with CareTabbedContent(id="admin-tabs", initial="users-tab"):
            with TabPane("Users", id="users-tab"):
                yield Static(id="users-refused", classes="refusal")
                yield CareTable(id="users-table", cursor_type="row", zebra_stripes=True)
            with TabPane("Roles", id="roles-tab"):
                yield Static(id="roles-refused", classes="refusal")
                yield CareTable(id="roles-table", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(id="role-detail"):
                    yield Static(id="role-text")
        yield Static("Loading users and roles…", id="users-status", classes="status-line")
        yield CareFooter()

    def on_mount(self) -> None:
        self.sub_title = "Users and roles"
        users = self.query_one("#users-table", DataTable)
        for label, key in (("E-mail", "email"), ("Name", "name"), ("Role", "role"), ("Active", "active"),
                           (in_zone("Last login"), "last_login")):
            users.add_column(label, key=key)
        roles = self.query_one("#roles-table", DataTable)
        for label, key in (("Role", "name"), ("Perms", "count"), ("Description", "description")):
            roles.add_column(label, key=key)
        self.query_one("#role-detail").border_title = "Role"
        self.reload()

    def reload(self) -> None:
        self.load_users()
        self.load_roles()

    # -- workers ----------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="users")
    def load_users(self) -> None:
        """Read the user list (worker thread); a refusal is expected for non-admins and shown in the screen."""
        try:
            users = self.desk.users()
        except PermissionDenied as exc:
            self.post_message(UsersLoaded(None, describe(exc)))
            return
        except Exception as exc:
            self.fail("load the users", exc)
            self.post_message(UsersLoaded(None, describe(exc)))
            return
        self.post_message(UsersLoaded(users))

    @work(thread=True, exclusive=True, group="roles")
    def load_roles(self) -> None:
        """Read the roles (worker thread)."""
        try:
            roles = self.desk.roles()
        except Exception as exc:
            if not isinstance(exc, PermissionDenied):
                self.fail("load the roles", exc)
            self.post_message(RolesLoaded(None, describe(exc)))
            return
        self.post_message(RolesLoaded(roles))

    # -- handlers ---------------------------------------------------------------------

    def on_users_loaded(self, message: UsersLoaded) -> None:
        table = self.query_one("#users-table", DataTable)
        refused = self.query_one("#users-refused", Static)
        keep = self.selected_user()  # a reload keeps the cursor on the same user
        table.clear()
        if message.users is None:
            problem = message.problem or Problem("the user list could not be read")
            refused.update(refusal_text(
                "the user list", problem,
                f"Managing users needs the '{Permission.USERS_ADMIN}' permission: ask an administrator. "
                "The Roles tab (r) shows what each role may do."))
            refused.display = True
            table.display = False
            self.users = []
            self.refresh_bindings()
            self.set_status("Users: not shown · Roles: r")
            if self.is_current and self.focused in (None, table):
                self.action_show_tab("roles-tab")  # the keys go where there is something to read
            return
        refused.display = False
        table.display = True
        self.users = message.users
        for summary in message.users:
            user = summary.user
            name = " ".join(p for p in (user.first_name, user.last_name) if p)
            table.add_row(cell(user.email), cell(name), cell(summary.role or "no role"),
                          "yes" if user.is_active is not False else "no",
                          show_time(user.last_login_at), key=str(user.id))
        if keep is not None and str(keep.user.id) in table.rows:
            table.move_cursor(row=table.get_row_index(str(keep.user.id)))
        active = sum(1 for s in message.users if s.user.is_active is not False)
        self.set_status(f"{plural(len(message.users), 'user')} ({active} active)")
        self.refresh_bindings()

    def on_roles_loaded(self, message: RolesLoaded) -> None:
        table = self.query_one("#roles-table", DataTable)
        refused = self.query_one("#roles-refused", Static)
        table.clear()
        if message.roles is None:
            refused.update(refusal_text("the roles", message.problem or Problem("the roles could not be read"),
                                        "try again with ctrl+r"))
            refused.display = True
            return
        refused.display = False
        self.roles = message.roles
        for role in self.roles:
            table.add_row(cell(role.name), str(len(role_permissions(role))), cell(role.description),
                          key=str(role.id))
        self.show_role()

    @on(DataTable.RowHighlighted, "#roles-table")
    def _role_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_role()

    def show_role(self) -> None:
        table = self.query_one("#roles-table", DataTable)
        text = self.query_one("#role-text", Static)
        row = table.cursor_row
        if not self.roles or not 0 <= row < len(self.roles):
            text.update(Text("No roles.", style="dim"))
            return
        role = self.roles[row]
        self.query_one("#role-detail").border_title = f"Role · {role.name}"
        text.update(render_role(role))

    def set_status(self, text: str) -> None:
        self.query_one("#users-status", Static).update(text)

    # -- actions ----------------------------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self.query_one("#users-table" if tab == "users-tab" else "#roles-table", DataTable).focus()
        self.refresh_bindings()

    def selected_user(self) -> Any:
        table = self.query_one("#users-table", DataTable)
        row = table.cursor_row
        return self.users[row] if self.users and 0 <= row < len(self.users) else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("add_user", "change_role", "toggle_active"):
            desk = self.care.desk
            if desk is None or not desk.can(Permission.USERS_ADMIN) or not self.users:
                return False  # not offered: the service would refuse (and audit the refusal)
            if self.query_one(TabbedContent).active != "users-tab":
                return None  # shown greyed out on the roles tab
        return True

    def action_add_user(self) -> None:
        self.app.push_screen(AddUserForm(self.roles), self._after_add)

    def _after_add(self, summary: Any) -> None:
        if summary is None:
            return
        self.notify(f"Added {summary.user.email} with role {summary.role}.")
        self.load_users()

    def action_change_role(self) -> None:
        summary = self.selected_user()
        if summary is not None:
            self.app.push_screen(RoleForm(summary, self.roles), self._after_role)

    def _after_role(self, result: Any) -> None:
        if result is None:
            return
        summary, changed = result
        self.notify(f"{summary.user.email} now has role {summary.role}." if changed
                    else f"{summary.user.email} already had role {summary.role}: nothing changed.")
        self.load_users()

    def action_toggle_active(self) -> None:
        summary = self.selected_user()
        if summary is None:
            return
        user = summary.user
        if user.is_active is False:
            self.change_status(user.id, True)
            return
        question = (f"Deactivate {user.email}? Their sessions and API tokens end at once and their specialist "
                    "record becomes inactive. You can reactivate them later (d again).")
        self.app.push_screen(ConfirmDialog(question, yes="Deactivate"),
                             lambda yes: self.change_status(user.id, False) if yes else None)

    @work(thread=True, exclusive=True, group="user-status")
    def change_status(self, user_id: uuid.UUID, active: bool) -> None:
        try:
            change = self.desk.set_user_active(user_id, active)
        except Exception as exc:
            self.post_message(StatusChanged(problem=describe(exc)))
            return
        self.post_message(StatusChanged(change))

    def on_status_changed(self, message: StatusChanged) -> None:
        if message.problem is not None:
            self.care.show_problem("change the user", message.problem)
            return
        change = message.change
        email = change.user.email
        if not change.changed:
            text = f"{email} already was {'active' if change.user.is_active is not False else 'inactive'}."
        elif change.user.is_active is False:
            text = (f"Deactivated {email}: {change.revoked_sessions} session(s) and {change.revoked_tokens} "
                    "API token(s) revoked.")
        else:
            text = f"Reactivated {email}: they can sign in again (old sessions and tokens stay revoked)."
        if change.deferred:
            text += " The platform database could not be updated: run `carecli sync` once it is reachable."
        self.notify(text, severity="warning" if change.deferred else "information")
        self.load_users()

    def action_reload(self) -> None:
        self.set_status("Loading users and roles…")
        self.reload()

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    # -- lock -------------------------------------------------------------------------

    def clear_phi(self) -> None:
        # Not member data, but staff names and e-mails need not stay on a locked screen either.
        self.query_one("#users-table", DataTable).clear()
        self.set_status("")

    def restore_after_unlock(self) -> None:
        if self.query_one("#users-table", DataTable).display:  # after a refusal, asking again is refused again
            self.load_users()


# -- the audit log --------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditForm:
    """The filter fields as typed, checked; the user's e-mail is resolved to an id in the worker."""

    filters: AuditFilter
    user_email: str | None = None


class FilterError(ValueError):
    """A filter field holds something that cannot be used; ``field`` is the input's id."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def local_midnight_utc(day: date) -> datetime:
    """The start of ``day`` in the user's zone (``[tui] timezone``), as naive UTC (how the database keeps time)."""
    zone = display_zone()
    start = datetime.combine(day, time.min, tzinfo=zone) if zone is not None else datetime.combine(day, time.min)
    return start.astimezone(timezone.utc).replace(tzinfo=None)


def parse_filters(entity_type: Any, action: Any, user: str, since: str, entity_id: str) -> AuditForm:
    """The filter fields as an :class:`AuditForm`; :class:`FilterError` names the field that is wrong."""
    since_at = None
    if since.strip():
        try:
            since_at = local_midnight_utc(date.fromisoformat(since.strip()))
        except ValueError:
            raise FilterError("audit-since", "the since date must be YYYY-MM-DD, e.g. 2025-03-01") from None
    wanted_id = None
    if entity_id.strip():
        try:
            wanted_id = uuid.UUID(entity_id.strip())
        except ValueError:
            raise FilterError("audit-entity-id",
                              "the entity id must be a whole UUID (open the row with Enter to copy one)") from None
    user = user.strip()
    user_id, email = None, None
    if user:
        try:
            user_id = uuid.UUID(user)  # a user id pasted from a row's details works too
        except ValueError:
            if "@" not in user:
                raise FilterError("audit-user", "give the user's e-mail address (or leave it empty)") from None
            email = user
    filters = AuditFilter(entity_type=entity_type if isinstance(entity_type, str) else None,
                          entity_id=wanted_id, user_id=user_id,
                          action=action if isinstance(action, str) else None, since=since_at)
    return AuditForm(filters, email)


def _short(value: Any, width: int = 24) -> str:
    if value is None:
        text = "null"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, default=str, separators=(",", ":"))
    return text if len(text) <= width else text[:width - 1] + "…"


def _as_mapping(values: Any) -> dict[str, Any]:
    if values is None:
        return {}
    return dict(values) if isinstance(values, dict) else {"value": values}


def summarize_values(old_values: Any, new_values: Any, width: int = SUMMARY_WIDTH) -> str:
    """Field names with their stored values, on one line: ``status: active→inactive, plan=…``."""
    old, new = _as_mapping(old_values), _as_mapping(new_values)
    parts: list[str] = []
    for key in list(new) + [k for k in old if k not in new]:
        if key in old and key in new:
            parts.append(f"{key}: {_short(old[key], 16)}→{_short(new[key], 16)}")
        elif key in new:
            parts.append(f"{key}={_short(new[key])}")
        else:
            parts.append(f"{key} was {_short(old[key])}")
    text = ", ".join(parts)
    return text if len(text) <= width else text[:width - 1] + "…"


def render_entry(access: AccessEntry) -> RenderableType:
    """One audit row in full: who, when, what, from where, and every old/new value."""
    entry = access.entry
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column(overflow="fold")
    for label, value in (
        (in_zone("When"), show_time(entry.created_at)), ("Who", access.who),
        ("User id", entry.user_id or "carecli itself"), ("Action", entry.action),
        ("Entity", entry.entity_type), ("Entity id", entry.entity_id),
        ("From", entry.ip_address or "—"), ("Program", entry.user_agent or "—"), ("Row id", entry.id),
    ):
        head.add_row(label, Text(str(value)))
    old, new = _as_mapping(entry.old_values), _as_mapping(entry.new_values)
    if not old and not new:
        return Group(head, Text(""), Text("No values were recorded with this row.", style="dim"))
    values = Table(expand=True, show_edge=False, pad_edge=False)
    values.add_column("Field", style="bold", no_wrap=True)
    if old:
        values.add_column("Before", overflow="fold", ratio=1)
    values.add_column("After" if old else "Values", overflow="fold", ratio=1)
    for key in list(new) + [k for k in old if k not in new]:
        row = [Text(key)]
        if old:
            row.append(Text(_short(old.get(key), 400) if key in old else "—"))
        row.append(Text(_short(new.get(key), 400) if key in new else "—"))
        values.add_row(*row)
    return Group(head, Text(""), values)


class AuditPageLoaded(Message):
    """A page of audit rows arrived (``append``: after the rows already shown) or the read failed."""

    def __init__(self, generation: int, filters: AuditFilter | None, rows: Sequence[AccessEntry],
                 has_more: bool, append: bool, problem: Problem | None = None, refused: bool = False) -> None:
        super().__init__()
        self.generation = generation
        self.filters = filters
        self.rows = list(rows)
        self.has_more = has_more
        self.append = append
        self.problem = problem
        self.refused = refused


class AuditEntryScreen(CareModal):
    """One audit row in full, with its old and new values."""

    DEFAULT_CSS = """
    AuditEntryScreen { align: center middle; }
    AuditEntryScreen #audit-entry { width: 90%; max-width: 110; height: auto; max-height: 90%;
                                    border: heavy $primary; background: $surface; padding: 0 1; }
    AuditEntryScreen #audit-entry-body { height: auto; max-height: 100%; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", id="audit_entry.close", tooltip="Back to the audit log"),
        Binding("o", "open_member", "Open member", id="audit_entry.open_member",
                tooltip="Open the member this row is about (the open is audited)"),
    ]

    def __init__(self, access: AccessEntry) -> None:
        super().__init__()
        self.access = access

    def compose(self) -> ComposeResult:
        with Vertical(id="audit-entry"):
            with VerticalScroll(id="audit-entry-body"):
                yield Static(render_entry(self.access), id="audit-entry-text")

    def on_mount(self) -> None:
        entry = self.access.entry
        self.query_one("#audit-entry").border_title = f"Audit row · {words(entry.action)} {words(entry.entity_type)}"
        self.query_one("#audit-entry").border_subtitle = "Esc closes"
        self.query_one("#audit-entry-body").focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "open_member":
            return self.access.entry.entity_type == "member" and self.desk.can(Permission.MEMBERS_READ)
        return True

    def action_close(self) -> None:
        self.dismiss(None)

    def action_open_member(self) -> None:
        self.care.open_member(self.access.entry.entity_id)

    def clear_phi(self) -> None:
        self.query_one("#audit-entry-text", Static).update("")

    def restore_after_unlock(self) -> None:
        self.query_one("#audit-entry-text", Static).update(render_entry(self.access))


class AuditScreen(CareScreen):
    """The audit log, newest first, with filters; more rows load by keyset paging (never OFFSET)."""

    DEFAULT_CSS = """
    AuditScreen #audit-filters { height: auto; padding: 0 1; }
    AuditScreen #audit-filters { margin: 0 0 1 0; }
    AuditScreen .filter-row { height: 1; }
    AuditScreen .filter-row > * { margin: 0 1 0 0; }
    AuditScreen #audit-entity { width: 30; }
    AuditScreen #audit-action { width: 24; }
    AuditScreen #audit-since { width: 1fr; }
    AuditScreen #audit-user { width: 1fr; }
    AuditScreen #audit-entity-id { width: 1fr; }
    AuditScreen #audit-refused { display: none; height: auto; padding: 1 2; border: round $warning; margin: 1 2; }
    AuditScreen #audit-table { height: 1fr; }
    AuditScreen #audit-status.-error { color: $error; }
    """

    HELP = """
## Audit log

Every change, PHI read, refusal and sign-in, newest first. Narrow it with the
filters at the top: entity type and action apply as soon as they are chosen; the
user (an e-mail address), since date (`YYYY-MM-DD`, local) and entity id (a UUID)
apply on **Enter**. **ctrl+n** (or **m**, or reaching the last row: down, PageDown, ctrl+End) loads older
rows; **Enter** on a row shows it whole, with its old and new values. Values that
are PHI were never stored: the log shows only that they changed (`[redacted]`).
"""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "details", "Details", id="audit.details",
                tooltip="Show the whole row with its old/new values"),
        Binding("ctrl+n,m", "more", "More", id="audit.more", tooltip="Load the next (older) page of rows"),
        Binding("ctrl+f", "focus_filters", "Filters", id="audit.filters",
                tooltip="Go to the filters (Enter in a field applies them)"),
        Binding("x", "clear_filters", "Clear filters", id="audit.clear_filters", tooltip="Empty every filter"),
        Binding("ctrl+r", "reload", "Refresh", id="audit.refresh",
                tooltip="Read the newest rows again with these filters"),
        Binding("escape", "back", "Back", id="audit.back",
                tooltip="From a filter back to the rows; from the rows back to the previous screen"),
    ]

    #: the rows, not the first filter, get the keys when the screen opens
    WORK_FOCUS = "#audit-table"
    page_size: int = PAGE_SIZE

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[AccessEntry] = []
        #: the filters of the rows on screen (the user's e-mail already resolved), reused for "more"
        self.filters: AuditFilter | None = None
        self.has_more = False
        self.loading = False
        #: bumped by every new query; pages of an older query are dropped when they arrive late
        self.generation = 0
        #: the user may not read the audit log: the screen explains that and offers nothing else
        self.refused = False

    def compose(self) -> ComposeResult:
        yield CareHeader()
        with Vertical(id="audit-filters"):
            with Horizontal(classes="filter-row"):
                yield Select([(words(name), name) for name in ENTITY_TYPES], prompt="Entity type: any",
                             id="audit-entity", compact=True)
                yield Select([(words(name), name) for name in ACTIONS], prompt="Action: any", id="audit-action",
                             compact=True)
                yield Input(placeholder=f"Since YYYY-MM-DD {zone_name()}", id="audit-since", compact=True)
            with Horizontal(classes="filter-row"):
                yield Input(placeholder="User e-mail (empty: anyone)", id="audit-user", compact=True)
                yield Input(placeholder="Entity id (UUID)", id="audit-entity-id", compact=True)
        yield Static(id="audit-refused")
        yield CareTable(id="audit-table", cursor_type="row", zebra_stripes=True)
        yield Static("Loading the audit log…", id="audit-status", classes="status-line")
        yield CareFooter()

    def on_mount(self) -> None:
        self.sub_title = "Audit log"
        table = self.query_one("#audit-table", DataTable)
        for label, key in ((in_zone("When"), "when"), ("Who", "who"), ("Action", "action"), ("Entity", "entity"),
                           ("Id", "id"), ("Details", "details"), ("IP", "ip")):
            table.add_column(label, key=key)
        self.apply_filters()

    # -- querying ---------------------------------------------------------------------

    def read_form(self) -> AuditForm:
        return parse_filters(self.query_one("#audit-entity", Select).value,
                             self.query_one("#audit-action", Select).value,
                             self.query_one("#audit-user", Input).value,
                             self.query_one("#audit-since", Input).value,
                             self.query_one("#audit-entity-id", Input).value)

    def apply_filters(self) -> None:
        """Start over from the newest row with the filters as they are now."""
        try:
            form = self.read_form()
        except FilterError as exc:
            self.set_status(exc.message, error=True)
            self.query_one(f"#{exc.field}", Input).focus()
            return
        self.generation += 1
        self.loading = True
        self.set_status("Loading the audit log…")
        self.load_page(self.generation, form, None, None)

    def load_more(self) -> None:
        """The next (older) page after the last row shown."""
        if self.loading or not self.has_more or not self.entries or self.filters is None:
            return
        last = self.entries[-1].entry
        assert last.created_at is not None
        self.loading = True
        self.set_status(f"{plural(len(self.entries), 'row')} · loading more…")
        self.load_page(self.generation, None, self.filters, (last.created_at, last.id))

    @work(thread=True, exclusive=True, group="audit")
    def load_page(self, generation: int, form: AuditForm | None, filters: AuditFilter | None,
                  before: tuple[datetime, uuid.UUID] | None) -> None:
        """Read one page (worker thread): a first page from ``form``, a later one from ``filters`` and ``before``."""
        append = before is not None
        try:
            if form is not None:
                filters = form.filters
                if form.user_email is not None:
                    user_id = self.desk.user_id_by_email(form.user_email)
                    if user_id is None:
                        problem = Problem("no user has that e-mail address",
                                          "check it, or leave the user filter empty for anyone")
                        self.post_message(AuditPageLoaded(generation, None, [], False, False, problem))
                        return
                    filters = replace(filters, user_id=user_id)
            assert filters is not None
            # One row more than a page tells whether another page exists, without a count.
            rows = self.desk.audit(filters, before=before, limit=self.page_size + 1)
        except PermissionDenied as exc:
            self.post_message(AuditPageLoaded(generation, None, [], False, append, describe(exc), refused=True))
            return
        except Exception as exc:
            self.fail("read the audit log", exc)
            self.post_message(AuditPageLoaded(generation, None, [], False, append, describe(exc)))
            return
        self.post_message(AuditPageLoaded(generation, filters, rows[:self.page_size],
                                          len(rows) > self.page_size, append))

    def on_audit_page_loaded(self, message: AuditPageLoaded) -> None:
        if message.generation != self.generation:
            return  # an older query's page, overtaken by newer filters
        self.loading = False
        table = self.query_one("#audit-table", DataTable)
        refused = self.query_one("#audit-refused", Static)
        if message.refused:
            assert message.problem is not None
            refused.update(refusal_text(
                "the audit log", message.problem,
                f"Reading it needs the '{Permission.AUDIT_READ}' permission (supervisors and auditors have it): "
                "ask an administrator if you need it."))
            refused.display = True
            self.query_one("#audit-filters").display = False
            table.display = False
            self.refused = True
            self.refresh_bindings()
            self.set_status("Audit log: not shown")
            self.ensure_focus()
            return
        if message.problem is not None:
            if not message.append:
                table.clear()
                self.entries = []
                self.has_more = False
            self.set_status(str(message.problem), error=True)
            return
        if not message.append:
            table.clear()
            self.entries = []
            self.filters = message.filters
        self.has_more = message.has_more
        for access in message.rows:
            entry = access.entry
            table.add_row(show_time(entry.created_at), cell(access.who), cell(words(entry.action)),
                          cell(words(entry.entity_type)), cell(str(entry.entity_id)[:8]),
                          cell(summarize_values(entry.old_values, entry.new_values)), cell(entry.ip_address),
                          key=str(entry.id))
            self.entries.append(access)
        self.show_count()
        self.refresh_bindings()

    def show_count(self) -> None:
        if not self.entries:
            self.set_status("No audit rows match these filters.")
            return
        more = "ctrl+n loads more" if self.has_more else "that is all"
        self.set_status(f"{plural(len(self.entries), 'row')}, newest first · {more} · Enter shows a row")

    def set_status(self, text: str, *, error: bool = False) -> None:
        status = self.query_one("#audit-status", Static)
        status.update(Text(text))
        status.set_class(error, "-error")

    def selected(self) -> AccessEntry | None:
        table = self.query_one("#audit-table", DataTable)
        row = table.cursor_row
        return self.entries[row] if self.entries and 0 <= row < len(self.entries) else None

    # -- events -----------------------------------------------------------------------

    @on(Select.Changed, "#audit-entity, #audit-action")
    def _select_changed(self, event: Select.Changed) -> None:
        self.apply_filters()

    @on(Input.Submitted, "#audit-since, #audit-user, #audit-entity-id")
    def _input_submitted(self, event: Input.Submitted) -> None:
        self.apply_filters()

    @on(DataTable.RowSelected, "#audit-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_details()

    @on(DataTable.RowHighlighted, "#audit-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        # Reaching the last row (down, page down, end) loads the next page, as a "more" would.
        if event.cursor_row == len(self.entries) - 1:
            self.load_more()

    # -- actions ----------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.refused and action in ("details", "more", "focus_filters", "clear_filters", "reload"):
            return False  # hidden: nothing here works without audit:read
        if action == "more" and not self.has_more:
            return None  # shown greyed out: there are no older rows
        return True

    def action_details(self) -> None:
        access = self.selected()
        if access is not None:
            self.app.push_screen(AuditEntryScreen(access))

    def action_more(self) -> None:
        self.load_more()  # disabled (check_action) when the last page is shown

    def action_focus_filters(self) -> None:
        self.query_one("#audit-entity", Select).focus()

    def action_clear_filters(self) -> None:
        with self.prevent(Select.Changed):
            self.query_one("#audit-entity", Select).clear()
            self.query_one("#audit-action", Select).clear()
        for field in ("#audit-since", "#audit-user", "#audit-entity-id"):
            self.query_one(field, Input).value = ""
        self.apply_filters()

    def action_reload(self) -> None:
        self.apply_filters()

    def action_back(self) -> None:
        table = self.query_one("#audit-table", DataTable)
        if table.display and not table.has_focus:
            table.focus()
        elif len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    # -- lock -------------------------------------------------------------------------

    def clear_phi(self) -> None:
        # Audit rows name members by id only, but a locked screen shows none of them.
        self.generation += 1  # a page still in flight must not refill the table
        self.loading = False
        self.entries = []
        self.has_more = False
        self.query_one("#audit-table", DataTable).clear()
        self.set_status("")

    def restore_after_unlock(self) -> None:
        if not self.refused:  # asking again would only be refused (and audited) again
            self.apply_filters()

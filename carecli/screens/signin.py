"""Signing in: the OpenID Connect device code (URL, code, and a QR code where it fits) or the demo picker.

The same screen is the lock screen: after inactivity it covers the app and
asks for a new sign-in; the screens under it keep their drafts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import LoadingIndicator, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from carecli.data.records import User
from carecli.screens.base import Problem, describe
from carecli.screens.formatting import plural
from carecli.screens.widgets import CareFooter, CareHeader

if TYPE_CHECKING:
    from carecli.screens.app import CareApp
    from carecli.services.auth.oidc import DeviceAuthorization
    from carecli.services.desk import Desk


def qr_code(data: str) -> Text | None:
    """``data`` as a QR code drawn with half blocks (two modules per character), or None without segno."""
    try:
        import segno
    except ImportError:  # pragma: no cover - segno is a dependency; the code alone still works
        return None
    rows = [list(row) for row in segno.make(data, error="l", micro=False).matrix_iter(scale=1, border=2)]
    if len(rows) % 2:
        rows.append([0] * len(rows[0]))
    text = Text()
    for top, bottom in zip(rows[::2], rows[1::2], strict=True):
        for upper, lower in zip(top, bottom, strict=True):
            # Dark modules black, light ones white, whatever the theme: scanners need the contrast.
            text.append("▀", style=f"{'black' if upper else 'white'} on {'black' if lower else 'white'}")
        text.append("\n")
    return text


class UsersListed(Message):
    def __init__(self, users: list[User], roles: dict[Any, str]) -> None:
        super().__init__()
        self.users = users
        self.roles = roles


class DeviceCodeShown(Message):
    def __init__(self, authorization: DeviceAuthorization) -> None:
        super().__init__()
        self.authorization = authorization


class SignInSucceeded(Message):
    def __init__(self, desk: Desk) -> None:
        super().__init__()
        self.desk = desk


class SignInFailed(Message):
    def __init__(self, problem: Problem) -> None:
        super().__init__()
        self.problem = problem


class SignInAbandoned(Exception):
    """The app quit (or left this screen) while the device code was still waiting for approval."""


def _stop_if_abandoned(_outcome: str) -> None:
    """Between two polls of the identity provider: end the wait once its worker is cancelled (ctrl+q)."""
    if get_current_worker().is_cancelled:
        raise SignInAbandoned


class SignInScreen(Screen[None]):
    """Sign in with the identity provider, or pick a demo user on the embedded database."""

    DEFAULT_CSS = """
    SignInScreen #signin-box { height: 1fr; padding: 0 2; }
    SignInScreen #signin-note { color: $warning; height: auto; padding: 1 0 0 0; }
    SignInScreen #signin-text { height: auto; padding: 1 0; }
    SignInScreen #signin-error { color: $error; height: auto; }
    SignInScreen OptionList { height: 1fr; }
    SignInScreen #signin-qr-box { height: auto; max-height: 1fr; }
    SignInScreen #signin-qr { height: auto; width: auto; }
    SignInScreen #signin-loading { height: 1; }
    """

    BINDINGS = [
        Binding("enter", "retry", "Sign in", id="signin.retry", tooltip="Start signing in (again)", show=False),
        Binding("f5", "retry", "Retry", id="signin.retry_key", tooltip="Try signing in again"),
    ]

    def __init__(self, note: str | None = None, locked_user: str | None = None) -> None:
        super().__init__()
        self.note = note
        self.locked_user = locked_user
        self.method: str | None = None
        self.busy = False
        #: the last attempt failed: F5 (and Enter) start again; otherwise there is nothing to retry
        self.failed = False

    @property
    def care(self) -> CareApp:
        return cast("CareApp", self.app)

    def compose(self) -> ComposeResult:
        yield CareHeader()
        with Vertical(id="signin-box"):
            if self.note:
                yield Static(self.note, id="signin-note")
            yield Static("Signing in…", id="signin-text")
            yield Static("", id="signin-error")
            with VerticalScroll(id="signin-qr-box"):
                yield Static("", id="signin-qr")
            yield OptionList(id="signin-users")
            yield LoadingIndicator(id="signin-loading")
        yield CareFooter()

    def on_mount(self) -> None:
        self.query_one("#signin-users", OptionList).display = False
        self.query_one("#signin-qr-box").display = False
        self.start()

    def action_retry(self) -> None:
        if self.busy:
            return
        if self.query_one("#signin-users", OptionList).display:
            return  # Enter on the list picks a user (the list handles it)
        self.start()

    def start(self) -> None:
        self.busy = True
        self.failed = False
        self.refresh_bindings()
        self.query_one("#signin-error", Static).update("")
        self.query_one("#signin-loading").display = True
        self.begin()

    @work(thread=True, exclusive=True, group="signin")
    def begin(self) -> None:
        """Which way to sign in, and for the demo, who may be picked."""
        from carecli.services.auth.login import demo_candidates, login_method, role_names

        app = self.care
        try:
            assert app.databases is not None
            self.method = login_method(app.settings, app.databases)
            if self.method == "demo":
                self.post_message(UsersListed(demo_candidates(app.databases), role_names(app.databases)))
                return
        except Exception as exc:
            self.post_message(SignInFailed(describe(exc)))
            return
        self.sign_in_oidc()

    def on_users_listed(self, message: UsersListed) -> None:
        self.busy = False
        self.refresh_bindings()
        self.query_one("#signin-loading").display = False
        who = f" (locked for {escape(self.locked_user)})" if self.locked_user else ""
        self.query_one("#signin-text", Static).update(
            f"[b]Demo sign-in{who}[/b] — this is the embedded demo database. Pick who you are and press Enter.")
        options = self.query_one("#signin-users", OptionList)
        options.clear_options()
        if not message.users:
            self.query_one("#signin-error", Static).update(
                "There are no active users. Load demo data with `carecli seed --members 1000`.")
            return
        for user in message.users:
            name = " ".join(part for part in (user.first_name, user.last_name) if part) or user.email
            role = message.roles.get(user.role_id, "no role")
            options.add_option(Option(f"{name:<28} {role:<12} {user.email}", id=user.email))
        options.display = True
        options.highlighted = 0  # Enter picks straight away
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if self.busy or event.option.id is None:
            return
        self.busy = True
        self.query_one("#signin-loading").display = True
        self.sign_in_demo(event.option.id)

    @work(thread=True, exclusive=True, group="signin")
    def sign_in_demo(self, email: str) -> None:
        from carecli.services.auth.login import login
        from carecli.services.desk import Desk

        app = self.care
        try:
            assert app.databases is not None
            login(app.settings, app.databases, channel="tui", demo_email=email, store=app.store,
                  environ=app.environ)
            desk = Desk.resume(app.settings, app.databases, store=app.store)
        except Exception as exc:
            self.post_message(SignInFailed(describe(exc)))
            return
        self.post_message(SignInSucceeded(desk))

    @work(thread=True, exclusive=True, group="signin")
    def sign_in_oidc(self) -> None:
        from carecli.services.auth.login import login
        from carecli.services.desk import Desk

        app = self.care
        try:
            assert app.databases is not None
            login(app.settings, app.databases, channel="tui", store=app.store, environ=app.environ,
                  show=lambda authorization: self.post_message(DeviceCodeShown(authorization)),
                  on_poll=_stop_if_abandoned)  # ctrl+q does not wait for the device code to expire
            desk = Desk.resume(app.settings, app.databases, store=app.store)
        except SignInAbandoned:
            return
        except Exception as exc:
            self.post_message(SignInFailed(describe(exc)))
            return
        self.post_message(SignInSucceeded(desk))

    def on_device_code_shown(self, message: DeviceCodeShown) -> None:
        authorization = message.authorization
        self.query_one("#signin-text", Static).update(
            "[b]Sign in with your organisation[/b]\n\n"
            f"Open  [b]{escape(authorization.verification_uri)}[/b]\n"
            f"and enter the code  [b reverse] {escape(authorization.user_code)} [/b reverse]\n\n"
            f"Waiting for your approval (the code is valid for "
            f"{plural(max(1, authorization.expires_in // 60), 'minute')})…")
        link = authorization.verification_uri_complete or authorization.verification_uri
        qr = qr_code(link)
        box = self.query_one("#signin-qr-box")
        # A QR code only where it fits: it needs about (modules / 2) lines under the text.
        if qr is not None and qr.plain.count("\n") + 12 <= self.app.size.height:
            self.query_one("#signin-qr", Static).update(qr)
            box.display = True
            self.query_one("#signin-loading").display = False
        else:
            box.display = False

    def on_sign_in_failed(self, message: SignInFailed) -> None:
        self.busy = False
        self.failed = True
        self.refresh_bindings()
        self.query_one("#signin-loading").display = False
        self.query_one("#signin-qr-box").display = False
        problem = message.problem
        self.query_one("#signin-error", Static).update(
            f"{problem.message}\n{problem.hint or ''}\nPress F5 to try again, ctrl+q to quit.")

    def on_sign_in_succeeded(self, message: SignInSucceeded) -> None:
        self.busy = False
        self.care.signed_in(message.desk)

    def check_action(self, action: str, parameters: tuple[Any, ...]) -> bool | None:
        # "Retry" only when there is something to retry: a failed attempt, nothing under way, no list to pick from.
        if action == "retry":
            return self.failed and not self.busy and not self.query_one("#signin-users", OptionList).display
        return True

"""The specialist's app: connection, sign-in, navigation, the inactivity lock, and key remapping.

The app owns the state that outlives a screen (the signed-in :class:`Desk`,
the idle clock); screens own what they show. One screen stack: the worklist
is at the bottom, other screens are pushed on it, forms and dialogs are
modal on top. A lock pushes the lock screen over everything after every
screen has cleared its member values, so a draft under it survives.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from textual import events, work
from textual.app import App, ComposeResult, ScreenStackError
from textual.await_complete import AwaitComplete
from textual.binding import Binding
from textual.containers import Center, Middle
from textual.message import Message
from textual.message_pump import MessagePump
from textual.screen import ModalScreen, Screen
from textual.scrollbar import ScrollBar
from textual.widgets import LoadingIndicator, Static

from carecli import __version__
from carecli.config import Settings
from carecli.data.actor import Channel
from carecli.errors import EXIT_AUTH, EXIT_IDLE, EXIT_OK, AuthError
from carecli.screens.base import CareModal, PhiHolder, Problem, TypeAhead, describe
from carecli.screens.collector import collector, release_start_up
from carecli.screens.formatting import plural, set_display_zone
from carecli.screens.live import COALESCE_SECONDS, DataChanged, LiveChanges, NoticeArrived
from carecli.screens.palette import MemberCommands
from carecli.screens.side_doors import SCREENSHOT_REFUSED, close_side_doors
from carecli.screens.strips import install as install_strip_divide
from carecli.screens.widgets import CareFooter, CareHeader, WholeCellScrollBarRender, prune_dead_watchers
from carecli.services.auth.credentials import CredentialStore
from carecli.services.opening import Opening

if TYPE_CHECKING:
    from textual.timer import Timer

    from carecli.data.databases import Databases
    from carecli.data.notify import Notice, Subscription
    from carecli.data.repositories.worklist import Worklist
    from carecli.screens.member import MemberDetailScreen
    from carecli.services.desk import Desk

MIN_WIDTH, MIN_HEIGHT = 80, 24
#: Textual's own palette commands the app keeps, by title: an allow-list, so "Screenshot" (the screen, a revealed
#: SSN included, written to a file no audit row records) and whatever a later Textual adds stay out
TEXTUAL_COMMANDS_KEPT = frozenset({"Theme", "Quit", "Keys", "Maximize", "Minimize"})
IDLE_CHECK_SECONDS = 5.0
#: A pass of the garbage collector (carecli/screens/collector.py) runs once the keyboard has been still this
#: long: the deep passes that free a closed screen's widgets wait for such a pause instead of a key press.
GC_IDLE_SECONDS = 0.5
#: true while a pause-time pass runs (benchmarks tell those from the ones a key press waits on)
collecting_while_idle = False
#: the start screen is shown once the databases took this long to open (at once while the embedded server starts):
#: either it or the first screen is on within this time
START_SCREEN_AFTER_SECONDS = 0.3
#: the start screen shows its spinner once the databases took this long to open
SPINNER_AFTER_SECONDS = 0.5
#: how long Enter on a member waits for their file before showing their screen without it (see open_member)
OPEN_PATIENCE_SECONDS = 0.2
#: how long a key may be on its way before the keys typed after it are handed out anyway
KEY_LINE_PATIENCE_SECONDS = 0.5
#: how long after a member's file is shown the next open's screen is composed (while the user reads)
SPARE_AFTER_SECONDS = 0.5
#: ... once no key was pressed for this long (not in the middle of typing)
SPARE_IDLE_SECONDS = 0.3
#: ... and after a sign-in (once the worklist is drawn)
SPARE_AFTER_SIGN_IN_SECONDS = 1.5
#: how often user activity is reported to the database (slides the session's idle deadline)
SESSION_TOUCH_SECONDS = 60.0

#: navigation target -> "module:Class" (imported when first used)
DESTINATIONS: dict[str, str] = {
    "worklist": "carecli.screens.worklist:WorklistScreen",
    "members": "carecli.screens.members:MemberBrowserScreen",
    "plans": "carecli.screens.plans:PlansScreen",
    "users": "carecli.screens.admin:UsersScreen",
    "audit": "carecli.screens.admin:AuditScreen",
    "emergencies": "carecli.screens.emergency:EmergencyQueueScreen",
}


def load_screen_class(target: str) -> type[Screen[Any]]:
    module, _, name = DESTINATIONS.get(target, target).partition(":")
    return getattr(importlib.import_module(module), name)


class Connected(Message):
    def __init__(self, databases: Databases, desk: Desk | None, problem: Problem | None) -> None:
        super().__init__()
        self.databases = databases
        self.desk = desk
        self.problem = problem


class SignedOut(Message):
    """The session was ended on the server (or could not be: ``problem``)."""

    def __init__(self, problem: Problem | None = None) -> None:
        super().__init__()
        self.problem = problem


class MemberFileRead(Message):
    """The file :meth:`CareApp.open_member` read ahead for ``screen`` (the messages its read produced)."""

    def __init__(self, screen: MemberDetailScreen, messages: list[Message]) -> None:
        super().__init__()
        self.screen = screen
        self.messages = messages


class ConnectFailed(Message):
    def __init__(self, problem: Problem) -> None:
        super().__init__()
        self.problem = problem


class StartScreen(Screen[None]):
    """Shown while the databases open (the embedded server can take a few seconds to start)."""

    def __init__(self, text: str = "Connecting to the databases…") -> None:
        super().__init__()
        self.text = text
        self._failed: Problem | None = None

    def compose(self) -> ComposeResult:
        yield CareHeader()
        with Middle(), Center():
            yield Static(self.text, id="start-text")
        # Shown only if the wait is long: its animation repaints many times a second, and during a usual
        # start (under a second) that work would compete with the thread opening the databases.
        indicator = LoadingIndicator()
        indicator.display = False
        yield indicator
        yield CareFooter()

    def on_mount(self) -> None:
        if self._failed is not None:  # the failure came before the screen was on
            self._tell(self._failed)
        else:
            self.set_timer(SPINNER_AFTER_SECONDS, self._show_spinner)

    def _show_spinner(self) -> None:
        indicator = self.query_one(LoadingIndicator)
        if self._failed is None:
            indicator.display = True

    def show_failure(self, problem: Problem) -> None:
        """Say why carecli cannot start (now, or as soon as the screen is mounted)."""
        self._failed = problem
        if self.query(LoadingIndicator):  # composed (else on_mount tells it)
            self._tell(problem)

    def _tell(self, problem: Problem) -> None:
        self.query_one(LoadingIndicator).display = False
        self.query_one("#start-text", Static).update(
            f"[b]carecli cannot start[/b]\n\n{escape(problem.message)}\n\n{escape(problem.hint or '')}"
            "\n\nPress ctrl+q to quit.")


class TooSmallScreen(ModalScreen[None]):
    """Covers everything while the terminal is smaller than 80x24 (nothing is lost; resize to go on)."""

    DEFAULT_CSS = """
    TooSmallScreen { align: center middle; background: $background; }
    TooSmallScreen Static { width: auto; max-width: 100%; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="too-small")

    def on_mount(self) -> None:
        self.show_size(self.app.size.width, self.app.size.height)

    def show_size(self, width: int, height: int) -> None:
        self.query_one("#too-small", Static).update(
            f"carecli needs a terminal of at least {MIN_WIDTH}×{MIN_HEIGHT}; this one is {width}×{height}.\n"
            "Please make the window larger: nothing is lost meanwhile.")


class CareApp(App[None]):
    """carecli's terminal app."""

    TITLE = "carecli"
    SUB_TITLE = f"v{__version__}"
    CSS_PATH = "care.tcss"
    ENABLE_COMMAND_PALETTE = True
    COMMANDS = App.COMMANDS | {MemberCommands}

    BINDINGS = [
        Binding("f1", "help", "Help", id="app.help", tooltip="Keys and help for this screen"),
        Binding("f2", "go('worklist')", "Worklist", id="app.worklist", tooltip="Your calls, follow-ups and flags"),
        Binding("f3", "go('members')", "Members", id="app.members", tooltip="Search all members"),
        Binding("f4", "go('plans')", "Plans", id="app.plans", tooltip="The insurance plan catalog"),
        Binding("f6", "go('audit')", "Audit", show=False, id="app.audit", tooltip="The audit log (audit:read)"),
        Binding("f7", "go('users')", "Users", show=False, id="app.users", tooltip="Users and roles (users:admin)"),
        Binding("f8", "go('emergencies')", "Emergencies", show=False, id="app.emergencies",
                tooltip="Emergency accesses to review (emergency:review)"),
        Binding("ctrl+l", "lock", "Lock", id="app.lock", tooltip="Lock the screen now"),
        Binding("ctrl+o", "sign_out", "Sign out", show=False, id="app.sign_out",
                tooltip="End your session (as carecli logout does) and go back to the sign-in screen"),
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True),
    ]

    def __init__(self, settings: Settings, *, databases: Databases | None = None, desk: Desk | None = None,
                 store: CredentialStore | None = None, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic, channel: Channel = "tui",
                 single_session: bool = False, opening: Opening | None = None) -> None:
        super().__init__()
        close_side_doors(self)
        self.settings = settings
        ScrollBar.renderer = WholeCellScrollBarRender
        install_strip_divide()  # painted strips freed by their reference counts (carecli/screens/strips.py)
        self.databases = databases
        self.desk: Desk | None = desk
        self.store = store
        self.environ = environ
        self.clock = clock
        self.channel: Channel = channel
        #: the SSH host's app: signed in by the host for one person, so it never offers a sign-in
        #: (that would let someone else take over the SSH session); a lock or a dead session ends it
        self.single_session = single_session
        self.last_input = clock()
        self._last_touch = clock()
        #: when the last idle-time garbage collection ran (one per pause in the typing)
        self._collected_at = clock()
        self.locked = False
        self._too_small: TooSmallScreen | None = None
        #: the start screen, the sign-in or the worklist has been shown (see on_mount)
        self._first_screen_shown = False
        #: live updates: the subscription to the process's listener, and notices not yet handed out
        self._live: Subscription | None = None
        self._live_pending: list[Notice] = []
        self._live_timer: Timer | None = None
        #: a notice arriving this long after the last hand-out is handed on at once; one arriving sooner waits
        #: for the rest of the window, with whatever else arrives meanwhile (see on_notice_arrived)
        self.live_coalesce_seconds = COALESCE_SECONDS
        self._live_handed_at = float("-inf")
        self._live_soon = False
        #: notices received so far, and hand-outs to the screens (diagnostics and tests)
        self.live_received = 0
        self.live_handed = 0
        #: the databases and the session being opened (``carecli app`` starts it before loading the app)
        self._opening = opening
        #: a member's screen whose file is being read before it is shown (see open_member), and the
        #: screen and desk it was asked from
        self._member_ahead: tuple[MemberDetailScreen, Screen[Any], Desk] | None = None
        #: whether member screens are composed before they are needed (benchmarks/tui_bench.py turns it off
        #: for every other open, to compare). Not in the SSH host's sessions: there a spare screen per session
        #: is memory and CPU fifty sessions share (issue 18's per-session targets)
        self.spare_member_screens = not single_session
        self._spare_timer: Timer | None = None
        #: opens that found the spare screen ready (benchmarks/tui_bench.py reports it)
        self.spare_members_taken = 0
        #: the key line (see _hand_out_key): the key on its way, the keys typed after it, and a timer that
        #: lets the next go should a key never come back (a widget removed before it handled it)
        self._key_in_flight: events.Key | None = None
        self._keys_waiting: deque[events.Key] = deque()
        self._key_timer: asyncio.TimerHandle | None = None
        self._key_release_due = False
        #: a member screen composed before it is needed, and the desk it was made for
        self._spare_member: tuple[MemberDetailScreen, Desk] | None = None

    # -- start --------------------------------------------------------------------

    def on_mount(self) -> None:
        self._apply_preferences()
        if self.desk is None and self._opening is None:
            self._opening = Opening(self.settings, databases=self.databases, store=self.store, channel=self.channel)
        # "Starting the database…" at once when the embedded server has to start (seconds). Otherwise
        # "Connecting…" only if the databases are slow to answer: a usual start goes straight to the worklist
        # (or the sign-in), without composing, styling and painting a screen that is gone a moment later.
        if self._opening is not None and self._opening.starting_server:
            self._show_start_screen()
        else:
            self.set_timer(START_SCREEN_AFTER_SECONDS, self._show_start_screen)
        self.set_interval(IDLE_CHECK_SECONDS, self.check_inactivity)
        self.set_interval(GC_IDLE_SECONDS, self.collect_when_idle)
        if self.desk is not None:
            self.post_message(Connected(self.desk.databases, self.desk, None))
        else:
            self.connect()
            # The first screen's code loads while the databases open (after the start screen is painted).
            self.call_after_refresh(load_screen_class, "worklist")

    def _apply_preferences(self) -> None:
        set_display_zone(self.settings.timezone)  # every screen shows and reads times in the user's zone
        if self.settings.theme in self.available_themes:
            self.theme = self.settings.theme
        else:
            self.notify(f"unknown theme {self.settings.theme!r} in the configuration; using the default",
                        severity="warning")
        if self.settings.keymap:
            self.set_keymap(self.settings.keymap)

    @work(thread=True, exclusive=True, group="connect")
    def connect(self) -> None:
        """Open both databases and pick up a stored session (worker thread; the :class:`Opening` does it)."""
        opening = self._opening
        assert opening is not None
        opening.start()
        opening.wait()
        if opening.failure is not None or opening.databases is None:  # shown on the start screen, never raised
            self.post_message(ConnectFailed(describe(opening.failure or RuntimeError("no databases"))))
            return
        problem = None if opening.desk is not None else describe(opening.refusal or AuthError("not signed in"))
        self.post_message(Connected(opening.databases, opening.desk, problem))

    def take_prefetched_worklist(self, desk: Desk | None) -> Worklist | None:
        """The worklist read for ``desk`` while the app started, once (None: the screen reads it itself)."""
        opening = self._opening
        if opening is None or desk is None or opening.desk is not desk:
            return None
        return opening.take_worklist()

    def _show_start_screen(self) -> None:
        """The start screen, unless the first screen (or the start screen) is already shown."""
        if self._first_screen_shown:
            return
        self._first_screen_shown = True
        self.push_screen(StartScreen() if self._opening is None else StartScreen(self._opening.text))
        self.call_after_refresh(release_start_up)

    def _show_first_screen(self, screen: Screen[Any]) -> None:
        """``screen`` in place of the start (or sign-in) screen, or above Textual's default one if none was
        shown; under the "too small" cover if the terminal is too small."""
        self._first_screen_shown = True
        if self._too_small is not None and self.screen is self._too_small:
            self.pop_screen()
        if len(self.screen_stack) > 1:
            self.switch_screen(screen)
        else:
            self.push_screen(screen)
        if self._too_small is not None:  # the terminal is still too small: covered again
            self._too_small = TooSmallScreen()
            self.push_screen(self._too_small)
        self.call_after_refresh(release_start_up)  # start-up is over once this screen is painted

    def on_connect_failed(self, message: ConnectFailed) -> None:
        self._show_start_screen()
        start = next((screen for screen in self.screen_stack if isinstance(screen, StartScreen)), None)
        if start is not None:
            start.show_failure(message.problem)

    def on_connected(self, message: Connected) -> None:
        self.databases = message.databases
        if message.desk is not None:
            self.signed_in(message.desk)
            return
        if self.single_session:
            why = message.problem.message if message.problem is not None else "not signed in"
            self.exit(return_code=EXIT_AUTH, message=f"carecli: your session could not start: {why}.")
            return
        from carecli.screens.signin import SignInScreen

        note = None
        if message.problem is not None and message.problem.message != "not signed in":
            note = message.problem.message
        self._show_first_screen(SignInScreen(note=note))

    # -- signing in and out ---------------------------------------------------------

    def signed_in(self, desk: Desk) -> None:
        """A sign-in (first, or after a lock) succeeded."""
        # What exists by now (Textual, SQLAlchemy, the connection pools) lives as long as the app: out of the
        # garbage collector's full passes, and so is what survives each of them from now on (see collector).
        collector.start()
        self.call_later(prune_dead_watchers, self)  # the sign-in screens' headers
        previous = self.desk
        self.desk = desk
        self.start_live_updates()
        self.refresh_bindings()
        self.sub_title = f"{desk.display_name} · {desk.role or 'no role'}"
        self.last_input = self._last_touch = self.clock()
        self.schedule_spare_member(SPARE_AFTER_SIGN_IN_SECONDS)  # the first open's screen
        if self.locked and previous is not None and previous.user_id == desk.user_id:
            self.locked = False
            self.refresh_bindings()
            self.pop_screen()  # the lock screen: everything under it, drafts included, is back
            for screen in self.screen_stack:
                if isinstance(screen, PhiHolder):
                    screen.restore_after_unlock()
            self.notify("Welcome back.")
            return
        self.locked = False
        self.refresh_bindings()
        # First sign-in, or a different person at the keyboard: start from a clean worklist.
        from carecli.screens.worklist import WorklistScreen

        # Keep Textual's default screen and the one above it (start/sign-in), which switch_screen replaces:
        # switching the default screen itself fails (it has no result callback to pop). After a quick start
        # there is none above it: the worklist is pushed.
        while len(self.screen_stack) > 2:
            self.pop_screen()
        self._show_first_screen(WorklistScreen())

    # -- live updates --------------------------------------------------------------------

    def start_live_updates(self) -> None:
        """Subscribe to other sessions' changes (once; the listener thread connects on its own)."""
        if self._live is None and self.desk is not None:
            self._live = self.desk.watch_changes(self._notice_from_listener)

    @property
    def live_listening(self) -> bool:
        """Whether this app's live updates are connected (a lost connection is retried meanwhile)."""
        return self._live is not None and self._live.listener.listening

    @property
    def live_idle(self) -> bool:
        """No notice is waiting to be handed to the screens."""
        return self._live_timer is None and not self._live_soon and not self._live_pending

    def stop_live_updates(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.close()

    def _notice_from_listener(self, notice: Notice) -> None:
        # The listener's thread: post_message is thread-safe, widgets are not.
        self.post_message(NoticeArrived(notice))

    def on_notice_arrived(self, message: NoticeArrived) -> None:
        """Gather a notice: a change after a quiet spell is handed on at once (with the notices already queued
        behind it); during a burst, at most one hand-out per ``live_coalesce_seconds``. Waiting out a window
        on every notice made each change 0.25 s later on every screen, for nothing when it came alone."""
        self.live_received += 1
        self._live_pending.append(message.notice)
        if self._live_timer is not None or self._live_soon:
            return
        wait = self._live_handed_at + self.live_coalesce_seconds - time.monotonic()
        if wait <= 0:
            self._live_soon = True
            self.call_later(self.flush_live_updates)
        else:
            self._live_timer = self.set_timer(wait, self.flush_live_updates)

    def flush_live_updates(self) -> None:
        """Hand the gathered notices to every screen as one :class:`DataChanged` (not while locked)."""
        if self._live_timer is not None:
            self._live_timer.stop()
        self._live_timer, self._live_soon = None, False
        notices, self._live_pending = self._live_pending, []
        if not notices or self.locked or self.desk is None:
            return  # locked: the unlock reloads every screen anyway
        self._live_handed_at = time.monotonic()
        self.live_handed += 1
        changes = LiveChanges.gather(notices)
        for screen in self.screen_stack:
            if isinstance(screen, PhiHolder):
                screen.post_message(DataChanged(changes))

    def pop_screen(self) -> AwaitComplete:
        """Pop the top screen; the screens it uncovers behind the new top (a dialog's background) catch up.

        Textual resumes only the new top screen, while the one under it is shown too (and counts as current
        for live updates from then on): a member's file under a call, marked stale while a form covered both,
        stayed as it was until the call was closed."""
        done = super().pop_screen()
        self.call_later(self._catch_up_behind)
        return done

    def _catch_up_behind(self) -> None:
        try:
            shown = self._background_screens
        except ScreenStackError:
            return
        for screen in shown:
            if isinstance(screen, PhiHolder):
                screen.catch_up()

    def on_unmount(self) -> None:
        self.stop_live_updates()
        collector.stop()

    def action_lock(self, reason: str = "Locked.") -> None:
        self.lock(reason)

    def action_sign_out(self) -> None:
        """Ask, then end the session (drafts in open forms are dropped) and go back to the sign-in screen."""
        if self.desk is None or self.locked:
            return
        from carecli.screens.confirm import ConfirmDialog
        from carecli.screens.forms import FormModal

        if any(isinstance(screen, ConfirmDialog) for screen in self.screen_stack):
            return
        drafts = any(isinstance(screen, FormModal) and screen.has_changes() for screen in self.screen_stack)
        question = (f"Sign out {self.desk.display_name}? Your session ends here and everything on screen is "
                    "cleared" + ("; what you typed in the open form is dropped." if drafts else "."))
        self.push_screen(ConfirmDialog(question, yes="Sign out"),
                         lambda yes: self.end_session() if yes else None)

    def end_session(self) -> None:
        """End the session the way ``carecli logout`` does (revoked on the server, audited, forgotten here)."""
        if self.desk is None or self.locked:
            return
        self._end_session_in_background(self.desk)

    @work(thread=True, exclusive=True, group="session")
    def _end_session_in_background(self, desk: Desk) -> None:
        try:
            desk.sign_out()
        except Exception as exc:
            self.post_message(SignedOut(describe(exc)))
            return
        self.post_message(SignedOut())

    def on_signed_out(self, message: SignedOut) -> None:
        if message.problem is not None and not message.problem.auth:
            # Still signed in (the server did not hear of it): say so, change nothing.
            self.show_problem("sign out", message.problem)
            return
        for screen in self.screen_stack:
            if isinstance(screen, PhiHolder):
                screen.clear_phi()
        self.clear_notifications()
        self.stop_live_updates()
        self._member_ahead = None
        self.drop_spare_member()
        self.desk = None
        self.locked = False
        self.sub_title = f"v{__version__}"
        self.refresh_bindings()
        if self.single_session:
            self.exit(return_code=EXIT_OK, message="carecli: signed out.")
            return
        from carecli.screens.signin import SignInScreen

        # As signed_in does: keep Textual's default screen and the one above it, which switch_screen replaces.
        while len(self.screen_stack) > 2:
            self.pop_screen()
        self.switch_screen(SignInScreen(note="Signed out."))

    def lock(self, reason: str, *, exit_code: int = EXIT_OK) -> None:
        """Clear every member value from every screen, then cover them with the sign-in screen.

        A single-session app (the SSH host's) ends instead, with ``exit_code``: its user signs in
        again by connecting again with their key.
        """
        if self.locked or self.desk is None:
            return
        self.locked = True
        self._member_ahead = None
        self.drop_spare_member()
        self.refresh_bindings()
        for screen in self.screen_stack:
            if isinstance(screen, PhiHolder):
                screen.clear_phi()
        self.clear_notifications()
        if self.single_session:
            self.exit(return_code=exit_code, message=f"carecli: {reason}")
            return
        from carecli.screens.signin import SignInScreen

        self.push_screen(SignInScreen(note=reason, locked_user=self.desk.display_name))

    def collect_when_idle(self) -> None:
        """A pass of the garbage collector once per pause in the typing (see GC_IDLE_SECONDS)."""
        global collecting_while_idle
        now = self.clock()
        paused = self._collected_at <= self.last_input and now - self.last_input >= GC_IDLE_SECONDS
        if not paused and not collector.overdue():
            return
        collecting_while_idle = paused  # a forced deep pass in the middle of the typing is a pause people wait on
        try:
            collector.pause_pass()
        finally:
            collecting_while_idle = False
        self._collected_at = self.clock()

    def check_inactivity(self) -> None:
        idle = self.clock() - self.last_input
        if not self.locked and self.desk is not None and idle >= self.settings.session_idle_minutes * 60:
            self.lock(f"Locked after {plural(self.settings.session_idle_minutes, 'minute')} without activity.",
                      exit_code=EXIT_IDLE)

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, (events.Key, events.MouseDown, events.MouseScrollDown, events.MouseScrollUp)):
            self.last_input = self.clock()
            if self.desk is not None and not self.locked and self.last_input - self._last_touch > SESSION_TOUCH_SECONDS:
                self._last_touch = self.last_input
                self.touch_session()
        if isinstance(event, events.Key) and not event.is_forwarded:
            if self._key_in_flight is not None or self._keys_waiting or self._key_release_due:
                self._keys_waiting.append(event)  # keys before it are still on their way: it comes after them
                return
            await self._hand_out_key(event)
            return
        await super().on_event(event)

    # -- the key line ---------------------------------------------------------------------------
    #
    # Textual hands each key to the focused widget at once, but a key's binding runs only when the key has
    # come back up to the app, and a focus move is applied a message later: keys typed in one read ("/smith",
    # "↓ Enter", "n" and a note) went to the widget that had the focus before the first key's action, and
    # were lost or did the wrong thing. Here the next key is handed out only once the one before it has been
    # handled: taken by a widget, or back at the app with its binding run and what that queued done.

    async def _hand_out_key(self, event: events.Key) -> None:
        screen = self.screen
        if isinstance(screen, TypeAhead) and screen.holds_keys():
            # A screen just opened, its focus not settled yet: it keeps the key for the widget that gets it.
            if not await self._check_bindings(event.key, priority=True):
                screen.hold_key(event)
            self._release_next_key()
            return
        target: MessagePump = self.focused or screen
        self._key_in_flight = event
        self._key_timer = asyncio.get_running_loop().call_later(KEY_LINE_PATIENCE_SECONDS, self._key_handled, event)
        await super().on_event(event)
        if not event.is_forwarded:  # a priority binding took it (or nothing did): done
            self._key_handled(event)
        elif not target.call_later(self._follow_key, event, target):
            self._key_handled(event)

    def _follow_key(self, event: events.Key, node: MessagePump) -> None:
        """``node`` has handled ``event``: done if it stopped there, else follow it to the parent it bubbled to."""
        if event is not self._key_in_flight:
            return
        parent = node._parent
        if event._stop_propagation or parent is None:
            self._key_handled(event)
        elif parent is self:
            # Back at the app: after its bindings ran, and after what they queued (a focus move) is done.
            self.call_later(self.call_later, self._key_handled, event)
        elif not parent.call_later(self._follow_key, event, parent):
            self._key_handled(event)

    def _key_handled(self, event: events.Key) -> None:
        if event is not self._key_in_flight:
            return
        self._key_in_flight = None
        if self._key_timer is not None:
            self._key_timer.cancel()
            self._key_timer = None
        self._release_next_key()

    def replay_keys(self, keys: list[events.Key]) -> None:
        """Keys a screen kept while it opened (see TypeAhead): next in the key line, in their order."""
        for key in keys:
            key.set_sender(self)
        self._keys_waiting.extendleft(reversed(keys))
        self._release_next_key()

    def _release_next_key(self) -> None:
        if self._keys_waiting and self._key_in_flight is None and not self._key_release_due:
            self._key_release_due = True
            self.call_later(self._hand_out_next_key)

    async def _hand_out_next_key(self) -> None:
        self._key_release_due = False
        if self._keys_waiting and self._key_in_flight is None:
            await self._hand_out_key(self._keys_waiting.popleft())

    @work(thread=True, exclusive=True, group="session")
    def touch_session(self) -> None:
        """Activity slides the session's idle deadline; a revoked session locks the app."""
        desk = self.desk
        if desk is None:
            return
        try:
            desk.check_session()
        except Exception as exc:
            problem = describe(exc)
            if problem.auth:
                self.call_from_thread(self.lock, f"Your session ended: {problem.message}.", exit_code=EXIT_AUTH)

    # -- navigation and help -----------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Navigation, lock and sign-out keys only for a signed-in, unlocked user; no key takes a screenshot."""
        if action == "screenshot":
            return False
        if action in ("go", "lock", "sign_out") and (self.desk is None or self.locked):
            return False
        return True

    def action_go(self, target: str) -> None:
        if self.desk is None or self.locked:
            return
        if isinstance(self.screen, ModalScreen) and not isinstance(self.screen, TooSmallScreen):
            self.notify("Finish or close this form first (Esc closes it; what you typed is kept until then).",
                        severity="warning")
            return
        screen_class = load_screen_class(target)
        for index, screen in enumerate(self.screen_stack):
            if isinstance(screen, screen_class):
                while len(self.screen_stack) > index + 1:
                    self.pop_screen()
                return
        self.push_screen(screen_class())

    def open_member(self, member_id: Any) -> None:
        """Open a member's detail screen (from the worklist, the browser or the command palette).

        The file is read first, and the screen shown with it: painting an empty screen meanwhile made the
        read itself take twice as long in this process (the two share the interpreter). Should the read
        take longer than OPEN_PATIENCE_SECONDS, the screen is shown anyway, saying it is opening the
        file, and fills in when the read is done. A read overtaken by another open, a lock, a sign-out or
        the user going elsewhere is dropped unseen (it was audited: a read is recorded when it is made).
        """
        if self.desk is None or self.locked:
            return
        from carecli.screens.member import MemberDetailScreen

        if isinstance(self.screen, CareModal):
            self.pop_screen()
        desk = self.desk
        screen = self._take_spare_member(member_id) or MemberDetailScreen(member_id)
        screen.read_by_app = True
        self._member_ahead = (screen, self.screen, desk)
        self.run_worker(lambda: self.post_message(MemberFileRead(screen, screen.read_file(desk))), thread=True,
                        group="member-read-ahead", exit_on_error=False)
        self.set_timer(OPEN_PATIENCE_SECONDS, lambda: self._show_member_ahead(screen))

    def prepare_spare_member(self) -> None:
        """Compose and mount a member screen before it is needed, while the user reads (off the screen stack).

        Composing, mounting and styling the member screen's widgets was about half of opening a member
        (benchmarks/tui_bench.py --profile opens); the next open takes this screen and only fills it. A
        spare is made for one desk (its tabs and keys depend on the user's permissions) and is never
        reused: each holds no member until it is taken.
        """
        from carecli.screens.member import MemberDetailScreen

        self._spare_timer = None
        if (not self.spare_member_screens or self.desk is None or self.locked or self._spare_member is not None
                or not self.is_running or self._exit):
            return
        if self.clock() - self.last_input < SPARE_IDLE_SECONDS or self._member_ahead is not None:
            # Not in the middle of typing or of an open: composing takes the app's thread for tens of ms.
            self.schedule_spare_member(SPARE_IDLE_SECONDS)
            return
        screen = MemberDetailScreen(None)
        screen.read_by_app = True
        self._register(self, screen)  # what push_screen does for a screen that is not running yet
        self._spare_member = (screen, self.desk)

    def schedule_spare_member(self, delay: float) -> None:
        """Make the spare member screen ``delay`` seconds from now, or at the next pause in the typing."""
        if self._spare_timer is not None:
            self._spare_timer.stop()
        self._spare_timer = self.set_timer(delay, self.prepare_spare_member)

    def _take_spare_member(self, member_id: Any) -> MemberDetailScreen | None:
        """The spare member screen, given ``member_id``, if it was made for this desk and is mounted."""
        from carecli.screens.member import as_member_id

        spare, self._spare_member = self._spare_member, None
        if spare is None:
            return None
        screen, desk = spare
        if desk is not self.desk or not screen.is_mounted or screen in self.screen_stack:
            self.drop_spare_member(screen)
            return None
        screen.member_id = as_member_id(member_id)
        self.spare_members_taken += 1
        return screen

    def drop_spare_member(self, screen: Screen[Any] | None = None) -> None:
        """Remove the spare member screen (sign-out, lock, another desk)."""
        if screen is None:
            spare, self._spare_member = self._spare_member, None
            screen = spare[0] if spare is not None else None
        if screen is None or screen in self.screen_stack or not screen.is_attached:
            return
        from carecli.screens.member import MemberDetailScreen

        if isinstance(screen, MemberDetailScreen) and not screen.mount_handled:
            # Still composing: removed mid-compose, its on_mount ran without its widgets and failed (the
            # app's crash). It removes itself once mounted.
            screen.drop_when_mounted = True
        else:
            screen.remove()

    def _take_member_ahead(self, screen: MemberDetailScreen) -> bool:
        """Whether ``screen`` is still the one to show (and no longer waiting to be shown either way)."""
        ahead, self._member_ahead = self._member_ahead, None
        if ahead is None or ahead[0] is not screen:
            self._member_ahead = ahead  # another member's open is pending: leave it
            return False
        return not self.locked and self.desk is ahead[2] and self.screen is ahead[1]

    def _show_member_ahead(self, screen: MemberDetailScreen) -> None:
        """The read is taking a while: show the screen now (it says it is opening the file)."""
        if self._take_member_ahead(screen):
            self.push_screen(screen)

    def on_member_file_read(self, message: MemberFileRead) -> None:
        screen = message.screen
        if screen in self.screen_stack:  # shown already (OPEN_PATIENCE_SECONDS passed): it takes the file as its own
            for read in message.messages:
                screen.post_message(read)
        elif self._take_member_ahead(screen):
            if screen.is_mounted:  # the spare screen: mounted already, it takes the file now and is shown with it
                screen.take_read(message.messages)
            else:
                screen.read_ahead = message.messages
            self.push_screen(screen)
        else:
            self.drop_spare_member(screen)  # overtaken or left: a spare taken for it goes too
        # The next open's screen is composed while the user reads this one.
        self.schedule_spare_member(SPARE_AFTER_SECONDS)

    def action_help(self) -> None:
        from carecli.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def show_problem(self, action: str, problem: Problem) -> None:
        """Tell the user what failed and what to do; a dead session locks the app."""
        if problem.auth and self.desk is not None:
            self.lock(f"Your session ended: {problem.message}.", exit_code=EXIT_AUTH)
            return
        self.notify(str(problem), title=f"Could not {action}", severity="error", timeout=10)

    # -- the terminal size ---------------------------------------------------------------

    def on_resize(self, event: events.Resize) -> None:
        small = event.size.width < MIN_WIDTH or event.size.height < MIN_HEIGHT
        if small and self._too_small is None:
            self._too_small = TooSmallScreen()
            self.push_screen(self._too_small)
        elif small and self._too_small is not None:
            self._too_small.show_size(event.size.width, event.size.height)
        elif not small and self._too_small is not None:
            if self.screen is self._too_small:
                self.pop_screen()
            self._too_small = None

    # -- the command palette and Textual's developer features ------------------------------

    def get_system_commands(self, screen: Screen[Any]):  # noqa: ANN201 - the palette's system commands
        yield from (command for command in super().get_system_commands(screen)
                    if command.title in TEXTUAL_COMMANDS_KEPT)
        if self.desk is not None and not self.locked:
            from textual.app import SystemCommand

            yield SystemCommand("Worklist", "Your calls, follow-ups and urgent flags",
                                lambda: self.action_go("worklist"))
            yield SystemCommand("Members", "Search all members", lambda: self.action_go("members"))
            yield SystemCommand("Plans", "The insurance plan catalog", lambda: self.action_go("plans"))
            yield SystemCommand("Audit log", "Who did what (audit:read)", lambda: self.action_go("audit"))
            yield SystemCommand("Users and roles", "Staff accounts (users:admin)", lambda: self.action_go("users"))
            yield SystemCommand("Emergency accesses", "Break-the-glass grants to review (emergency:review)",
                                lambda: self.action_go("emergencies"))
            yield SystemCommand("Lock", "Lock the screen now", self.action_lock)
            yield SystemCommand("Sign out", "End your session and go back to the sign-in screen (ctrl+o)",
                                self.action_sign_out)

    def action_screenshot(self, filename: str | None = None, path: str | None = None) -> None:
        """Refused: a screenshot file would copy member data (a revealed SSN too) outside the audit trail."""
        self.notify(SCREENSHOT_REFUSED, title="Not available", severity="warning")

    def save_screenshot(self, filename: str | None = None, path: str | None = None,
                        time_format: str | None = None) -> str:
        """Refused, like :meth:`action_screenshot` (``export_screenshot`` still returns the SVG as text, for tests)."""
        raise PermissionError(SCREENSHOT_REFUSED)

    def deliver_screenshot(self, filename: str | None = None, path: str | None = None,
                           time_format: str | None = None) -> str | None:
        """Refused, like :meth:`action_screenshot`: nothing is written or served."""
        self.notify(SCREENSHOT_REFUSED, title="Not available", severity="warning")
        return None

    def _fatal_error(self) -> None:
        """Textual's crash report, without the local variables of each frame (they can hold member data)."""
        import rich
        from rich.segment import Segments
        from rich.traceback import Traceback

        self.bell()
        traceback = Traceback(show_locals=False, width=None, suppress=[rich])
        self._exit_renderables.append(Segments(self.console.render(traceback, self.console.options)))
        self._close_messages_no_wait()

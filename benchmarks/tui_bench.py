"""Benchmark the app on a million members: launch, search as you type, paging, opening a member, memory.

    .venv/bin/python benchmarks/tui_bench.py \\
        --admin-url postgresql://postgres@127.0.0.1:5432/postgres

Uses the database pair ``--identity-db``/``--platform-db`` on the server
behind ``--admin-url`` (by default the pair ``benchmarks/search_bench.py``
keeps): creates them if they do not exist, migrates them to head, and seeds
``--members`` members with ``carecli seed``'s loader if ``members`` is empty
(then VACUUM ANALYZEs). The pair is kept for the next run.

The real app (:class:`carecli.screens.app.CareApp`) runs headless in this
process (``App.run_test``, 120x40), signed in with a real session of the
seeded specialist with the most calls today (session token in a private file
under a temporary ``XDG_STATE_HOME``). Every latency runs from posting the key
event to the first frame the app paints that shows the result: the app's
``_display`` hook checks, at each paint, whether the screen now holds what the
key asked for, so worker, message handler and compositor are all inside it.

* launch: ``CareApp(settings)`` (it opens the databases, checks the schema,
  resumes the stored session) to the first frame with the worklist filled;
  ``--repeat`` launches in this process (the first one, which still imports
  the screens, is also shown alone) and ``--process-runs`` real
  ``carecli app`` processes in a private tmux server (polled every 20 ms), each
  with the CPU time its process had used when the worklist showed (read with
  psutil right after: a launch is CPU, so this figure moves less than the wall
  time when other load on a shared machine comes and goes);
* search: F3, then realistic queries typed one key at a time, waiting for
  each key's results: once as typed (each key searches at once), once with
  Enter after every key (``Input.Submitted`` searches at once: the round trip);
  a warm-up pass runs first, so both passes see a warm cache;
* page-down: ``--pages`` times PageDown on the last row of the results
  (keyset paging by name);
* member detail: Enter on ``--opens`` results until the member's file is
  shown (an audited read: each open writes an audit ``read`` row), Esc back;
* memory: resident set of this process after launch, while paging, after
  each search pass and after the opens, and of the real ``carecli app``
  process after launch and while paging; the full (generation 2) garbage
  collections during the tour and how long each took (they make the p95s);
  and the widgets that are off every screen but still alive at the end.

A key that leaves the search text unchanged (the space between two words) is
typed but not timed: nothing is searched. ``--explain`` prints EXPLAIN ANALYZE
of the worklist's statements (their execution times are always shown).
Nothing is written but the session, the audit rows the app itself writes, and
session touches. Prints timings, counts, search terms and plans; never member
values.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib
import os
import pstats
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from sqlalchemy import event, select, text

# Runnable as a plain script from a checkout: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Before Textual, as in the app: carecli.screens sets the frame rate Textual reads when imported.
importlib.import_module("carecli.screens")

from textual import events  # noqa: E402
from textual.dom import DOMNode  # noqa: E402
from textual.keys import _character_to_key  # noqa: E402
from textual.screen import Screen  # noqa: E402
from textual.widgets import Input  # noqa: E402

from benchmarks.bench_pairs import libpq_url, prepare_pair  # noqa: E402
from benchmarks.table import machine_speed  # noqa: E402
from carecli.config import Settings, load_settings  # noqa: E402
from carecli.data.actor import Actor  # noqa: E402
from carecli.data.databases import Databases, open_databases  # noqa: E402
from carecli.data.models.identity import Role as RoleTable  # noqa: E402
from carecli.data.models.identity import User as UserTable  # noqa: E402
from carecli.data.repositories.identity import IdentityUnitOfWork  # noqa: E402
from carecli.screens import app as app_module  # noqa: E402
from carecli.screens.app import CareApp  # noqa: E402
from carecli.screens.member import MemberDetailScreen  # noqa: E402
from carecli.screens.members import MemberBrowserScreen, ResultsTable  # noqa: E402
from carecli.screens.worklist import SECTIONS, WorklistScreen  # noqa: E402
from carecli.services.auth.credentials import CredentialStore, session_scope  # noqa: E402
from carecli.services.auth.current import role_of  # noqa: E402
from carecli.services.auth.sessions import start_session  # noqa: E402
from carecli.services.desk import Desk  # noqa: E402

SIZE = (120, 40)
THEME = "textual-dark"
#: what a specialist types, a key at a time: last names, first + last, e-mail, phone digits, a rare name
QUERIES = ("smith", "hawk", "sara wri", "mar smi", "deborah.dan", "555 416 02", "quenn", "o'bri")
#: the worklist's statements, in the order WorklistRepository.build runs them
WORKLIST_STATEMENTS = ("specialist of the user", "calls today", "overdue follow-ups", "upcoming follow-ups",
                       "urgent flags", "members of my plans", "my plan codes")
#: tmux polls the pane this often
PANE_POLL_SECONDS = 0.02


# --------------------------------------------------------------------------
# The databases and the signed-in specialist
# --------------------------------------------------------------------------


def prepare(admin_url: str, identity_db: str, platform_db: str, members: int) -> dict[str, str]:
    """Create (or reuse), migrate and seed the pair; return their SQLAlchemy URLs."""
    urls, seeded = prepare_pair(admin_url, {"identity": identity_db, "platform": platform_db}, members)
    if seeded:
        with psycopg.connect(libpq_url(urls["platform"]), autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
    return urls


def busiest_specialist(databases: Databases) -> Any:
    """The active specialist user whose specialist record has the most calls today (a full worklist)."""
    with databases.platform.connect() as conn:
        candidates = [row[0] for row in conn.execute(text(
            "SELECT s.user_id FROM specialists s JOIN call_records c ON c.specialist_id = s.id "
            "WHERE s.deleted_at IS NULL AND c.deleted_at IS NULL AND s.user_id IS NOT NULL "
            "AND c.scheduled_at >= current_date AND c.scheduled_at < current_date + 1 "
            "GROUP BY s.user_id ORDER BY count(*) DESC, s.user_id LIMIT 50"))]
    users, roles = UserTable.__table__, RoleTable.__table__
    with databases.identity.connect() as conn:
        rows = {row.id: row for row in conn.execute(
            select(users).join(roles, roles.c.id == users.c.role_id)
            .where(roles.c.name == "specialist", users.c.is_active.is_not(False), users.c.deleted_at.is_(None),
                   users.c.id.in_(candidates)))}
    for user_id in candidates:
        if user_id in rows:
            return rows[user_id]
    raise SystemExit("no active specialist user with calls today: seed the databases again")


def sign_in(settings: Settings, databases: Databases, row: Any, store: CredentialStore) -> None:
    """A real session for the user in ``row``, kept in ``store`` (as ``carecli login`` leaves it)."""
    with IdentityUnitOfWork(databases.identity, databases.platform, Actor.system("tui")) as uow:
        user = uow.users.to_record(row)
        role_name, permissions = role_of(uow, user)
    actor = Actor.create(user.id, permissions, channel="tui", role=role_name)
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        token, _session = start_session(uow, user, settings)
        uow.commit()
    store.save(token)


# --------------------------------------------------------------------------
# Driving the app
# --------------------------------------------------------------------------


class BenchApp(CareApp):
    """The app, noting when it first paints a frame in which ``probe()`` holds."""

    # Textual finds a relative CSS_PATH next to the subclass: point at the app's own.
    CSS_PATH = str(Path(sys.modules[CareApp.__module__].__file__ or "").with_name(CareApp.CSS_PATH))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probe: Callable[[], Any] | None = None
        self.probe_hit: float | None = None

    def _display(self, screen: Any, renderable: Any) -> None:
        if self.probe is not None and renderable is not None and not self._batch_count:
            try:
                shown = self.probe()
            except Exception:  # a screen half built: not shown yet
                shown = False
            if shown:
                self.probe_hit = time.perf_counter()
                self.probe = None
        super()._display(screen, renderable)


def key(name: str) -> events.Key:
    """The key event a terminal would send for ``name`` (one character, or a key name)."""
    if len(name) == 1:
        return events.Key(name if name.isalnum() else _character_to_key(name), name)
    return events.Key(name, {"enter": "\r", "escape": "\x1b"}.get(name))


def send(app: CareApp, *names: str) -> None:
    for name in names:
        event = key(name)
        event.set_sender(app)
        app.post_message(event)


async def until(condition: Callable[[], Any], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.002)


#: --profile: the phase whose timed actions run under this profiler (the app's thread only: workers' database
#: time is not in it)
PROFILER: tuple[str, cProfile.Profile] | None = None


async def timed(app: BenchApp, act: Callable[[], Any], probe: Callable[[], Any], timeout: float = 60.0,
                what: str = "", phase: str = "") -> float:
    """Milliseconds from ``act()`` to the first painted frame in which ``probe()`` holds."""
    app.probe_hit = None
    app.probe = probe
    profiler = PROFILER[1] if PROFILER is not None and PROFILER[0] == phase else None
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    act()
    try:
        await until(lambda: app.probe_hit is not None, timeout, what)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc} (on {type(app.screen).__name__}, focus on {type(app.focused).__name__})") from None
    finally:
        if profiler is not None:
            profiler.disable()
    assert app.probe_hit is not None
    return (app.probe_hit - started) * 1000


def rss_mb(pid: int | None = None) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


@contextmanager
def full_collections(pauses: list[float]) -> Iterator[None]:
    """Note how long each full (generation 2) garbage collection takes meanwhile (not the app's idle-time ones)."""
    started: list[float] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2 or app_module.collecting_while_idle:
            return  # the app's own full collections once the keyboard is still are no pause anyone waits on
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            pauses.append((time.perf_counter() - started[0]) * 1000)

    gc.callbacks.append(note)
    try:
        yield
    finally:
        gc.callbacks.remove(note)


def worklist_shown(app: CareApp) -> bool:
    screen = app.screen
    return isinstance(screen, WorklistScreen) and len(screen.items) == len(SECTIONS)


@dataclass
class Results:
    launch_first: float = 0.0
    launches: list[float] = field(default_factory=list)
    worklist_sizes: dict[str, int] = field(default_factory=dict)
    browser_first_page: float = 0.0
    typed: list[float] = field(default_factory=list)
    submitted: list[float] = field(default_factory=list)
    #: (ms, what was typed) of every search sample, to name the slow ones
    labelled: list[tuple[float, str, str]] = field(default_factory=list)
    pages: list[float] = field(default_factory=list)
    opens: list[float] = field(default_factory=list)
    opens_without_spare: list[float] = field(default_factory=list)
    spares_taken: int = 0
    rss: dict[str, float] = field(default_factory=dict)
    #: full (generation 2) garbage collections during the tour, ms each
    gc_pauses: list[float] = field(default_factory=list)
    #: widgets removed from their screen but still alive at the end of the tour, by class
    detached: dict[str, int] = field(default_factory=dict)
    process_launches: list[float] = field(default_factory=list)
    #: CPU time (user + system) the launched process had used when its worklist showed, ms each
    process_cpu: list[float] = field(default_factory=list)
    #: --compare-trees: launches of each source tree, alternated one by one (wall, and CPU as above)
    tree_launches: dict[str, list[float]] = field(default_factory=dict)
    tree_cpu: dict[str, list[float]] = field(default_factory=dict)
    process_rss: dict[str, float] = field(default_factory=dict)


async def launch(settings: Settings, store: CredentialStore, results: Results, *, browse: bool,
                 args: argparse.Namespace) -> None:
    """One launch to the worklist; with ``browse`` the whole tour (paging, search, opening members)."""
    started = time.perf_counter()
    app = BenchApp(settings, store=store)
    app.probe = lambda: worklist_shown(app)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(lambda: app.probe_hit is not None, 120, "the worklist")
            assert app.probe_hit is not None
            elapsed = (app.probe_hit - started) * 1000
            if not browse:
                results.launches.append(elapsed)
                return
            results.launch_first = elapsed
            worklist = app.screen
            assert isinstance(worklist, WorklistScreen)
            results.worklist_sizes = {tab: len(items) for tab, items in worklist.items.items()}
            await pilot.pause()
            results.rss["after launch (worklist shown)"] = rss_mb()
            with full_collections(results.gc_pauses):
                await tour(app, results, args)
            gc.collect()
            results.detached = dict(Counter(type(node).__name__ for node in gc.get_objects()
                                            if isinstance(node, DOMNode) and not node.is_attached
                                            and node.app is app and not isinstance(node, Screen)))
    finally:
        if app.databases is not None:
            app.databases.dispose()


async def tour(app: BenchApp, results: Results, args: argparse.Namespace) -> None:
    def browser() -> MemberBrowserScreen:
        screen = app.screen
        assert isinstance(screen, MemberBrowserScreen), type(screen).__name__
        return screen

    def first_page_shown() -> bool:
        screen = app.screen
        return isinstance(screen, MemberBrowserScreen) and screen.request > 0 and len(screen.rows) > 0

    results.browser_first_page = await timed(app, lambda: send(app, "f3"), first_page_shown, what="F3")
    screen = browser()
    table = screen.query_one(ResultsTable)
    search_box = screen.query_one("#member-search", Input)

    # -- paging (first: the memory figures are of browsing, not of the searches) --
    table.focus()
    await until(lambda: table.has_focus)
    results.rss["after 0 pages"] = rss_mb()
    for page in range(1, args.pages + 1):
        table.move_cursor(row=table.row_count - 1)
        before = screen.rows
        results.pages.append(await timed(
            app, lambda: send(app, "pagedown"),
            lambda: screen.page_number == page and screen.rows is not before,
            what=f"page {page + 1}", phase="pages"))
        if page in (10, args.pages // 2, args.pages):
            results.rss[f"after {page} pages"] = rss_mb()

    # -- searching --
    async def clear() -> None:
        if search_box.value:
            request, rows = screen.request, screen.rows
            await timed(app, lambda: setattr(search_box, "value", ""),
                        lambda: screen.query_state.text == "" and screen.request > request and screen.rows is not rows,
                        what="the cleared search")

    async def type_query(query: str, submit: bool, warm_up: bool = False) -> list[float]:
        await clear()
        samples = []
        for length in range(1, len(query) + 1):
            if not search_box.has_focus:  # Enter moved it to the results
                screen.action_focus_search()
                send(app, "end")  # focusing selects the text: the next key would replace it
                await until(lambda: search_box.has_focus and search_box.selection.is_empty
                            and search_box.cursor_position == len(search_box.value))
                await asyncio.sleep(0.02)
            typed, request, rows = query[:length], screen.request, screen.rows
            keys = (query[length - 1], "enter") if submit else (query[length - 1],)
            if typed.strip() == query[:length - 1].strip():
                # A space between words: the search text is unchanged (Enter does not search again).
                send(app, *keys)
                await asyncio.sleep(0.05)
                await until(lambda: all(w.is_finished for w in app.workers if w.group == "member-page"))
                if submit:
                    await until(lambda: table.has_focus, what="the focus on the results")
                continue
            samples.append(await timed(
                app, lambda: send(app, *keys),
                lambda: (
                    screen.query_state.text == typed.strip() and screen.request > request and screen.rows is not rows),
                what=f"results of {len(typed)} typed keys", phase="" if warm_up else ("enter" if submit else "typed")))
            results.labelled.append((samples[-1], "enter" if submit else "typed", typed))
            if submit:  # Enter moves the focus to the results: let that happen before the next key
                await until(lambda: table.has_focus, what="the focus on the results")
        return samples

    for query in QUERIES:  # warm-up: the server's cache and the app's code paths
        await type_query(query, submit=True, warm_up=True)
    results.labelled.clear()
    results.rss["after the warm-up searches"] = rss_mb()
    for query in QUERIES:
        results.typed.extend(await type_query(query, submit=False))
    results.rss["after the typed searches"] = rss_mb()
    for query in QUERIES:
        results.submitted.extend(await type_query(query, submit=True))
    results.rss["after the submitted searches"] = rss_mb()

    # -- opening members from the results --
    await clear()
    table.focus()
    for index in range(min(args.opens, table.row_count)):
        # --spare both: every other open without the spare member screen (composed while the user reads)
        spare = args.spare == "on" or (args.spare == "both" and index % 2 == 1)
        app.spare_member_screens = spare
        if not spare:
            app.drop_spare_member()
        elif index == 0:
            app.prepare_spare_member()
        await until(lambda: app.screen is screen)
        table.focus()
        table.move_cursor(row=index)
        await until(lambda: table.has_focus and table.cursor_row == index)
        await asyncio.sleep(0.05)  # the moved cursor painted: a person sees it before pressing Enter
        member_id = screen.rows[index]
        took = await timed(
            app, lambda: send(app, "enter"),
            lambda: (isinstance(app.screen, MemberDetailScreen) and app.screen.file is not None
                                         and app.screen.file.member.id == member_id),
            what="the member's file", phase="opens")
        (results.opens if spare or args.spare == "off" else results.opens_without_spare).append(took)
        # the next open's variant decides whether a spare is made while this file is read
        app.spare_member_screens = args.spare == "on" or (args.spare == "both" and index % 2 == 0)
        await asyncio.sleep(args.read_seconds)  # a person reads the file before going back
        send(app, "escape")
    await until(lambda: app.screen is screen)
    results.spares_taken = app.spare_members_taken
    results.rss[f"after opening {len(results.opens)} members"] = rss_mb()


async def run_in_process(settings: Settings, store: CredentialStore, args: argparse.Namespace) -> Results:
    results = Results()
    await launch(settings, store, results, browse=True, args=args)
    gc.collect()  # the toured app's garbage, collected now rather than during the next launch
    for _ in range(args.repeat):
        await launch(settings, store, results, browse=False, args=args)
    return results


# --------------------------------------------------------------------------
# A real process in tmux
# --------------------------------------------------------------------------


class Pane:
    """``carecli app`` in a private tmux server (its own socket), read with capture-pane."""

    def __init__(self, env: dict[str, str], run: int) -> None:
        self.socket = f"carecli-tui-bench-{os.getpid()}-{run}"
        self.env = env

    def tmux(self, *argv: str) -> str:
        return subprocess.run(["tmux", "-u", "-L", self.socket, "-f", "/dev/null", *argv], check=True,
                              capture_output=True, text=True, env={**os.environ, "LANG": "C.UTF-8"}).stdout

    def start(self, py_spy: str | None = None) -> None:
        spy = ""
        if py_spy:  # py-spy runs the app itself (no attach race): every sample from the first import on
            spy_format = os.environ.get("TUI_BENCH_SPY_FORMAT", "raw")
            spy = (shlex.quote(str(Path(sys.executable).with_name("py-spy"))) +
                   f" record --format {spy_format} --duration 4 --rate 1000 --threads --idle --nonblocking"
                   f" -o {shlex.quote(py_spy)} -- ")
        command = "exec env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items()) + " " + spy + \
            shlex.quote(str(Path(sys.executable).with_name("carecli"))) + " app"
        self.tmux("new-session", "-d", "-x", str(SIZE[0]), "-y", str(SIZE[1]), command)

    def pid(self) -> int:
        return int(self.tmux("display-message", "-p", "#{pane_pid}").strip())

    def cpu_ms(self) -> float:
        """The CPU time (user + system) the pane's processes have used so far: what a launch costs whatever the
        machine's other load does to its wall time (a launch is CPU under one interpreter lock, not waiting).

        The pane's processes are those whose standard input is its terminal: the launch itself and, through
        the resident launcher, the app it forked (whose CPU counts from the fork)."""
        tty = self.tmux("display-message", "-p", "#{pane_tty}").strip()
        total = 0.0
        for process in psutil.process_iter():
            try:
                if os.readlink(f"/proc/{process.pid}/fd/0") != tty:
                    continue
                times = process.cpu_times()
            except (OSError, psutil.Error):
                continue
            total += times.user + times.system
        return total * 1000

    def wait_for(self, needle: str, timeout: float = 120.0) -> float:
        deadline = time.perf_counter() + timeout
        while True:
            if needle in self.tmux("capture-pane", "-p"):
                return time.perf_counter()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"tmux: {needle!r} did not appear")
            time.sleep(PANE_POLL_SECONDS)

    def stop(self) -> None:
        try:
            path = self.tmux("display-message", "-p", "#{socket_path}").strip()
        except subprocess.CalledProcessError:  # no server (it did not start)
            return
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)
        Path(path).unlink(missing_ok=True)  # the server leaves its socket file behind


def run_processes(env: dict[str, str], runs: int, pages: int, results: Results, py_spy: str | None = None) -> None:
    """Time ``runs`` process launches; in the first, also page ``pages`` times and read the RSS.

    With ``py_spy`` the first launch runs under ``py-spy record`` (its figure is left out of the table)."""
    for run in range(runs):
        pane = Pane(env, run)
        started = time.perf_counter()
        try:
            pane.start(py_spy if run == 0 else None)
            # The worklist's tab titles get their counts once it is loaded: "Today (12)".
            shown = pane.wait_for("Today (")
            if py_spy and run == 0:
                time.sleep(max(0.0, started + 6.0 - time.perf_counter()))  # py-spy writes after its 4 s
            else:
                results.process_launches.append((shown - started) * 1000)
                results.process_cpu.append(pane.cpu_ms())
            if run or not pages:
                continue
            pid = pane.pid()
            time.sleep(0.5)
            results.process_rss["after launch (worklist shown)"] = rss_mb(pid)
            pane.tmux("send-keys", "F3")
            pane.wait_for("1–50 of")
            for page in range(1, pages + 1):
                pane.tmux("send-keys", "C-n")  # members.next_page
                pane.wait_for(f"{page * 50 + 1:,}–{page * 50 + 50:,} of")
                if page in (10, pages // 2, pages):
                    results.process_rss[f"after {page} pages"] = rss_mb(pid)
        finally:
            if py_spy and run == 0 and not Path(py_spy).exists():
                print("py-spy wrote nothing; its pane:\n" + pane.tmux("capture-pane", "-p").strip(), file=sys.stderr)
            pane.stop()


def compare_trees(env: dict[str, str], trees: list[str], runs: int, results: Results) -> None:
    """``runs`` launches of ``carecli app`` from each source tree (its PYTHONPATH), alternated one by one
    (ABBA: the order flips every round), so a machine that slows down or speeds up mid-run weighs on
    both alike."""
    compare_launches({f"tree {tree}": {**env, "PYTHONPATH": tree} for tree in trees}, runs, results)


def compare_launches(envs: dict[str, dict[str, str]], runs: int, results: Results) -> None:
    """``runs`` launches in each environment (label -> env), alternated one by one (ABBA)."""
    labels = list(envs)
    for label in labels:
        results.tree_launches[label] = []
        results.tree_cpu[label] = []
    for run in range(runs):
        for label in (labels if run % 2 == 0 else labels[::-1]):
            pane = Pane(envs[label], run)
            started = time.perf_counter()
            try:
                pane.start()
                results.tree_launches[label].append((pane.wait_for("Today (") - started) * 1000)
                results.tree_cpu[label].append(pane.cpu_ms())
            finally:
                pane.stop()


@contextmanager
def resident_launcher(env: dict[str, str]) -> Iterator[None]:
    """A resident launcher for ``env``, ready (``carecli launcher start``) and stopped afterwards."""
    carecli = str(Path(sys.executable).with_name("carecli"))
    launcher_env = {**os.environ, **env, "CARECLI_LAUNCHER": "on"}
    subprocess.run([carecli, "launcher", "start"], env=launcher_env, check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([carecli, "launcher", "stop"], env=launcher_env, capture_output=True)


# --------------------------------------------------------------------------
# The worklist's statements
# --------------------------------------------------------------------------


def worklist_statements(desk: Desk, explain: bool) -> list[tuple[str, float]]:
    """Run the worklist once, then EXPLAIN ANALYZE each of its statements; (label, execution ms)."""
    captured: list[tuple[str, Any]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            captured.append((statement, parameters))

    platform = desk.databases.platform
    event.listen(platform, "before_cursor_execute", capture)
    try:
        desk.worklist()
    finally:
        event.remove(platform, "before_cursor_execute", capture)
    labels = WORKLIST_STATEMENTS if len(captured) == len(WORKLIST_STATEMENTS) else \
        tuple(f"statement {i + 1}" for i in range(len(captured)))
    timings = []
    with platform.connect() as conn:
        for label, (statement, parameters) in zip(labels, captured):
            explained = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, parameters)
            plan = explained.scalars().all()
            executed = next((float(line.split(":")[1].split()[0]) for line in plan
                             if line.startswith("Execution Time")), float("nan"))
            timings.append((label, executed))
            if explain:
                print(f"\n## worklist: {label}\n" + "\n".join(plan))
        conn.rollback()
    return timings


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _percentiles(samples: list[float]) -> tuple[float, float]:
    if len(samples) == 1:
        return samples[0], samples[0]
    cuts = statistics.quantiles(samples, n=20, method="inclusive")
    return statistics.median(samples), cuts[18]


def report(results: Results, header: str, worklist: list[tuple[str, float]]) -> None:
    rows: list[tuple[str, list[float]]] = [
        ("launch → worklist shown, first in process", [results.launch_first]),
        ("launch → worklist shown, in process", results.launches),
        ("launch → worklist shown, `carecli app` in tmux", results.process_launches),
        ("  its CPU time when the worklist showed", results.process_cpu),
        *(row for label, samples in results.tree_launches.items()
          for row in ((f"launch in tmux, {label}", samples),
                      ("  its CPU time when the worklist showed", results.tree_cpu[label]))),
        ("F3 → member browser, first page", [results.browser_first_page]),
        ("keystroke → results", results.typed),
        ("keystroke + Enter → results (round trip)", results.submitted),
        ("PageDown on last row → next page", results.pages),
        ("Enter → member detail shown", results.opens),
        ("Enter → member detail shown, no spare screen", results.opens_without_spare),
        ("full garbage collection (gen 2), during the tour", results.gc_pauses),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"\n{header}; {results.spares_taken} opens found the spare member screen ready")
    print(f"| {'metric':<{width}} | {'p50 ms':>8} | {'p95 ms':>8} | {'n':>4} |")
    print(f"|{'-' * (width + 2)}|{'-' * 10}|{'-' * 10}|{'-' * 6}|")
    for label, samples in rows:
        if not samples:
            continue
        p50, p95 = _percentiles(samples)
        print(f"| {label:<{width}} | {p50:8.1f} | {p95:8.1f} | {len(samples):>4} |")
    if results.gc_pauses:  # the target is on every pause, not the p95
        print(f"longest full garbage collection during the tour: {max(results.gc_pauses):.1f} ms")

    print("\nresident memory")
    print(f"| {'process, moment':<66} | {'RSS MiB':>8} |")
    print(f"|{'-' * 68}|{'-' * 10}|")
    for where, values in (("this process (in-process app)", results.rss),
                          ("`carecli app` in tmux", results.process_rss)):
        for moment, value in values.items():
            print(f"| {where + ', ' + moment:<66.66} | {value:8.1f} |")
    for where, values in (("in process", results.rss), ("carecli app", results.process_rss)):
        # Growth over the later pages: the first ones still warm caches up.
        paged = sorted((int(k.split()[1]), v) for k, v in values.items()
                       if k.endswith(" pages") and k != "after 0 pages")
        if len(paged) >= 2:
            (first, low), (last, high) = paged[-2], paged[-1]
            print(f"{where}: {high - low:+.1f} MiB over pages {first}→{last} "
                  f"({(high - low) * 1024 / (last - first):+.1f} KiB a page)")
    if results.detached:
        print("widgets removed from their screens but still alive after the tour (gc.collect()ed): " +
              ", ".join(f"{name} {count}" for name, count in sorted(results.detached.items(), key=lambda i: -i[1])))

    slowest = sorted(results.labelled, reverse=True)[:8]
    if slowest:
        print("\nslowest search keystrokes: " + ", ".join(f"{text!r} {how} {ms:.0f} ms" for ms, how, text in slowest))

    if worklist:
        print("\nworklist statements (EXPLAIN ANALYZE execution time, warm)")
        lwidth = max(len(label) for label, _ in worklist)
        for label, ms in worklist:
            print(f"  {label:<{lwidth}}  {ms:8.2f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default=os.environ.get("CARECLI_TEST_PG",
                                                              "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="libpq URL of a role that may create databases (default: $CARECLI_TEST_PG)")
    parser.add_argument("--identity-db", default="carecli_bench_search_identity", help="identity database (kept)")
    parser.add_argument("--platform-db", default="carecli_bench_search_platform", help="platform database (kept)")
    parser.add_argument("--members", type=int, default=1_000_000, help="members to seed into an empty pair")
    parser.add_argument("--repeat", type=int, default=10, help="in-process launches after the first")
    parser.add_argument("--process-runs", type=int, default=3,
                        help="launches of a real `carecli app` in tmux (0: none; needs tmux)")
    parser.add_argument("--pages", type=int, default=100, help="pages to browse forward")
    parser.add_argument("--opens", type=int, default=30, help="members to open")
    parser.add_argument("--read-seconds", type=float, default=1.0,
                        help="how long the member's file is read before Esc (the spare screen is made meanwhile)")
    parser.add_argument("--spare", choices=("on", "off", "both"), default="on",
                        help="the spare member screen: always, never, or every other open (compared in one run)")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of the worklist's statements")
    parser.add_argument("--profile", choices=("typed", "enter", "pages", "opens"),
                        help="cProfile the app's thread during this phase's timed actions; print its top entries")
    parser.add_argument("--profile-top", type=int, default=25, help="entries of the --profile listing")
    parser.add_argument("--launch-only", action="store_true",
                        help="only the `carecli app` launches in tmux (no in-process tour, no paging)")
    parser.add_argument("--compare-trees", nargs=2, metavar="DIR",
                        help="with --launch-only: alternate --process-runs launches from each of two source trees "
                             "(a checkout or a copy of carecli/ before and after a change; its PYTHONPATH)")
    parser.add_argument("--launcher", choices=("off", "on", "both"), default="off",
                        help="the tmux launches without the resident launcher (an ordinary start, the first launch "
                             "of the day), through a ready one, or both alternated one by one")
    parser.add_argument("--py-spy", metavar="PATH",
                        help="record the first tmux launch with py-spy (raw stacks, 1 kHz, every thread) into PATH")
    args = parser.parse_args(argv)
    if args.compare_trees and not args.launch_only:
        parser.error("--compare-trees times launches only: add --launch-only")
    if args.compare_trees and args.launcher != "off":
        parser.error("--compare-trees compares ordinary launches: leave --launcher off")
    machine = machine_speed()  # before the run loads the machine
    global PROFILER
    if args.profile:
        PROFILER = (args.profile, cProfile.Profile())

    urls = prepare(args.admin_url, args.identity_db, args.platform_db, args.members)
    state = tempfile.mkdtemp(prefix="carecli-tui-bench-")
    try:
        # The session file lives here (platformdirs reads XDG_STATE_HOME on every call).
        os.environ["XDG_STATE_HOME"] = str(Path(state) / "state")
        config = Path(state) / "config.toml"
        config.write_text("")
        env = {"CARECLI_IDENTITY_URL": urls["identity"], "CARECLI_PLATFORM_URL": urls["platform"],
               "CARECLI_CONFIG": str(config), "CARECLI_THEME": THEME}
        settings = load_settings(env)
        store = CredentialStore(scope=session_scope(settings), use_keyring=False)
        databases = open_databases(settings)
        try:
            with databases.platform.connect() as conn:
                live = conn.execute(text("SELECT count(*) FROM members WHERE deleted_at IS NULL")).scalar_one()
                version = conn.execute(text("SHOW server_version")).scalar_one()
            user = busiest_specialist(databases)
            sign_in(settings, databases, user, store)
            worklist = worklist_statements(Desk.resume(settings, databases, store=store), args.explain)
        finally:
            databases.dispose()

        if not args.launch_only:
            print(f"launching the app {1 + args.repeat} times in process, touring it once...", file=sys.stderr,
                  flush=True)
        results = Results() if args.launch_only else asyncio.run(run_in_process(settings, store, args))
        if args.process_runs and shutil.which("tmux"):
            print(f"launching `carecli app` {args.process_runs} times in tmux...", file=sys.stderr, flush=True)
            # The child finds the same session file; no OS keyring may shadow it.
            try:
                child_env = {**env, "XDG_STATE_HOME": os.environ["XDG_STATE_HOME"],
                             "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring", "LANG": "C.UTF-8"}
                off = {**child_env, "CARECLI_LAUNCHER": "off"}
                if args.compare_trees:
                    compare_trees(off, [str(Path(tree).resolve()) for tree in args.compare_trees],
                                  args.process_runs, results)
                elif args.launcher == "both":
                    with resident_launcher(child_env):
                        compare_launches({"without the launcher": off, "through the resident launcher": child_env},
                                         args.process_runs, results)
                elif args.launcher == "on":
                    with resident_launcher(child_env):
                        run_processes(child_env, args.process_runs, 0 if args.launch_only else args.pages, results,
                                      py_spy=args.py_spy)
                else:
                    run_processes(off, args.process_runs, 0 if args.launch_only else args.pages, results,
                                  py_spy=args.py_spy)
            except (subprocess.CalledProcessError, TimeoutError) as exc:
                detail = getattr(exc, "stderr", None) or ""
                print(f"tmux runs stopped: {exc} {detail}".strip(), file=sys.stderr)
    finally:
        shutil.rmtree(state, ignore_errors=True)

    sizes = ", ".join(f"{tab} {count}" for tab, count in results.worklist_sizes.items())
    header = (f"machine before the run: {machine}\n"
              f"PostgreSQL {version}, {live:,} live members; Textual app headless at {SIZE[0]}x{SIZE[1]}, "
              f"latency = key to first painted frame showing the result\n"
              f"specialist's worklist rows: {sizes}; queries typed: {', '.join(repr(q) for q in QUERIES)} "
              f"(after a warm-up pass); {len(results.pages)} pages by name; {len(results.opens)} members opened")
    report(results, header, worklist)
    if PROFILER is not None:
        for order in ("tottime", "cumulative"):
            print(f"\n--profile {PROFILER[0]}: top {args.profile_top} by {order}")
            pstats.Stats(PROFILER[1], stream=sys.stdout).sort_stats(order).print_stats(args.profile_top)
    return 0


if __name__ == "__main__":
    sys.exit(main())

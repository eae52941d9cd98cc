"""The app paints first and opens the databases meanwhile: "Starting the database…" while the embedded server
starts, "Connecting to the databases…" when it only has to be joined (or the servers are configured)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from carecli.config import load_settings
from carecli.data.embedded import server_running
from carecli.errors import DatabaseUnavailable
from carecli.screens.app import START_SCREEN_AFTER_SECONDS, CareApp, StartScreen
from carecli.services.opening import CONNECTING_TEXT, STARTING_TEXT, Opening
from tests.tui.conftest import SIZE
from tests.tui.helpers import screen_text, wait_for


def _embedded_settings(tmp_path: Path):  # noqa: ANN202
    config = tmp_path / "config.toml"
    config.write_text("")
    return load_settings({"CARECLI_CONFIG": str(config), "CARECLI_DATA_DIR": str(tmp_path / "data")})


class HeldOpening(Opening):
    """An opening that takes as long as the test says, then fails (no server is started)."""

    release = threading.Event()

    def _open(self) -> None:
        self.release.wait(30)
        self.failure = DatabaseUnavailable("stopped by the test")


async def test_the_app_says_the_database_is_starting_before_the_server_is_up(tmp_path) -> None:
    settings = _embedded_settings(tmp_path)
    HeldOpening.release = threading.Event()
    opening = HeldOpening(settings)
    assert opening.starting_server and opening.text == STARTING_TEXT
    opening.start()  # as `carecli app` does, before the app is even built
    app = CareApp(settings, opening=opening)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen) and STARTING_TEXT in screen_text(app.screen),
                       what="the start screen")
        assert not opening.done  # painted while the server is still starting
        HeldOpening.release.set()
        await wait_for(pilot, lambda: "cannot start" in screen_text(app.screen), what="the failure")
        assert "stopped by the test" in screen_text(app.screen)


def test_a_running_embedded_server_is_joined_not_started(tmp_path) -> None:
    settings = _embedded_settings(tmp_path)
    assert not server_running(settings.data_dir)
    pgdata = settings.data_dir / "postgres"
    pgdata.mkdir(parents=True)
    (pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{pgdata}\n")
    assert server_running(settings.data_dir)
    assert Opening(settings).text == CONNECTING_TEXT
    (pgdata / "postmaster.pid").write_text("not a pid\n")
    assert not server_running(settings.data_dir)


def test_configured_servers_are_connected_to(tui) -> None:
    assert Opening(tui.settings).text == CONNECTING_TEXT


def test_the_embedded_server_is_asked_to_start_before_sqlalchemy_is_loaded(tmp_path) -> None:
    """The server's start mostly waits on pg_ctl: asked first, it overlaps the imports of everything else."""
    config = tmp_path / "config.toml"
    config.write_text("")
    probe = (
        "import json, sys\n"
        "from carecli.config import load_settings\n"
        "from carecli.data import embedded\n"
        "seen = []\n"
        "def start(self):\n"
        "    seen.append(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'psycopg', 'textual'}))\n"
        "    raise RuntimeError('no server in this test')\n"
        "embedded.EmbeddedServer.start = start\n"
        "from carecli.services.opening import Opening\n"
        "opening = Opening(load_settings()).start()\n"
        "assert opening.wait(60)\n"
        "print(json.dumps([seen, type(opening.failure).__name__]))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("CARECLI_")}
    env.update(CARECLI_CONFIG=str(config), CARECLI_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env,
                          timeout=120)
    seen, failure = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == [[]]
    assert failure == "RuntimeError"


def test_carecli_app_says_the_database_is_starting_before_it_loads_the_app(tmp_path, monkeypatch, capsys) -> None:
    """`carecli app` starts the opening, prints what it waits for, and only then builds the app."""
    import carecli.screens.app as app_module
    from carecli.cli import app_cmd
    from carecli.services import opening as opening_module

    config = tmp_path / "config.toml"
    config.write_text("")
    monkeypatch.setenv("CARECLI_CONFIG", str(config))
    monkeypatch.setenv("CARECLI_DATA_DIR", str(tmp_path / "data"))
    events: list[str] = []

    def start(self: Opening) -> Opening:
        events.append("opening started")
        return self

    monkeypatch.setattr(opening_module.Opening, "start", start)

    class FakeApp:
        databases = None
        return_code = 0

        def __init__(self, settings, *, opening, **kwargs) -> None:  # noqa: ANN001
            events.append(f"app built, printed so far: {capsys.readouterr().out.strip()}")
            assert opening.starting_server

        def run(self) -> None:
            events.append("app run")

    monkeypatch.setattr(app_module, "CareApp", FakeApp)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert app_cmd.run_app() == 0
    assert events == ["opening started", f"app built, printed so far: {STARTING_TEXT}", "app run"]
    # Once the app has ended, the line is wiped: above the prompt it would still say the database is starting.
    assert capsys.readouterr().out == app_cmd.ERASE_LINE_ABOVE


class SlowOpening(Opening):
    """Joins servers that are up (no embedded start) but answers only when the test releases it."""

    release = threading.Event()

    def _open(self) -> None:
        self.release.wait(30)
        super()._open()


def screen_log(app: CareApp) -> list[str]:
    """The names of the screens ``app`` is asked to show (pushed or switched to), in order."""
    shown: list[str] = []
    push, switch = app.push_screen, app.switch_screen

    def pushed(screen, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        shown.append(type(screen).__name__)
        return push(screen, *args, **kwargs)

    def switched(screen):  # noqa: ANN001, ANN202
        shown.append(type(screen).__name__)
        return switch(screen)

    app.push_screen = pushed  # type: ignore[method-assign]
    app.switch_screen = switched  # type: ignore[method-assign]
    return shown


async def test_a_quick_start_goes_straight_to_the_worklist_without_a_start_screen(tui) -> None:
    tui.sign_in("specialist")
    opening = Opening(tui.settings, store=tui.store).start()
    assert not opening.starting_server
    # Quick by construction: done before the app starts (on a loaded machine the opening alone can outlast
    # START_SCREEN_AFTER_SECONDS, and the start screen is then right to show: the next test's case).
    assert opening.wait(60)
    app = CareApp(tui.settings, store=tui.store, opening=opening)
    shown = screen_log(app)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: type(app.screen).__name__ == "WorklistScreen", what="the worklist")
        await pilot.pause(START_SCREEN_AFTER_SECONDS + 0.1)  # the start screen's timer has run out, and did nothing
        assert shown == ["WorklistScreen"]
        assert len(app.screen_stack) == 2  # Textual's default screen and the worklist
        await pilot.press("f2")  # the app's keys work as after any start
        await wait_for(pilot, lambda: type(app.screen).__name__ == "WorklistScreen" and app.screen.focused,
                       what="focus on the worklist")


async def test_a_slow_connection_shows_the_start_screen_then_the_worklist(tui) -> None:
    tui.sign_in("specialist")
    SlowOpening.release = threading.Event()
    opening = SlowOpening(tui.settings, store=tui.store).start()
    app = CareApp(tui.settings, store=tui.store, opening=opening)
    shown = screen_log(app)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen)
                       and CONNECTING_TEXT in screen_text(app.screen), what="the start screen")
        SlowOpening.release.set()
        await wait_for(pilot, lambda: type(app.screen).__name__ == "WorklistScreen", what="the worklist")
        assert shown == ["StartScreen", "WorklistScreen"]
        assert len(app.screen_stack) == 2  # the worklist took the start screen's place


async def test_a_failure_before_the_start_screen_is_shown_is_still_told(tmp_path) -> None:
    settings = _embedded_settings(tmp_path)
    HeldOpening.release = threading.Event()
    HeldOpening.release.set()  # fails at once
    opening = HeldOpening(settings)
    opening.starting_server = False  # as if joining a running server: no start screen at first
    opening.start()
    assert opening.wait(30)
    app = CareApp(settings, opening=opening)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "cannot start" in screen_text(app.screen), what="the failure")
        assert isinstance(app.screen, StartScreen)
        assert "stopped by the test" in screen_text(app.screen)
        assert "Connecting" not in screen_text(app.screen)


async def test_a_quick_start_on_a_small_terminal_keeps_the_cover_over_the_first_screen(tui) -> None:
    """Signed in or not, the first screen goes under the "too small" cover, which goes once the terminal grows."""
    for signed_in in (True, False):
        if signed_in:
            tui.sign_in("specialist")
        else:
            tui.store.forget()
        opening = Opening(tui.settings, store=tui.store).start()
        app = CareApp(tui.settings, store=tui.store, opening=opening)
        first = "WorklistScreen" if signed_in else "SignInScreen"
        async with app.run_test(size=(70, 20)) as pilot:
            await wait_for(pilot, lambda: [type(s).__name__ for s in app.screen_stack][1:] == [first, "TooSmallScreen"],
                           what=f"{first} under the cover")
            assert "at least 80×24" in screen_text(app.screen)
            await pilot.resize_terminal(100, 30)
            await wait_for(pilot, lambda: type(app.screen).__name__ == first, what=first)
            assert len(app.screen_stack) == 2


def test_the_opening_loads_what_it_needs_first_and_then_lets_the_app_load(tui) -> None:
    """`carecli app` waits for the opening thread's imports (Opening.wait_loaded), then loads Textual while
    the thread waits on the server: the thread never loads Textual, and what it runs is loaded by then."""
    probe = (
        "import json, sys\n"
        "from carecli.config import load_settings\n"
        "from carecli.services.opening import Opening\n"
        "opening = Opening(load_settings()).start()\n"
        "loaded = opening.wait_loaded(60)\n"
        "seen = sorted(m for m in ('sqlalchemy', 'psycopg', 'carecli.data.databases',\n"
        "                          'carecli.services.desk', 'textual') if m in sys.modules)\n"
        "assert opening.wait(60)\n"
        "print(json.dumps([loaded, seen, 'textual' in sys.modules, type(opening.failure).__name__]))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("CARECLI_")}
    env.update(tui.env, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")  # not signed in: a refusal
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded, seen, textual_after, failure = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded is True
    assert seen == ["carecli.data.databases", "carecli.services.desk", "psycopg", "sqlalchemy"]
    assert textual_after is False and failure == "NoneType"


def test_a_signed_in_opening_reads_the_worklist_without_loading_the_cipher(tui) -> None:
    """The launch's work up to the worklist (connections, session, worklist) encrypts and decrypts nothing, so it
    loads neither the key store nor cryptography: they load at the first reveal or edit."""
    tui.sign_in("specialist")
    probe = (
        "import json, sys\n"
        "from carecli.config import load_settings\n"
        "from carecli.services.auth.credentials import CredentialStore\n"
        "from carecli.services.opening import Opening\n"
        f"store = CredentialStore(scope={tui.store.scope!r}, use_keyring=False)\n"
        "opening = Opening(load_settings(), store=store).start()\n"
        "assert opening.wait(60)\n"
        "loaded = sorted(m for m in ('cryptography', 'carecli.data.crypto.keystore', 'carecli.data.crypto.fields')\n"
        "                if m in sys.modules)\n"
        "print(json.dumps([opening.desk is not None, opening.worklist is not None, loaded]))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("CARECLI_")}
    env.update(tui.env)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    signed_in, worklist, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert signed_in and worklist
    assert loaded == []


def test_with_a_server_to_start_the_app_loads_at_once(tmp_path) -> None:
    """The embedded server's start is seconds of waiting: the app does not wait for the thread to load first."""
    settings = _embedded_settings(tmp_path)
    HeldOpening.release = threading.Event()
    opening = HeldOpening(settings)
    assert opening.starting_server
    assert opening.wait_loaded(30) is False  # not started: returns at once
    opening.start()
    assert opening.wait_loaded(30) is False  # started, held: still at once
    HeldOpening.release.set()
    assert opening.wait(30) and opening.wait_loaded(0)

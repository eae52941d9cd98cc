"""The SSH host under load: N concurrent SSH sessions of the real app on this machine.

    .venv/bin/python benchmarks/ssh_bench.py --sessions 50 \\
        --admin-url postgresql://postgres@127.0.0.1:5432/postgres

1. a fresh database pair, migrated and seeded with ``carecli seed`` (``--members``), and one SSH key
   registered for a specialist with ``carecli ssh-keys add`` (run as an admin's API token);
2. ``carecli serve-ssh`` on a free port (the real host, one app process per session, forked from its zygote;
   ``--no-prefork``: each exec'd as a new Python, the way before the zygote);
3. N asyncssh clients, each with a pyte terminal of 100x30, connect (``--connect-concurrency`` at a
   time) and wait until the worklist is on their screen; then every session opens the member browser;
4. memory: resident (RSS), proportional (PSS, shared pages split between processes) and unique (USS,
   pages no other process shares) set of each app process, and of the host and its zygote;
5. keystroke-to-screen: while every session types a letter into its search box every 2-6 s
   (``--think-seconds``; each keystroke also runs a search), ``--samples`` keystrokes, round robin over the
   sessions, timed from the send until the letter is on that client's screen;
6. change propagation: with every session showing the first page of the member browser, a member on
   that page is renamed through the same unit of work the app saves with (in this process: "another
   session"); timed until the new name is on each client's screen, ``--changes`` times.

Prints a table; drops the databases unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncssh
import psutil
import psycopg
import pyte
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import vt  # noqa: E402
from benchmarks.bench_pairs import bench_engine, drop_pair, fresh_pair  # noqa: E402
from benchmarks.table import machine_speed, print_table  # noqa: E402
from carecli.data.actor import Actor  # noqa: E402
from carecli.data.crypto.master import encode_key, generate_master_key  # noqa: E402
from carecli.data.permissions import ALL_PERMISSIONS  # noqa: E402
from carecli.data.unit_of_work import PlatformUnitOfWork  # noqa: E402

COLUMNS, ROWS = 100, 30
PREFIX = "carecli_bench_ssh"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def carecli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "carecli", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"carecli {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


# --------------------------------------------------------------------------
# The databases, the key, the host
# --------------------------------------------------------------------------


def prepare(admin_url: str, members: int, workdir: Path) -> tuple[dict[str, str], dict[str, str], Path]:
    """Fresh pair, seeded; an SSH key for a specialist; returns URLs, the environment and the private key."""
    urls = fresh_pair(admin_url, PREFIX)
    env = dict(os.environ, CARECLI_IDENTITY_URL=urls["identity"], CARECLI_PLATFORM_URL=urls["platform"],
               CARECLI_MASTER_KEY=encode_key(generate_master_key()),
               PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    env.pop("CARECLI_TOKEN", None)
    print(f"seeding {members:,} members...", file=sys.stderr, flush=True)
    carecli(env, "seed", "--members", str(members), "--seed", "1")
    identity = bench_engine(urls["identity"])
    with identity.connect() as conn:
        specialist = conn.execute(text(
            "SELECT u.email FROM users u JOIN roles r ON r.id = u.role_id WHERE r.name = 'specialist' "
            "AND u.is_active AND u.deleted_at IS NULL ORDER BY u.email LIMIT 1")).scalar_one()
        admin_email = conn.execute(text(
            "SELECT u.email FROM users u JOIN roles r ON r.id = u.role_id WHERE r.name = 'admin' "
            "ORDER BY u.email LIMIT 1")).scalar_one()
    identity.dispose()
    admin_env = dict(env, CARECLI_TOKEN=_admin_token(env, admin_email))
    key_path = workdir / "id_ed25519"
    key = asyncssh.generate_private_key("ssh-ed25519", comment="bench")
    key_path.write_bytes(key.export_private_key("openssh"))
    key_path.chmod(0o600)
    carecli(admin_env, "ssh-keys", "add", specialist, "-", stdin=key.export_public_key("openssh").decode())
    return urls, env, key_path


def _admin_token(env: dict[str, str], admin_email: str) -> str:
    """An API token of the seeded administrator (made directly: there is no identity provider here)."""
    from carecli.config import load_settings
    from carecli.data.databases import open_databases
    from carecli.data.repositories.identity import IdentityUnitOfWork
    from carecli.services.auth.current import role_of, user_by_email
    from carecli.services.auth.tokens import create_api_token

    settings = load_settings(env)
    databases = open_databases(settings)
    try:
        system = Actor(user_id=None, permissions=frozenset(ALL_PERMISSIONS), user_agent="bench")
        user = user_by_email(databases, system, admin_email)
        with IdentityUnitOfWork(databases.identity, databases.platform, Actor.system()) as uow:
            role, permissions = role_of(uow, user)
        actor = Actor.create(user.id, permissions, channel="cli", role=role)
        return create_api_token(databases, actor, name="ssh bench", scopes=["users:admin"]).secret
    finally:
        databases.dispose()


def start_host(env: dict[str, str], port: int, workdir: Path, sessions: int, prefork: bool,
               extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    host = subprocess.Popen(
        [sys.executable, "-m", "carecli", "serve-ssh", "--port", str(port), "--host-key", str(workdir / "host_key"),
         "--max-sessions", str(sessions + 5), "--max-per-user", str(sessions + 5),
         "--prefork" if prefork else "--no-prefork", *(extra or [])],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return host
        if host.poll() is not None:
            raise SystemExit(f"serve-ssh ended: {host.stderr.read().decode() if host.stderr else ''}")
        time.sleep(0.2)
    raise SystemExit("serve-ssh did not start listening")


# --------------------------------------------------------------------------
# A client with a screen
# --------------------------------------------------------------------------


class PyteScreen:
    """pyte's screen and stream behind the interface of :class:`benchmarks.vt.Screen`."""

    def __init__(self, columns: int, rows: int) -> None:
        self.screen = pyte.Screen(columns, rows)
        self.feed = pyte.Stream(self.screen).feed

    @property
    def display(self) -> list[str]:
        return self.screen.display

    def row(self, index: int) -> str:
        return self.screen.display[index]


class CheckedScreen:
    """Both screens fed the same stream; fails as soon as their characters differ (``--check-emulator``)."""

    def __init__(self, columns: int, rows: int) -> None:
        self.ours, self.pyte = vt.Screen(columns, rows), PyteScreen(columns, rows)
        self.chunks = 0

    def feed(self, data: str) -> None:
        self.ours.feed(data)
        self.pyte.feed(data)
        self.chunks += 1
        if self.ours.display != self.pyte.display:
            diff = [f"{i}: ours {a!r}\n{i}: pyte {b!r}" for i, (a, b) in enumerate(zip(self.ours.display,
                    self.pyte.display)) if a != b]
            raise AssertionError(f"chunk {self.chunks}: the screens differ\n" + "\n".join(diff[:6])
                                 + f"\nlast chunk: {data[-400:]!r}")

    @property
    def display(self) -> list[str]:
        return self.ours.display

    def row(self, index: int) -> str:
        return self.ours.row(index)


SCREENS: dict[str, type[vt.Screen] | type[PyteScreen] | type[CheckedScreen]] = {
    "vt": vt.Screen, "pyte": PyteScreen, "check": CheckedScreen}
#: which screen clients draw on (``--emulator``)
EMULATOR = "vt"


class Client(asyncssh.SSHClientSession[str]):
    """One SSH session whose output feeds a screen (characters only; ``--emulator pyte``: pyte's);
    ``changed`` fires on every update."""

    def __init__(self) -> None:
        self.screen = SCREENS[EMULATOR](COLUMNS, ROWS)
        self.feed = self.screen.feed
        self.changed = asyncio.Event()
        self.chan: asyncssh.SSHClientChannel[str] | None = None
        self.typed = ""
        self.received = 0  # characters of output
        self.chunks = 0  # data messages (about one per read of the host's pty)

    def connection_made(self, chan: asyncssh.SSHClientChannel[str]) -> None:
        self.chan = chan

    def data_received(self, data: str, datatype: object) -> None:
        self.received += len(data)
        self.chunks += 1
        self.feed(data)
        self.changed.set()

    def text(self) -> str:
        return "\n".join(self.screen.display)

    async def wait_for(self, predicate, timeout: float = 60.0) -> float:  # noqa: ANN001
        """Wait until ``predicate(self)`` holds; the monotonic time it first did."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the screen never showed what was expected:\n" + self.text())
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return time.monotonic()

    def send(self, keys: str) -> None:
        assert self.chan is not None
        self.chan.write(keys)


async def connect(port: int, key_path: Path) -> tuple[asyncssh.SSHClientConnection, Client, float]:
    started = time.monotonic()
    conn = await asyncssh.connect("127.0.0.1", port, username="bench", client_keys=[str(key_path)],
                                  known_hosts=None)
    _chan, client = await conn.create_session(Client, term_type="xterm-256color", term_size=(COLUMNS, ROWS))
    assert isinstance(client, Client)  # what the factory made (create_session is typed as the base class)
    shown = await client.wait_for(lambda c: "Today (" in c.text(), timeout=300)
    return conn, client, shown - started


def input_row(client: Client, typed: str) -> int:
    for index, line in enumerate(client.screen.display):
        if typed in line:
            return index
    raise RuntimeError("the search box was not found")


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


def memory(host: subprocess.Popen[bytes]) -> tuple[psutil.Process, list[psutil.Process], list[psutil.Process]]:
    """The host, its app processes (exec'd ``carecli app``, or forked by the zygote) and its zygote(s)."""
    server = psutil.Process(host.pid)
    children = server.children(recursive=True)
    # (its forks keep its command line: the zygote is the one whose parent is the host)
    zygotes = [child for child in children if child.ppid() == server.pid and "carecli.ssh.zygote" in child.cmdline()]
    apps = [child for child in children if "app" in child.cmdline()
            or any(child.ppid() == zygote.pid for zygote in zygotes)]
    return server, apps, zygotes


def mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    return times.user + times.system


def cpu_snapshot(host: subprocess.Popen[bytes]) -> dict[str, float]:
    """CPU seconds used so far by each group of processes on this machine (and the machine's busy total)."""
    server, apps, zygotes = memory(host)
    groups = {"host (serve-ssh)": _cpu(server), "zygote": sum(_cpu(z) for z in zygotes),
              "app processes (all sessions)": sum(_cpu(a) for a in apps),
              "bench clients (asyncssh + pyte, this process)": _cpu(psutil.Process())}
    # PostgreSQL: its live processes, and what the ones that ended meanwhile used (their parent, the
    # postmaster, collects it when it reaps them: the apps' connections are not pooled, so most of the
    # backends they use end before the phase does). Every database's: others' work on this server too.
    postgres = bench_backends = 0.0
    for process in psutil.process_iter(["name", "cmdline", "ppid"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        if process.info["name"] in ("postgres", "postmaster") or cmdline.startswith("postgres"):
            postgres += _cpu(process)
            if PREFIX in cmdline:
                bench_backends += _cpu(process)
            with contextlib.suppress(psutil.Error):
                if process.parent() is None or process.parent().name() not in ("postgres", "postmaster"):
                    times = process.cpu_times()
                    postgres += times.children_user + times.children_system
    groups["PostgreSQL, every database (its ended backends too)"] = postgres
    groups["  of which live backends of the bench databases"] = bench_backends
    machine = psutil.cpu_times()
    groups["machine busy (all cores)"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
    return groups


async def count_connections(admin_url: str, into: list[tuple[int, int]]) -> None:
    """The server's client connections (to the bench databases, to any), every half second (until cancelled)."""
    def count() -> tuple[int, int]:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FILTER (WHERE datname LIKE %s), count(*) FROM pg_stat_activity "
                               "WHERE backend_type = 'client backend'", (f"{PREFIX}%",)).fetchone()
            return (int(row[0]), int(row[1])) if row else (0, 0)

    while True:
        into.append(await asyncio.to_thread(count))
        await asyncio.sleep(0.5)


def max_connections(admin_url: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SHOW max_connections").fetchone()
        return int(row[0]) if row else 0


def cpu_rows(before: dict[str, float], after: dict[str, float], seconds: float, edits: int,
             label: str, unit: str = "edit") -> list[tuple[str, str]]:
    """Per group: cores used on average over the phase and CPU ms per ``unit`` (by default an edit: a key
    that changes the box; ``edits`` of them in the phase)."""
    rows = []
    ours = 0.0
    for name in before:
        used = after[name] - before[name]
        if name not in ("machine busy (all cores)", "  of which live backends of the bench databases"):
            ours += used
        per_edit = f", {used * 1000 / edits:.1f} ms per {unit}" if edits else ""
        rows.append((f"{label}: {name}", f"{used / seconds:.2f} cores{per_edit}"))
    busy = after["machine busy (all cores)"] - before["machine busy (all cores)"]
    rows.append((f"{label}: everything else on the machine", f"{(busy - ours) / seconds:.2f} cores"))
    return rows


async def run(args: argparse.Namespace, urls: dict[str, str], env: dict[str, str], key_path: Path,
              host: subprocess.Popen[bytes], port: int) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    gate = asyncio.Semaphore(args.connect_concurrency)

    async def one() -> tuple[asyncssh.SSHClientConnection, Client, float]:
        async with gate:
            return await connect(port, key_path)

    before, started = cpu_snapshot(host), time.monotonic()
    sessions = await asyncio.gather(*(one() for _ in range(args.sessions)))
    ramp = time.monotonic() - started
    connecting = cpu_rows(before, cpu_snapshot(host), ramp, args.sessions, "connecting, CPU", "session")
    connect_times = [seconds for _, _, seconds in sessions]
    clients = [client for _, client, _ in sessions]
    rows.append((f"{args.sessions} sessions connected and showing the worklist", f"{ramp:.1f} s"))
    print(f"{args.sessions} sessions up in {ramp:.0f} s", file=sys.stderr, flush=True)
    rows.append(("connect -> worklist on screen, p50 / p95",
                 f"{statistics.median(connect_times):.2f} s / {percentile(connect_times, 0.95):.2f} s"))
    rows.extend(connecting)

    # Everyone opens the member browser; find each search box by typing a marker into it.
    for client in clients:
        client.send("\x1bOR")  # F3
    for client in clients:
        # (the search box's placeholder: "members" alone is also on the worklist's tab of plan members)
        await client.wait_for(lambda c: "Name, e-mail or phone" in c.text())
    await asyncio.sleep(1.0)
    rows_of: dict[int, int] = {}
    for index, client in enumerate(clients):
        client.send("zqx")
        await client.wait_for(lambda c: "zqx" in c.text())
        rows_of[index] = input_row(client, "zqx")
        client.send("\x7f\x7f\x7f")
        await client.wait_for(lambda c, r=rows_of[index]: "zqx" not in c.screen.row(r))

    server, apps, zygotes = memory(host)
    rss = [p.memory_info().rss for p in apps]
    full = [p.memory_full_info() for p in apps]
    pss = [m.pss for m in full]
    rows.append(("app process per session: RSS p50 (max)", f"{mib(statistics.median(rss))} ({mib(max(rss))})"))
    rows.append(("app process per session: PSS p50 (shared pages split)", mib(statistics.median(pss))))
    rows.append(("app process per session: USS p50 (its private pages)", mib(statistics.median(m.uss for m in full))))
    rows.append(("host process (serve-ssh): RSS", mib(server.memory_info().rss)))
    zygote_pss = sum(z.memory_full_info().pss for z in zygotes)
    if zygotes:
        rows.append(("app launcher (zygote): PSS", mib(zygote_pss)))
    rows.append(("all sessions together: PSS sum (host + zygote + apps)",
                 mib(sum(pss) + zygote_pss + server.memory_full_info().pss)))

    # Idle: every session on the member browser, nobody typing (what the sessions cost doing nothing).
    if args.idle_seconds > 0:
        await asyncio.sleep(1.0)
        received, chunks = sum(c.received for c in clients), sum(c.chunks for c in clients)
        before, started = cpu_snapshot(host), time.monotonic()
        await asyncio.sleep(args.idle_seconds)
        after, seconds = cpu_snapshot(host), time.monotonic() - started
        rows.extend(cpu_rows(before, after, seconds, 0, "idle, CPU"))
        rows.append(("idle: output per session per second",
                     f"{(sum(c.received for c in clients) - received) / seconds / len(clients):.0f} chars, "
                     f"{(sum(c.chunks for c in clients) - chunks) / seconds / len(clients):.1f} messages"))

    # Background activity: every session types a letter every few seconds (and deletes it again); a
    # session's own lock keeps that from interleaving with a measured keystroke.
    edits = 0
    stop = asyncio.Event()
    rng = random.Random(7)
    locks = [asyncio.Lock() for _ in clients]
    low, high = args.think_seconds

    async def activity(index: int, client: Client) -> None:
        nonlocal edits
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(low, high))
            async with locks[index]:
                client.send(rng.choice("abcdefghilmnoprst"))
                await asyncio.sleep(0.3)
                client.send("\x7f")
                edits += 2
                await client.wait_for(lambda c, r=rows_of[index]: "Name, e-mail or phone" in c.screen.row(r))

    background = [asyncio.create_task(activity(i, c)) for i, c in enumerate(clients)]
    latencies: list[float] = []
    await asyncio.sleep(3.0)
    connections: list[tuple[int, int]] = []
    watcher = asyncio.create_task(count_connections(args.admin_url, connections))
    edits = 0
    received, chunks = sum(c.received for c in clients), sum(c.chunks for c in clients)
    before, started = cpu_snapshot(host), time.monotonic()
    for sample in range(args.samples):
        index = sample % len(clients)
        client = clients[index]
        async with locks[index]:
            row = rows_of[index]
            letter = "qwxj"[sample % 4]  # letters that are nowhere else on the search box's row
            sent = time.monotonic()
            client.send(letter)
            shown = await client.wait_for(lambda c, r=row, ch=letter: ch in c.screen.row(r))
            latencies.append((shown - sent) * 1000)
            if sample % 10 == 9:
                print(f"{sample + 1} keystrokes, p50 so far {statistics.median(latencies):.0f} ms", file=sys.stderr,
                      flush=True)
            client.send("\x7f")
            edits += 2
            await client.wait_for(lambda c, r=row: "Name, e-mail or phone" in c.screen.row(r))
    after, seconds = cpu_snapshot(host), time.monotonic() - started
    watcher.cancel()
    stop.set()
    for task in background:
        task.cancel()
    typed_chars = sum(c.received for c in clients) - received
    typed_chunks = sum(c.chunks for c in clients) - chunks
    rows.append((f"keystroke -> on screen, every session typing every {low:g}-{high:g} s, p50 / p95 "
                 f"(n={len(latencies)})",
                 f"{statistics.median(latencies):.0f} ms / {percentile(latencies, 0.95):.0f} ms"))
    rows.append(("load average (1 min) during the keystrokes", f"{os.getloadavg()[0]:.1f}"))
    rows.append((f"typing phase: {seconds:.0f} s, edits (letters and backspaces, each a search)",
                 f"{edits} ({edits / seconds:.1f}/s)"))
    rows.append(("typing phase: output per edit (to the typing session and any other)",
                 f"{typed_chars / max(edits, 1):.0f} chars, {typed_chunks / max(edits, 1):.1f} messages"))
    rows.extend(cpu_rows(before, after, seconds, edits, "typing, CPU"))
    if connections:
        ours, every = [n for n, _ in connections], [n for _, n in connections]
        rows.append(("typing phase: client connections to the bench databases, max (mean)",
                     f"{max(ours)} ({statistics.fmean(ours):.0f})"))
        limit = max_connections(args.admin_url)
        rows.append(("typing phase: client connections to the server (anyone's), max (mean)",
                     f"{max(every)} ({statistics.fmean(every):.0f}) of max_connections {limit}"))

    # Change propagation: everyone on the unfiltered first page; rename its first member.
    await asyncio.sleep(1.0)
    for index, client in enumerate(clients):
        client.send("\x15")  # ctrl+u clears the search box
    for index, client in enumerate(clients):
        await client.wait_for(lambda c, r=rows_of[index]: "Name, e-mail or phone" in c.screen.row(r))
    platform = bench_engine(urls["platform"])
    propagation: list[float] = []
    actor = Actor(user_id=uuid.uuid4(), permissions=frozenset(ALL_PERMISSIONS), user_agent="bench (tui)")
    for change in range(args.changes):
        with platform.connect() as conn:
            first = conn.execute(text(
                "SELECT id, updated_at FROM members WHERE deleted_at IS NULL ORDER BY lower(last_name) COLLATE \"C\", "
                "lower(first_name) COLLATE \"C\", id LIMIT 1")).one()
        name = f"Aabench{change:03d}"
        await asyncio.sleep(1.0)
        with PlatformUnitOfWork(platform, actor) as uow:
            committed = time.monotonic()
            uow.members.update(first.id, first.updated_at, {"last_name": name})
            uow.commit()
        moments = await asyncio.gather(*(c.wait_for(lambda c, n=name: n in c.text(), timeout=30) for c in clients))
        propagation.extend((moment - committed) * 1000 for moment in moments)
    platform.dispose()
    rows.append((f"a change -> on every other session's screen, p50 / p95 (n={len(propagation)})",
                 f"{statistics.median(propagation):.0f} ms / {percentile(propagation, 0.95):.0f} ms"))

    for _conn, client, _ in sessions:
        client.send("\x11")  # ctrl+q
    await asyncio.sleep(2.0)
    for ssh_conn, _, _ in sessions:
        ssh_conn.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--members", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--connect-concurrency", type=int, default=4)
    parser.add_argument("--think-seconds", type=float, nargs=2, default=(2.0, 6.0), metavar=("MIN", "MAX"),
                        help="each session types a letter (a search) every MIN-MAX seconds meanwhile")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="measure CPU this long with every session on the member browser and nobody typing")
    parser.add_argument("--emulator", choices=("vt", "pyte", "check"), default="vt",
                        help="the clients' screens: vt (characters only, benchmarks/vt.py), pyte (every cell's "
                             "attributes too: a core's worth of parsing at 50 sessions) or check (both, failing "
                             "when they differ)")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--no-prefork", dest="prefork", action="store_false",
                        help="exec a new Python per session (serve-ssh --no-prefork), not a fork of the zygote")
    parser.add_argument("--host-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for serve-ssh (repeat it: --host-arg=--app-pool-size --host-arg=1)")
    args = parser.parse_args()
    machine = machine_speed()  # before the run loads the machine
    global EMULATOR
    EMULATOR = args.emulator
    with tempfile.TemporaryDirectory(prefix="carecli-ssh-bench-") as tmp:
        workdir = Path(tmp)
        urls, env, key_path = prepare(args.admin_url, args.members, workdir)
        port = free_port()
        host = start_host(env, port, workdir, args.sessions, args.prefork, args.host_arg)
        try:
            rows = asyncio.run(run(args, urls, env, key_path, host, port))
        finally:
            host.terminate()
            try:
                host.wait(timeout=30)
            except subprocess.TimeoutExpired:
                host.kill()
            if not args.keep:
                drop_pair(args.admin_url, PREFIX)
    how = "forked from the zygote" if args.prefork else "exec'd (--no-prefork)"
    print(f"\nSSH host, {args.sessions} sessions ({how}), {os.cpu_count()} cores, {args.members:,} members, "
          f"clients' screens: {args.emulator}" + (f", serve-ssh {' '.join(args.host_arg)}" if args.host_arg else ""))
    print(f"machine before the run: {machine}")
    print_table(rows, value_width=24)


if __name__ == "__main__":
    main()

"""``carecli doctor``: is this installation safe and healthy? One small function per check.

A check takes the :class:`Doctor` (settings, engines, a clock, a master-key
loader) and returns :class:`CheckResult` rows: a name, pass/warn/fail, what
it found and what to do. Checks about a database run once per
:class:`Target`; adding a database (a read replica) is one line in
:func:`targets`, adding a check is one function and one line in ``CHECKS``.

Nothing here reads member data: the master key is proven on a synthetic
value, not on anyone's SSN, so there is no PHI access to audit.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from carecli.config import Settings
from carecli.data import health, migrate
from carecli.data.crypto.fields import FieldCipher
from carecli.data.crypto.keystore import load_keys
from carecli.data.crypto.master import KEY_BYTES, LocalMasterKey, MasterKey
from carecli.data.databases import Databases, check_connection, describe_dbapi_error, display_url
from carecli.data.ids import new_id
from carecli.errors import CarecliError, KeyUnavailable

Status = Literal["pass", "warn", "fail"]

# NIST SP 800-63B, AAL2: reauthenticate at least every 12 hours, and after at most 30 minutes idle.
AAL2_MAX_HOURS = 12
AAL2_IDLE_MINUTES = 30
SKEW_WARN_SECONDS = 5
SKEW_FAIL_SECONDS = 60
CONNECTIONS_WARN = 0.80
CONNECTIONS_FAIL = 0.95
APPEND_ONLY_EVENTS = frozenset({"UPDATE", "DELETE", "TRUNCATE"})


@dataclass(frozen=True)
class CheckResult:
    """One line of the doctor's report."""

    name: str
    status: Status
    detail: str
    action: str = ""
    target: str | None = None

    def as_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """A database connection to check: ``label`` for people, ``schema`` says which history it holds."""

    label: str
    schema: str
    engine: Engine
    #: its loss degrades carecli instead of stopping it (a read replica): unreachable is a warning
    optional: bool = False


def targets(databases: Databases) -> list[Target]:
    """The connections the doctor checks: the two primaries and, when configured, the read replica."""
    found = [Target(name, name, engine) for name, engine in databases.items()]
    if databases.platform_read is not databases.platform:
        # A replica that is down only slows reads (they fall back to the primary): a warning.
        found.append(Target("platform_read", "platform", databases.platform_read, optional=True))
    return found


def _default_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class Doctor:
    """What the checks look at; ``clock`` and ``load_master`` are swappable for tests."""

    settings: Settings
    databases: Databases
    clock: Callable[[], datetime] = _default_clock
    load_master: Callable[[], MasterKey] | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    reachable: list[Target] = field(default_factory=list)
    #: labels of reachable databases that have carecli's schema (any revision), set by check_migrations
    migrated: set[str] = field(default_factory=set)

    @property
    def embedded(self) -> bool:
        return self.databases.embedded is not None

    def target(self, schema: str) -> Target | None:
        """The reachable primary connection holding ``schema`` (None when it is down)."""
        return next((t for t in self.reachable if t.label == schema), None)


Check = Callable[[Doctor], Iterable[CheckResult]]


# -- databases reachable ---------------------------------------------------------------------------


def check_reachable(doctor: Doctor) -> Iterable[CheckResult]:
    """Connect to each database; later database checks run only on those that answered."""
    for target in targets(doctor.databases):
        try:
            check_connection(target.engine, target.label)
            with target.engine.connect() as connection:
                version = health.server_version(connection)
        except CarecliError as exc:
            if target.optional:
                yield CheckResult("reachable", "warn", exc.message + "; reads fall back to the primary",
                                  exc.hint or "", target.label)
            else:
                yield CheckResult("reachable", "fail", exc.message, exc.hint or "", target.label)
            continue
        doctor.reachable.append(target)
        yield CheckResult("reachable", "pass", f"PostgreSQL {version} at {display_url(target.engine.url)}",
                          target=target.label)


# -- TLS ---------------------------------------------------------------------------------------------


def _query(url: URL, key: str) -> str | None:
    value = url.query.get(key)
    if isinstance(value, tuple):
        value = value[-1] if value else None
    return value


def connection_host(url: URL, environ: Mapping[str, str]) -> str | None:
    """Where libpq connects: the URL's host, its ``host=`` query (a socket dir), or ``PGHOST``."""
    return url.host or _query(url, "host") or environ.get("PGHOST") or None


def is_local(host: str | None) -> bool:
    """A Unix socket (no host, a path) or a loopback address: the traffic never leaves this machine."""
    if not host or host.startswith(("/", "@")) or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _has_root_cert(url: URL, environ: Mapping[str, str]) -> bool:
    if _query(url, "sslrootcert") or environ.get("PGSSLROOTCERT"):
        return True
    return (Path.home() / ".postgresql" / "root.crt").exists()


def classify_tls(url: URL, tls: health.TlsState, environ: Mapping[str, str] | None = None
                 ) -> tuple[Status, str, str]:
    """Judge one connection's TLS from its URL (what was asked) and ``pg_stat_ssl`` (what it got)."""
    env = os.environ if environ is None else environ
    mode = _query(url, "sslmode") or env.get("PGSSLMODE") or "prefer"
    host = connection_host(url, env)
    got = f"TLS ({tls.version})" if tls.in_use else "no TLS"
    verify = "add ?sslmode=verify-full&sslrootcert=/path/to/server-ca.pem to the database URL"
    if is_local(host):
        where = "a Unix socket" if not host or host.startswith(("/", "@")) else host
        return "pass", f"local connection over {where}, {got}: the traffic stays on this machine", ""
    if not tls.in_use:
        return ("fail", f"no TLS to {host} (sslmode={mode}): passwords and member data cross the network "
                "unencrypted", verify)
    if mode == "verify-full":
        return "pass", f"{got} to {host}, server certificate and host name verified", ""
    if mode == "verify-ca" or (mode == "require" and _has_root_cert(url, env)):
        return ("warn", f"{got} to {host}: the certificate is checked but not the host name (sslmode={mode})",
                "use sslmode=verify-full")
    return ("warn", f"{got} to {host}, but the server certificate is not verified (sslmode={mode}): "
            "a machine in the middle could pose as the server", verify)


def check_tls(doctor: Doctor) -> Iterable[CheckResult]:
    for target in doctor.reachable:
        with target.engine.connect() as connection:
            tls = health.tls_state(connection)
        status, detail, action = classify_tls(target.engine.url, tls, doctor.environ)
        yield CheckResult("tls", status, detail, action, target.label)


# -- migrations --------------------------------------------------------------------------------------


def check_migrations(doctor: Doctor) -> Iterable[CheckResult]:
    for target in doctor.reachable:
        with target.engine.connect() as connection:
            current = migrate.current_revision(connection, target.schema)
        head = migrate.head_revision(target.schema)
        if current is not None:
            doctor.migrated.add(target.label)
        if current == head:
            yield CheckResult("migrations", "pass", f"at head ({head})", target=target.label)
        else:
            state = "not migrated" if current is None else f"at {current}"
            yield CheckResult("migrations", "fail", f"{state}; this carecli needs {head}",
                              "run `carecli db upgrade` (as the owner role)", target.label)


# -- master key ----------------------------------------------------------------------------------------


def _master_loader(doctor: Doctor) -> Callable[[], MasterKey]:
    if doctor.load_master is not None:
        return doctor.load_master
    from carecli.data.crypto.runtime import master_key

    return lambda: master_key(doctor.settings, doctor.databases)


def check_master_key(doctor: Doctor) -> Iterable[CheckResult]:
    """The master key loads, unwraps every live data key, and a synthetic value survives a round trip."""
    platform = doctor.target("platform")
    if platform is None:
        return
    try:
        master = _master_loader(doctor)()
    except CarecliError as exc:
        yield CheckResult("master key", "fail", exc.message, exc.hint or "", "platform")
        return
    if platform.label not in doctor.migrated:
        yield CheckResult("master key", "warn", f"the master key loads from {master.source}, but the data keys "
                          "cannot be checked: the platform database is not migrated", "run `carecli db upgrade`",
                          "platform")
        return
    with platform.engine.connect() as connection:
        keys = load_keys(connection)
    live = [key for key in keys if key.status != "retired"]
    broken = _unopenable(master, live)
    if broken:
        hint = ("give carecli the master key these data keys were wrapped with "
                "(CARECLI_MASTER_KEY_FILE, CARECLI_MASTER_KEY or the keyring entry)")
        if not isinstance(master, LocalMasterKey):
            hint = ("check CARECLI_HSM_TOKEN and CARECLI_HSM_KEY_LABEL; if the data keys are still wrapped by a "
                    "local key, unset CARECLI_HSM_MODULE or move them with `carecli keys rewrap --to-hsm`")
        yield CheckResult("master key", "fail",
                          f"the master key from {master.source} ({master.key_id}) cannot unwrap {len(broken)} of "
                          f"{len(live)} live data keys ({', '.join(str(key_id) for key_id in broken)})",
                          hint, "platform")
        return
    cipher = FieldCipher(master, keys)
    if cipher.primary_id is None:
        probe_id = new_id()
        data_key = secrets.token_bytes(KEY_BYTES)
        ok = master.unwrap(master.wrap(data_key, data_key_id=probe_id), data_key_id=probe_id) == data_key
        detail = f"from {master.source}; no data keys yet (the first is made with the first SSN or DOB stored)"
    else:
        # A synthetic value under the primary key: proves decryption without touching anyone's PHI.
        sample, row_id = secrets.token_bytes(16), new_id()
        blob = cipher.encrypt(sample, table="doctor", column="probe", row_id=row_id)
        ok = cipher.decrypt(blob, table="doctor", column="probe", row_id=row_id) == sample
        detail = (f"from {master.source}; unwraps all {len(live)} live data keys, encrypt/decrypt round trip "
                  f"under primary {cipher.primary_id} ok")
    if not ok:
        yield CheckResult("master key", "fail", "encrypt/decrypt round trip returned a different value",
                          "report this to the carecli maintainers", "platform")
        return
    retired_broken = _unopenable(master, [key for key in keys if key.status == "retired"])
    if retired_broken:
        yield CheckResult("master key", "warn", detail + f"; {len(retired_broken)} retired keys do not unwrap",
                          "retired keys only matter for restoring old backups: keep their master key with them",
                          "platform")
        return
    if not isinstance(master, LocalMasterKey) and doctor.settings.backup_key is None \
            and doctor.settings.backup_key_file is None:
        yield CheckResult("master key", "warn", detail + "; no backup key is configured, and none can be derived "
                          "from a master key in an HSM, so `carecli backup create` will refuse",
                          "set CARECLI_BACKUP_KEY_FILE (`carecli backup generate-key`)", "platform")
        return
    yield CheckResult("master key", "pass", detail, target="platform")


def _unopenable(master: MasterKey, keys: list) -> list[uuid.UUID]:
    broken = []
    for key in keys:
        try:
            master.unwrap(key.wrapped_key, data_key_id=key.id)
        except KeyUnavailable:
            broken.append(key.id)
    return broken


# -- audit triggers ------------------------------------------------------------------------------------


def check_audit_triggers(doctor: Doctor) -> Iterable[CheckResult]:
    for target in doctor.reachable:
        if target.schema != "platform":
            continue
        with target.engine.connect() as connection:
            events = health.audit_trigger_events(connection)
        missing = sorted(APPEND_ONLY_EVENTS - events)
        if missing:
            yield CheckResult("audit triggers", "fail",
                              f"audit_logs accepts {', '.join(missing)}: its append-only triggers are missing or "
                              "disabled", "run `carecli db upgrade` (platform_0003 adds them), or "
                              "ALTER TABLE audit_logs ENABLE TRIGGER ALL; then find out who removed them",
                              target.label)
        else:
            yield CheckResult("audit triggers", "pass", "audit_logs rejects UPDATE, DELETE and TRUNCATE",
                              target=target.label)


# -- audit seals -----------------------------------------------------------------------------------------

#: unsealed audit rows older than this are a warning (`carecli audit seal` belongs in cron, hourly say)
SEAL_WARN_AGE = timedelta(hours=24)


def judge_seals(now: datetime, last_sealed_at: datetime | None, oldest_unsealed: datetime | None,
                unsealed: int) -> tuple[Status, str, str]:
    """How fresh the sealed audit history is: the age of the last seal and of the oldest unsealed row."""
    hint = "run `carecli audit seal` (from cron, hourly), then `carecli audit verify`"
    last = f"last seal {_age(now - last_sealed_at)} ago" if last_sealed_at else "no seal yet"
    if oldest_unsealed is None:
        return "pass", f"{last}; every audit row is sealed", ""
    age = now - oldest_unsealed
    if age > SEAL_WARN_AGE:
        return "warn", f"{last}; {unsealed:,} audit rows not sealed, the oldest {_age(age)} old", hint
    return "pass", f"{last}; {unsealed:,} audit rows of the last {_age(age)} not sealed yet", ""


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def check_audit_seals(doctor: Doctor) -> Iterable[CheckResult]:
    for target in doctor.reachable:
        if target.schema != "platform":
            continue
        with target.engine.connect() as connection:
            row = connection.execute(text(
                "WITH s AS (SELECT max(sealed_at) AS last_sealed_at, "
                "max(range_end) FILTER (WHERE kind = 'seal') AS sealed_until FROM audit_seals) "
                "SELECT s.last_sealed_at, clock_timestamp() AT TIME ZONE 'UTC' AS now, "
                # (coalesce, not "IS NULL OR": both stay index range scans of ix_audit_logs_created_at)
                "(SELECT min(created_at) FROM audit_logs WHERE created_at >= coalesce(s.sealed_until, "
                "'-infinity'::timestamp)) AS oldest, (SELECT count(*) FROM audit_logs WHERE created_at >= "
                "coalesce(s.sealed_until, '-infinity'::timestamp)) AS unsealed FROM s")).one()
        status, message, hint = judge_seals(row.now, row.last_sealed_at, row.oldest, int(row.unsealed))
        yield CheckResult("audit seals", status, message, hint, target.label)


# -- WAL archiving (point-in-time recovery) -----------------------------------------------------------

#: a completed WAL segment waiting this long for archive_command, or no segment archived for this long
#: while segments wait, is a warning: the recovery point falls that far behind
ARCHIVE_WARN_LAG = timedelta(minutes=15)
ARCHIVE_OFF = "WAL archiving is off: no point-in-time recovery (see README)"
ARCHIVE_HINT = ("set archive_mode = on and archive_command = 'pgbackrest --stanza=carecli archive-push %p' "
                "(README, Point-in-time recovery), then restart the server")


def _program(command: str | None) -> str:
    """The program an archive_command runs, without its arguments (they can hold paths, buckets, keys)."""
    words = (command or "").split()
    return os.path.basename(words[0]) if words else ""


def judge_archiving(facts: health.ArchiveFacts, *, embedded: bool = False) -> tuple[Status, str, str]:
    """Is WAL being archived, so that a restore can replay to a named moment? pass or warn, never fail:
    a server without it still runs carecli, it only cannot be recovered to 14:32 yesterday."""
    if embedded:
        return ("pass", "embedded server: backups are `carecli backup` (no WAL archiving; use your own server "
                "with pgBackRest for point-in-time recovery)", "")
    if facts.archive_mode == "off":
        return "warn", ARCHIVE_OFF, ARCHIVE_HINT
    command = "" if facts.archive_command in (None, "(disabled)") else facts.archive_command
    if facts.archive_library:
        how = f"archive_library {facts.archive_library}"
    elif command:
        how = f"archive_command runs {_program(command)}"
    elif facts.archive_command is None and facts.archive_library is None:
        how = "archive_command not visible to this role"
    else:
        return ("warn", f"archive_mode is {facts.archive_mode} but neither archive_command nor archive_library is "
                "set: WAL segments pile up in pg_wal and nothing is archived", ARCHIVE_HINT)
    how = f"archive_mode {facts.archive_mode}, {how}, wal_level {facts.wal_level}"
    if not facts.stats_readable:
        return ("warn", f"{how}; whether archiving works cannot be told: this role may not read pg_stat_archiver",
                "GRANT pg_monitor TO the role carecli connects as, or run `carecli doctor` as a superuser")
    last = (f"last {_age(facts.lag)} ago" if facts.lag is not None else "none yet")
    done = f"{facts.archived_count or 0:,} segments archived ({last})"
    if facts.failing and facts.last_failed_time is not None:
        since = (f"; the last success was {_age(facts.lag)} ago" if facts.lag is not None
                 else "; no segment was ever archived")
        return ("warn", f"WAL archiving is failing: the last attempt, at "
                f"{facts.last_failed_time.isoformat(sep=' ', timespec='seconds')}, failed "
                f"({facts.failed_count or 0:,} failure{'' if facts.failed_count == 1 else 's'}){since}",
                "read the server log for archive_command's error (`pgbackrest check --stanza=...` names it)")
    if facts.waiting:
        # Since the oldest waiting segment was completed, or (without the rights to see that) since the last
        # segment was archived; never archived at all while segments wait counts as long.
        start = facts.oldest_waiting or facts.last_archived_time
        waited = facts.now - start if start is not None else None
        if waited is None or waited > ARCHIVE_WARN_LAG:
            oldest = f", the oldest for {_age(waited)}" if waited is not None else ""
            return ("warn", f"{how}; {facts.waiting:,} WAL segments are waiting to be archived{oldest}; {done}: "
                    "the recovery point lags that far behind",
                    "check that archive_command keeps up (`pgbackrest check`), and the server log")
    failures = f", {facts.failed_count:,} failed earlier" if facts.failed_count else ""
    waiting = "" if facts.waiting is None else f", {facts.waiting:,} waiting"
    return "pass", f"{how}; {done}{failures}{waiting}", ""


def check_archiving(doctor: Doctor) -> Iterable[CheckResult]:
    """Once per server: identity and platform on one cluster share its WAL."""
    seen: dict[str, list[str]] = {}
    judged: dict[str, tuple[Status, str, str]] = {}
    for target in doctor.reachable:
        if target.optional:  # a read replica: its primary archives
            continue
        with target.engine.connect() as connection:
            url = target.engine.url
            key = health.server_id(connection) or f"{connection_host(url, doctor.environ)}:{url.port or 5432}"
            if key not in judged:
                judged[key] = judge_archiving(health.archive_facts(connection), embedded=doctor.embedded)
        seen.setdefault(key, []).append(target.label)
    for key, labels in seen.items():
        status, detail, action = judged[key]
        yield CheckResult("wal archiving", status, detail, action, ", ".join(labels))


# -- roles ---------------------------------------------------------------------------------------------


def judge_roles(facts: health.RoleFacts, schema: str) -> tuple[Status, str, str]:
    """Least privilege: not a superuser, not the owner, no DELETE anywhere, audit_logs insert-only."""
    app_role = f"carecli_{schema}_app"
    use_app = f"connect as the app role from `carecli db grants --db {schema}` ({app_role}), not as {facts.user}"
    if facts.superuser:
        return ("fail", f"connects as {facts.user}, a superuser: it bypasses every permission, can drop "
                "triggers and read every table", use_app)
    owned = [t.table for t in facts.tables if t.owned]
    if owned:
        shown = "audit_logs" if "audit_logs" in owned else ", ".join(owned[:3])
        return ("warn", f"connects as {facts.user}, the owner of {shown}: an owner can disable triggers and "
                "grant itself DELETE", "run migrations as the owner role; " + use_app)
    deletable = [t.table for t in facts.tables if t.delete]
    audit_writes = [name for name, allowed in _audit_writes(facts) if allowed]
    problems = []
    if deletable:
        problems.append(f"may DELETE from {', '.join(deletable[:5])}{' ...' if len(deletable) > 5 else ''} "
                        "(carecli only soft-deletes)")
    if audit_writes:
        problems.append(f"may {', '.join(audit_writes)} audit_logs")
    if problems:
        return "fail", f"{facts.user} " + "; ".join(problems), f"apply `carecli db grants --db {schema} --apply`"
    return "pass", f"connects as {facts.user}: no superuser, no owner, no DELETE, audit_logs insert-only", ""


def _audit_writes(facts: health.RoleFacts) -> list[tuple[str, bool]]:
    audit = next((t for t in facts.tables if t.table == "audit_logs"), None)
    if audit is None:
        return []
    return [("UPDATE", audit.update), ("TRUNCATE", audit.truncate)]  # DELETE is in the general list


def check_roles(doctor: Doctor) -> Iterable[CheckResult]:
    for target in doctor.reachable:
        with target.engine.connect() as connection:
            facts = health.role_facts(connection)
        status, detail, action = judge_roles(facts, target.schema)
        if status != "pass" and doctor.embedded:
            # The embedded server is a single-user demo: carecli is its superuser by design.
            status, detail = "warn", f"embedded demo server: {detail}; fine for a local demo, never for real data"
            action = "use your own servers with least-privilege roles for real member data"
        yield CheckResult("roles", status, detail, action, target.label)


# -- session timeouts ------------------------------------------------------------------------------------


def judge_sessions(max_hours: int, idle_minutes: int) -> tuple[Status, str, str]:
    """NIST SP 800-63B AAL2: at most 12 hours per session and 30 minutes of inactivity."""
    problems = []
    if max_hours > AAL2_MAX_HOURS:
        problems.append(f"sessions last {max_hours} h (AAL2: at most {AAL2_MAX_HOURS} h)")
    if idle_minutes > AAL2_IDLE_MINUTES:
        problems.append(f"idle timeout is {idle_minutes} min (AAL2: at most {AAL2_IDLE_MINUTES} min)")
    if problems:
        return ("fail", "; ".join(problems),
                f"set [session] max_hours <= {AAL2_MAX_HOURS} and idle_minutes <= {AAL2_IDLE_MINUTES} "
                "(CARECLI_SESSION_MAX_HOURS, CARECLI_SESSION_IDLE_MINUTES)")
    return "pass", f"sessions end after {max_hours} h, or {idle_minutes} min idle (within NIST 800-63B AAL2)", ""


def check_sessions(doctor: Doctor) -> Iterable[CheckResult]:
    status, detail, action = judge_sessions(doctor.settings.session_max_hours, doctor.settings.session_idle_minutes)
    yield CheckResult("session timeouts", status, detail, action)


# -- clock skew ------------------------------------------------------------------------------------------


def judge_skew(seconds: float) -> tuple[Status, str, str]:
    """Session expiry runs on the server's clock, certificates and tokens on ours: they must agree."""
    size = abs(seconds)
    side = "ahead of" if seconds > 0 else "behind"
    detail = (f"the server's clock is {size:.1f} s {side} this machine's" if size >= 0.1
              else "the server's and this machine's clocks agree (within 0.1 s)")
    action = "synchronise both clocks with NTP (timedatectl, chrony)"
    if size > SKEW_FAIL_SECONDS:
        return "fail", detail + f" (more than {SKEW_FAIL_SECONDS} s: token expiry checks go wrong)", action
    if size > SKEW_WARN_SECONDS:
        return "warn", detail + f" (more than {SKEW_WARN_SECONDS} s)", action
    return "pass", detail, ""


def check_clock(doctor: Doctor) -> Iterable[CheckResult]:
    for target in doctor.reachable:
        with target.engine.connect() as connection:
            before = doctor.clock()
            server = health.server_clock(connection)
            after = doctor.clock()
        local = before + (after - before) / 2
        status, detail, action = judge_skew((server - local).total_seconds())
        yield CheckResult("clock skew", status, detail, action, target.label)


# -- pools and connection limits -------------------------------------------------------------------------


def judge_connections(usage: health.ConnectionUsage, per_process: int) -> tuple[Status, str, str]:
    """Server-wide connections against ``max_connections`` (less the reserved ones)."""
    share = usage.current / usage.usable
    detail = (f"server: {usage.current} of {usage.usable} usable connections ({share:.0%}); this process may "
              f"open up to {per_process}")
    action = ("lower [database] pool_size/max_overflow, run fewer processes, put PgBouncer in front, "
              "or raise max_connections")
    if share >= CONNECTIONS_FAIL:
        return "fail", detail + ": new connections are about to be refused", action
    if share > CONNECTIONS_WARN:
        return "warn", detail, action
    return "pass", detail, ""


def pool_description(engine: Engine) -> str:
    """SQLAlchemy's pool numbers for one engine (QueuePool: size, checked out, overflow)."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):  # NullPool, StaticPool: nothing to count
        return pool.status()
    return (f"pool {pool.size()} + overflow {getattr(pool, '_max_overflow', '?')}: "
            f"{pool.checkedout()} checked out, {pool.checkedin()} idle, "
            f"overflow {max(pool.overflow(), 0)}")


def check_pools(doctor: Doctor) -> Iterable[CheckResult]:
    per_process = doctor.settings.pool_size + doctor.settings.max_overflow
    for target in doctor.reachable:
        with target.engine.connect() as connection:
            usage = health.connection_usage(connection)
        status, detail, action = judge_connections(usage, per_process)
        yield CheckResult("pool", status, f"{pool_description(target.engine)}; {detail}", action, target.label)


# -- stored data ------------------------------------------------------------------------------------------


def check_stored_data(doctor: Doctor) -> Iterable[CheckResult]:
    """Live rows that break a rule of the app (stored before the rule existed): a warning, never a failure.

    Only counts are read (no ids, no values), so there is no member data to audit.
    """
    platform = doctor.target("platform")
    if platform is None or platform.label not in doctor.migrated:
        return
    from carecli.data.integrity import count_violations, total

    with platform.engine.connect() as connection:
        counts = count_violations(connection)
    found = total(counts)
    if not found:
        yield CheckResult("stored data", "pass", f"no live row breaks any of the {len(counts)} data rules",
                          target="platform")
        return
    broken = ", ".join(f"{count.name} {count.count:,}" for count in counts if count.count)
    yield CheckResult("stored data", "warn", f"{found:,} live rows break a data rule ({broken})",
                      "run `carecli check data` to see them per rule, then correct those records in the app",
                      "platform")


# -- deferred indexes --------------------------------------------------------------------------------------


def check_deferred_indexes(doctor: Doctor) -> Iterable[CheckResult]:
    """Secondary indexes a bulk load dropped (carecli.data.deferred_indexes), and INVALID indexes.

    Dropped by a load that is gone (killed, connection lost): a failure, searches scan the whole
    table until they are built. Dropped by a load still running: a warning, it builds them when
    it ends.
    """
    platform = doctor.target("platform")
    if platform is None or platform.label not in doctor.migrated:
        return
    from carecli.data import deferred_indexes

    with platform.engine.connect() as connection:
        if not deferred_indexes.available(connection):
            return
        records = deferred_indexes.recorded(connection)
        invalid = deferred_indexes.invalid_indexes(connection)
    left = [record for record in records if not record.alive]
    running = [record for record in records if record.alive]
    fix = "run `carecli db rebuild-indexes` (as the owner role)"
    if left:
        since = min(record.deferred_at for record in left if record.deferred_at is not None)
        yield CheckResult("deferred indexes", "fail",
                          f"{len(left)} secondary index(es) dropped by a bulk load that stopped "
                          f"({left[0].reason}, {since:%Y-%m-%d %H:%M} UTC) are missing: "
                          f"{deferred_indexes.describe(left)}; searches scan whole tables until they are built",
                          fix, "platform")
    if invalid:
        yield CheckResult("deferred indexes", "fail",
                          f"INVALID index(es): {', '.join(f'{name} ({table})' for table, name in invalid)}",
                          fix, "platform")
    if running:
        yield CheckResult("deferred indexes", "warn",
                          f"a bulk load ({running[0].reason}) is running with {len(running)} secondary index(es) "
                          f"dropped ({deferred_indexes.describe(running)}); it builds them when it ends",
                          f"nothing while it runs; if it was stopped, {fix}", "platform")
    if not (left or invalid or running):
        yield CheckResult("deferred indexes", "pass", "no secondary index dropped by a bulk load is missing, "
                          "and none is INVALID", target="platform")


#: The checks, in the order they are shown. ``check_reachable`` must stay first.
CHECKS: list[Check] = [
    check_reachable,
    check_tls,
    check_migrations,
    check_master_key,
    check_audit_triggers,
    check_audit_seals,
    check_archiving,
    check_roles,
    check_sessions,
    check_clock,
    check_pools,
    check_stored_data,
    check_deferred_indexes,
]


def run_checks(doctor: Doctor, checks: Iterable[Check] | None = None) -> list[CheckResult]:
    """Every check's results; a check that breaks is itself a failure, never a crash."""
    results: list[CheckResult] = []
    for check in CHECKS if checks is None else checks:
        name = check.__name__.removeprefix("check_").replace("_", " ")
        try:
            results.extend(check(doctor))
        except DBAPIError as exc:
            results.append(CheckResult(name, "fail", f"the check could not run: {describe_dbapi_error(exc)}",
                                       "check the database connection and the role's rights"))
        except CarecliError as exc:
            results.append(CheckResult(name, "fail", exc.message, exc.hint or ""))
        except Exception as exc:  # noqa: BLE001 - a doctor must finish its report
            results.append(CheckResult(name, "fail", f"the check could not run ({type(exc).__name__})",
                                       "run with CARECLI_DEBUG=1 and report it"))
    return results


def failed(results: Iterable[CheckResult]) -> bool:
    return any(result.status == "fail" for result in results)

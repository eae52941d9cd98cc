"""``carecli doctor``: check the installation and say what to fix; exit 1 when any check fails."""

from __future__ import annotations

import json
import logging
from collections import Counter

import click

from carecli.config import load_settings
from carecli.data.databases import open_databases
from carecli.errors import EXIT_FAILURE
from carecli.services.doctor import CheckResult, Doctor, failed, run_checks

log = logging.getLogger("carecli.doctor")
MARKS = {"pass": "pass", "warn": "WARN", "fail": "FAIL"}


def _print_table(results: list[CheckResult]) -> None:
    names = [f"{result.name} ({result.target})" if result.target else result.name for result in results]
    width = max(len(name) for name in names)
    for name, result in zip(names, results, strict=True):
        click.echo(f"{MARKS[result.status]:<4}  {name:<{width}}  {result.detail}")
        if result.action and result.status != "pass":
            click.echo(f"{'':<4}  {'':<{width}}  -> {result.action}")
    counts = Counter(result.status for result in results)
    click.echo(f"\n{counts['pass']} passed, {counts['warn']} warnings, {counts['fail']} failed")


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per check, on stdout.")
@click.pass_context
def doctor_command(ctx: click.Context, as_json: bool) -> None:
    """Check both databases, TLS, migrations, the master key, audit triggers and seals,
    WAL archiving (point-in-time recovery), roles, session timeouts, clock skew and pools;
    exit 1 when any check fails (warnings exit 0)."""
    settings = load_settings()
    # Configured servers: no connection yet, being unreachable is a finding, not an error. The embedded
    # server is started and migrated as for every other command (it is ours; nobody else will).
    databases = open_databases(settings, check=False)
    try:
        results = run_checks(Doctor(settings, databases))
    finally:
        databases.dispose()
    counts = Counter(result.status for result in results)
    log.info("doctor finished", extra={"passed": counts["pass"], "warnings": counts["warn"],
                                       "failed": counts["fail"],
                                       "failed_checks": sorted({r.name for r in results if r.status == "fail"})})
    if as_json:
        for result in results:
            click.echo(json.dumps(result.as_json()))
    else:
        _print_table(results)
    if failed(results):
        ctx.exit(EXIT_FAILURE)

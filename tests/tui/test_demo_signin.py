"""The demo sign-in: on the embedded database, with no identity provider, a person picks a seeded user."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from carecli.config import load_settings
from carecli.data.crypto.runtime import cipher_provider
from carecli.data.databases import open_databases
from carecli.data.seeding import seed_demo_data
from carecli.screens.app import CareApp
from carecli.screens.signin import SignInScreen
from carecli.screens.worklist import WorklistScreen
from carecli.services.auth.credentials import CredentialStore
from tests.support.seeded import MASTER_KEY
from tests.tui.conftest import SIZE
from tests.tui.helpers import HALF_BLOCKS, wait_for


@pytest.mark.slow
async def test_demo_picker_signs_in_on_the_embedded_database(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "config.toml").write_text("")
    settings = load_settings({"CARECLI_DATA_DIR": str(tmp_path / "data"), "CARECLI_MASTER_KEY": MASTER_KEY,
                              "CARECLI_CONFIG": str(tmp_path / "config.toml")})
    databases = open_databases(settings)  # starts and migrates a private embedded server
    try:
        seed_demo_data(databases.identity, databases.platform, members=40, seed=7,
                       cipher=cipher_provider(settings, databases)())
        store = CredentialStore(scope=f"test:{uuid.uuid4()}", use_keyring=False)
        app = CareApp(settings, databases=databases, store=store)
        async with app.run_test(size=SIZE) as pilot:
            screen = await wait_for(pilot, lambda: isinstance(app.screen, SignInScreen) and app.screen)
            options = await wait_for(pilot, lambda: screen.query_one("#signin-users").option_count and
                                     screen.query_one("#signin-users"))
            first = options.get_option_at_index(0)
            assert "Demo sign-in" in str(screen.query_one("#signin-text").render())
            assert not HALF_BLOCKS & set(app.export_screenshot())  # the list's border is drawn in whole cells
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
            assert app.desk is not None and app.desk.signed_in.user.email == first.id
        with databases.identity.connect() as connection:
            agents = connection.execute(text("SELECT user_agent FROM sessions WHERE deleted_at IS NULL")).scalars()
            assert [agent.endswith("(tui)") for agent in agents] == [True]
        assert store.load() is not None
    finally:
        databases.dispose()
        if databases.embedded is not None and databases.embedded._server is not None:
            databases.embedded._server.cleanup()

"""carecli's data layer: engines, models, migrations, repositories.

Nothing in this package imports Textual, click or asyncssh (a test enforces
it), so the TUI, the CLI and the SSH host all sit on the same core.
"""

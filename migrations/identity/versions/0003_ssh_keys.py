"""Identity database: SSH public keys as tokens (``token_type = 'ssh_key'``).

The SSH host (``carecli serve-ssh``) lets specialists in by public key. A key
belongs to a user and is kept in the seed's ``tokens`` table: ``token_hash``
holds the key's SHA-256 fingerprint (``SHA256:…``, what ``ssh-keygen -l``
prints), ``expires_at`` when it stops being accepted, ``is_revoked`` a
revocation. The CHECK on ``token_type`` gains ``'ssh_key'``, and a partial
unique index keeps one live key row per fingerprint, so a key can never
belong to two users at once.

Revision ID: identity_0003
Revises: identity_0002
Create Date: 2026-12-02
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "identity_0003"
down_revision: str | Sequence[str] | None = "identity_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE_SSH_KEY = "token_type = 'ssh_key' AND deleted_at IS NULL AND is_revoked IS NOT TRUE"


def upgrade() -> None:
    """Allow ``ssh_key`` tokens; one live row per key fingerprint."""
    op.drop_constraint(op.f("tokens_token_type_check"), "tokens", type_="check")
    op.create_check_constraint(op.f("tokens_token_type_check"), "tokens",
                               "token_type IN ('access', 'refresh', 'api', 'ssh_key')")
    op.create_index("ux_tokens_live_ssh_key", "tokens", ["token_hash"], unique=True,
                    postgresql_where=sa.text(_LIVE_SSH_KEY))


def downgrade() -> None:
    """Remove SSH keys (they cannot exist under the old CHECK), then restore it."""
    op.drop_index("ux_tokens_live_ssh_key", table_name="tokens")
    op.execute("DELETE FROM tokens WHERE token_type = 'ssh_key'")
    op.drop_constraint(op.f("tokens_token_type_check"), "tokens", type_="check")
    op.create_check_constraint(op.f("tokens_token_type_check"), "tokens", "token_type IN ('access', 'refresh', 'api')")

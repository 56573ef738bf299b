"""Runs that wait for people (waiting state, decisions, running time), steering input,
subrun depth, and the owners' tool-signing secrets.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 22:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("waiting", JSON, nullable=True))
        batch_op.add_column(sa.Column("action_expires_at", TIMESTAMP, nullable=True))
        batch_op.create_index(batch_op.f("ix_runs_action_expires_at"), ["action_expires_at"],
                              unique=False)
        batch_op.add_column(sa.Column("decisions", JSON, nullable=False,
                                      server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column("pending_input", JSON, nullable=False,
                                      server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column("active_ms", sa.Integer(), nullable=False,
                                      server_default=sa.text("0")))
        batch_op.add_column(sa.Column("depth", sa.Integer(), nullable=False,
                                      server_default=sa.text("0")))
    op.create_table(
        "tool_secrets",
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_tool_secrets")),
    )


def downgrade() -> None:
    op.drop_table("tool_secrets")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("depth")
        batch_op.drop_column("active_ms")
        batch_op.drop_column("pending_input")
        batch_op.drop_column("decisions")
        batch_op.drop_index(batch_op.f("ix_runs_action_expires_at"))
        batch_op.drop_column("action_expires_at")
        batch_op.drop_column("waiting")

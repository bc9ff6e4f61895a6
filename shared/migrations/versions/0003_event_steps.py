"""event log timeline: every step of an event kept (attempts, dead-lettering, replays and who
asked, outcome); dead letters applied by a replay kept

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

Upgrades a database in place:
- ``event_steps`` holds each event's steps after it was received. Events finished before this
  revision have none; their timeline is still read from their row as before.
- ``dead_letters`` gains ``applied_at``: a dead letter whose replay was applied is kept (its id
  stays findable from the event) instead of deleted.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "event_steps",
        sa.Column("id", _ID, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer),
        sa.Column("permanent", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("dead_letter_id", sa.BigInteger),
        sa.Column("by", sa.String(16)),
        sa.PrimaryKeyConstraint("id", name="pk_event_steps"),
    )
    op.create_index(
        "ix_event_steps_source_event_id_id", "event_steps", ["source", "event_id", "id"]
    )
    with op.batch_alter_table("dead_letters") as batch:
        batch.add_column(sa.Column("applied_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    # dead letters applied by a replay were deleted before this revision
    op.execute("DELETE FROM dead_letters WHERE applied_at IS NOT NULL")
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_column("applied_at")
    op.drop_index("ix_event_steps_source_event_id_id", table_name="event_steps")
    op.drop_table("event_steps")

"""event log: every finished event's row (dead ones too), its errors and body; dead letter ids
never reused

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Upgrades a database in place:
- ``webhook_events`` gains ``remote`` and ``errors``, the status ``dead``, and the indexes the
  event log's filters use; every existing dead letter gets its ``dead`` row, so a dead event and
  an applied one can never both be recorded (the unique (source, event_id) decides).
- ``event_bodies`` holds the bodies and redacted headers of processed and ignored events for
  ``[archive] retention_days``.
- ``dead_letters`` ids are never reused on SQLite (AUTOINCREMENT; the table is rebuilt).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
_INDEXES = {
    "ix_webhook_events_source_id": ["source", "id"],
    "ix_webhook_events_status_id": ["status", "id"],
    "ix_webhook_events_event_type_id": ["event_type", "id"],
    "ix_webhook_events_received_at": ["received_at"],
}


def upgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.add_column(sa.Column("remote", sa.String(64)))
        batch.add_column(sa.Column("errors", sa.JSON))
    for name, columns in _INDEXES.items():
        op.create_index(name, "webhook_events", columns)
    op.create_table(
        "event_bodies",
        sa.Column("event_pk", _ID, autoincrement=False),
        sa.Column("headers", sa.JSON, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("event_pk", name="pk_event_bodies"),
        sa.ForeignKeyConstraint(
            ["event_pk"],
            ["webhook_events.id"],
            name="fk_event_bodies_event_pk_webhook_events",
            ondelete="CASCADE",
        ),
    )
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(
            "dead_letters", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass
    # every dead letter already there gets the row that marks its event dead
    op.execute(
        """
        INSERT INTO webhook_events
            (source, event_id, event_type, status, attempts, received_at, processed_at,
             remote, errors)
        SELECT d.source, d.event_id, d.event_type, 'dead', d.attempts, d.received_at,
               d.failed_at, d.remote, d.errors
        FROM dead_letters d
        WHERE NOT EXISTS (
            SELECT 1 FROM webhook_events w WHERE w.source = d.source AND w.event_id = d.event_id
        )
        """
    )


def downgrade() -> None:
    op.execute("DELETE FROM webhook_events WHERE status = 'dead'")
    op.drop_table("event_bodies")
    for name in _INDEXES:
        op.drop_index(name, table_name="webhook_events")
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("errors")
        batch.drop_column("remote")

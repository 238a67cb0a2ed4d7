"""What a database knows of itself: which database it is, and which key it was run with.

One row (table database_identity), written by the database's first run, or by the first
run of an anpr that has this table with a database made before it (audited as
"database.bind"; policy/binding.py `require_key`):

- `database_id`, random: the audit log's checkpoints name the database by it
  (anpr/storage/audit.py), so a database is the same one however its URL is spelled
  (`sqlite:////x/p.sqlite`, `sqlite:////x/../x/p.sqlite`, another name of the same
  server) or wherever it is moved.
- `key_fingerprint`, the fingerprint of its key (keys.Keys.fingerprint, which reveals
  nothing of the key): any other key is refused. Under another key the same plate
  would be stored under another plate_key, so a deletion the law requires would miss
  its rows, and the audit log would no longer verify.

The row is never updated: a database's key cannot be changed (its plate keys and audit
log are made with it).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Double, Integer, String, Table, inspect, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from anpr.storage.store import Base

TABLE = "database_identity"
ROW_ID = 1  # the only row: a second first run's insert fails on it, and that run reads the first's


class DatabaseIdentityRow(Base):
    __tablename__ = TABLE

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    database_id: Mapped[str] = mapped_column(String(32))
    key_fingerprint: Mapped[str] = mapped_column(String(64))
    bound_at: Mapped[float] = mapped_column(Double)
    bound_by: Mapped[str] = mapped_column(String(128))


IDENTITY_TABLE: Table = DatabaseIdentityRow.__table__  # type: ignore[assignment]  # mapped classes have one


@dataclass(frozen=True)
class Identity:
    database_id: str
    key_fingerprint: str
    bound_at: float
    bound_by: str


def database_identity(bind: Engine | Connection | Session) -> Identity | None:
    """The database's identity; None before it was bound (no table, or no row). Reads only."""
    if isinstance(bind, Session):
        connection = bind.connection()
    elif isinstance(bind, Engine):
        with bind.connect() as connection:
            return database_identity(connection)
    else:
        connection = bind
    if not inspect(connection).has_table(TABLE):
        return None
    row = connection.execute(select(IDENTITY_TABLE).where(IDENTITY_TABLE.c.id == ROW_ID)).first()
    if row is None:
        return None
    return Identity(row.database_id, row.key_fingerprint, row.bound_at, row.bound_by)

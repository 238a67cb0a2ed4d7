"""An append-only, tamper-evident audit log, kept in the same database as the reads.

Each entry holds the hash of the entry before it, which makes the log a hash chain:
changing, removing or moving any entry breaks the chain at that entry, and `verify()`
says which entry and how.

The hash of an entry is the hex SHA-256 of this UTF-8 text (fields joined by "\\n")::

    prev_hash + "\\n" + str(seq) + "\\n" + format(at, ".6f") + "\\n" + actor + "\\n" + action + "\\n" + details

- `seq` is 1, 2, 3, ... in the order of appending;
- `prev_hash` is the `entry_hash` of entry seq-1, and "0" * 64 for entry 1;
- `at` is Unix time in seconds, rounded to the microsecond when appended;
- `details` is canonical JSON:
  json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False).

Canonical JSON never holds a raw newline, and `append` refuses an actor or action that
does, so the text splits back into its fields one way only: no two different entries
share it.

Two layers protect the log:

1. Database triggers reject UPDATE and DELETE on audit_log (and TRUNCATE on
   PostgreSQL), so neither a bug nor an ordinary client can change it.
2. Someone who can drop the triggers can change rows, but not without breaking the
   chain, which `verify()` finds.

What no chain can show on its own: the newest entries removed (truncation), or one
entry rewritten together with every entry after it (all hashes recomputed). Both need
an anchor kept outside the database, such as the last entry_hash written down elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import DDL, Double, Integer, String, Table, Text, create_engine, event, inspect, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from anpr.errors import StoreError, first_line
from anpr.store import Base, database_url

GENESIS = "0" * 64
TABLE = "audit_log"


class AuditEntry(Base):
    __tablename__ = TABLE

    # Assigned by append (last seq + 1), not by the database: the number is part of the
    # hash, so it must be known before the row is written and must have no gaps.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # Double, not Float: the stored value must round-trip exactly to hash the same.
    at: Mapped[float] = mapped_column(Double)
    actor: Mapped[str] = mapped_column(String)
    action: Mapped[str] = mapped_column(String)
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))

    def computed_hash(self, seq: int | None = None) -> str:
        """The hash this entry's content should have (at `seq` instead of its own, if given)."""
        return chain_hash(
            self.prev_hash, self.seq if seq is None else seq, self.at, self.actor, self.action, self.details
        )


def chain_hash(prev_hash: str, seq: int, at: float, actor: str, action: str, details: str) -> str:
    """The entry hash of the module docstring; `details` is the stored canonical JSON text."""
    payload = "\n".join([prev_hash, str(seq), format(at, ".6f"), actor, action, details])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def canonical_json(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# Append-only at the database level. These run only when create_all creates the table;
# a table created some other way has no triggers, and the chain is then the only guard.
_APPEND_ONLY = "audit_log is append-only"
for _statement, _dialect in [
    (
        f"CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON {TABLE} "
        f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END;",
        "sqlite",
    ),
    (
        f"CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON {TABLE} "
        f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END;",
        "sqlite",
    ),
    (
        "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END; $$",
        "postgresql",
    ),
    (
        f"CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON {TABLE} "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
        "postgresql",
    ),
    # TRUNCATE fires no DELETE trigger, so it needs its own.
    (
        f"CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON {TABLE} "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
        "postgresql",
    ),
]:
    event.listen(AuditEntry.__table__, "after_create", DDL(_statement).execute_if(dialect=_dialect))


@dataclass(frozen=True)
class AuditProblem:
    """One break in the chain.

    kind: "edited"    the entry's content is not what was hashed when it was appended
                      (a field changed), or it was rewritten with a recomputed hash
                      (seen from the next entry, which links to the old hash);
          "deleted"   entries are missing before this one (a gap in seq, or the log
                      does not start at 1);
          "reordered" the entry is intact but at another seq than its place in the
                      chain (its hash matches its content at the position its links give).
    """

    seq: int
    kind: str
    message: str


class AuditLog:
    """The audit log of one database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with _errors("cannot open database", engine):
            Base.metadata.create_all(engine, tables=[cast(Table, AuditEntry.__table__)])

    def append(
        self,
        action: str,
        actor: str,
        details: dict[str, Any],
        *,
        session: Session | None = None,
        at: float | None = None,
    ) -> AuditEntry:
        """Append one entry and return it.

        With `session`, the entry joins that caller's transaction (and that session's
        database), so a change and its audit entry commit or roll back together; the
        session is flushed. Without it, the entry is committed in its own transaction.
        """
        for name, value in (("actor", actor), ("action", action)):
            # A newline would let two different (actor, action) pairs hash alike; NUL
            # cannot be stored in PostgreSQL text.
            if not isinstance(value, str) or "\n" in value or "\x00" in value:
                raise ValueError(f"audit {name} must be text without newlines or NUL: {value!r}")
        if not isinstance(details, dict):
            raise TypeError(f"audit details must be a dict, not {type(details).__name__}")
        body = canonical_json(details)
        at = time.time() if at is None else float(at)
        if not math.isfinite(at):
            raise ValueError(f"audit time must be finite: {at!r}")
        # Rounded so the stored number is exactly what the hash says (see verify).
        at = round(at, 6)
        if session is not None:
            with _errors("cannot write the audit log to database", session.get_bind()):
                return _append(session, action, actor, body, at)
        with (
            _errors("cannot write the audit log to database", self.engine),
            Session(self.engine, expire_on_commit=False) as own,
            own.begin(),
        ):
            return _append(own, action, actor, body, at)

    def entries(self) -> list[AuditEntry]:
        with _errors("cannot read the audit log from database", self.engine), Session(self.engine) as session:
            return list(session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))

    def verify(self) -> list[AuditProblem]:
        """Every break in the chain, in seq order; [] for an intact log."""
        return check_chain(self.entries())


def _append(session: Session, action: str, actor: str, body: str, at: float) -> AuditEntry:
    # Two appenders would both read the same last entry, and the second insert would fail
    # on the seq key. Taking the write lock before reading makes them take turns (it is
    # released at commit or rollback); readers go on.
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # Conflicts with itself and with inserts, not with SELECT.
        session.execute(text(f"LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE"))
    elif dialect == "sqlite":
        # SQLite has no LOCK TABLE: a write that touches no row (so fires no trigger)
        # opens the transaction and takes the database's write lock.
        session.execute(text(f"UPDATE {TABLE} SET seq = seq WHERE 0"))
    last = session.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).first()
    seq = last.seq + 1 if last else 1
    prev = last.entry_hash if last else GENESIS
    entry = AuditEntry(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        details=body,
        prev_hash=prev,
        entry_hash=chain_hash(prev, seq, at, actor, action, body),
    )
    session.add(entry)
    # Now, not at commit: a clash shows here, and a later append in this session sees it.
    session.flush()
    return entry


def check_chain(entries: Sequence[AuditEntry]) -> list[AuditProblem]:
    """The problems of a log given as its entries in seq order (see AuditProblem)."""
    by_hash: dict[str, AuditEntry] = {}
    for entry in entries:
        by_hash.setdefault(entry.entry_hash, entry)
    positions = _chain_positions(entries, by_hash)
    problems: list[AuditProblem] = []
    bad_content: set[int] = set()
    pred: AuditEntry | None = None
    for entry in entries:
        n = entry.seq
        expected_seq = pred.seq + 1 if pred else 1
        if n != expected_seq:
            missing = f"entry {expected_seq} is" if n == expected_seq + 1 else f"entries {expected_seq} to {n - 1} are"
            where = f"follows entry {pred.seq}" if pred else "is the first entry"
            problems.append(AuditProblem(n, "deleted", f"entry {n} {where}: {missing} missing"))
        if not _intact(entry):
            bad_content.add(n)
            place = positions.get(n)
            moved = place is not None and place != n and _on_grid(entry.at)
            if moved and entry.computed_hash(place) == entry.entry_hash:
                # Its content is untouched except for the seq: it was moved here.
                problems.append(
                    AuditProblem(n, "reordered", f"entry {n} is out of order: its content belongs at position {place}")
                )
            elif not _on_grid(entry.at):
                problems.append(
                    AuditProblem(
                        n,
                        "edited",
                        f"entry {n} was edited: its time has digits below a microsecond, which append never writes",
                    )
                )
            else:
                problems.append(AuditProblem(n, "edited", f"entry {n} was edited: its hash does not match its content"))
        elif n == expected_seq:
            # Intact and in sequence: does it link to the entry before it? (After a gap,
            # the "deleted" problem already explains a broken link.)
            expected_prev = pred.entry_hash if pred else GENESIS
            if entry.prev_hash == expected_prev:
                pass
            elif pred is None or entry.prev_hash == GENESIS:
                # Append links entry 1, and only entry 1, to GENESIS: this one was forged.
                problems.append(
                    AuditProblem(n, "edited", f"entry {n} was rewritten: its link does not fit its place in the chain")
                )
            elif entry.prev_hash in by_hash:
                pass  # its true predecessor was moved elsewhere, and is reported there
            elif pred.seq not in bad_content:
                # The predecessor hashes right but is not the entry this one was chained
                # to: it was rewritten (or replaced) with a recomputed hash.
                problems.append(
                    AuditProblem(
                        pred.seq, "edited", f"entry {pred.seq} was rewritten: entry {n} links to a different hash"
                    )
                )
        pred = entry
    return problems


def _intact(entry: AuditEntry) -> bool:
    return _on_grid(entry.at) and entry.computed_hash() == entry.entry_hash


def _on_grid(at: float) -> bool:
    # The hash sees `at` to the microsecond only; append stores it rounded there, so a
    # value off that grid was written by something else (e.g. a tiny edit the hash misses).
    try:
        return float(format(at, ".6f")) == at
    except (TypeError, ValueError):
        return False


def _chain_positions(entries: Sequence[AuditEntry], by_hash: dict[str, AuditEntry]) -> dict[int, int | None]:
    """seq -> position in the chain when following prev_hash links back to GENESIS
    (1 for the entry linked to GENESIS); None where the links break or loop."""
    known: dict[int, int | None] = {}
    for entry in entries:
        path: list[AuditEntry] = []
        on_path: set[int] = set()
        current: AuditEntry | None = entry
        base: int | None = None
        while current is not None:
            if current.seq in known:
                base = known[current.seq]
                break
            if current.seq in on_path:
                base = None  # a loop of links has no position
                break
            path.append(current)
            on_path.add(current.seq)
            if current.prev_hash == GENESIS:
                base = 0
                break
            current = by_hash.get(current.prev_hash)
        for step in reversed(path):
            base = None if base is None else base + 1
            known[step.seq] = base
    return known


def verify_database(url: str) -> list[AuditProblem]:
    """Verify the audit log of a database given as a SQLAlchemy URL or a SQLite file path.

    Read-only: it creates neither a file nor a table.
    """
    url = database_url(url)
    try:
        parsed = make_url(url)
        # Connecting would create an empty file; a missing file is a mistake to report.
        local_file = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
        if local_file and not Path(str(parsed.database)).is_file():
            raise StoreError(f"database not found: {parsed.database}")
        engine = create_engine(parsed)
    except (ArgumentError, ImportError, ValueError) as exc:
        raise StoreError(f"invalid database URL {url!r}: {first_line(exc)}") from None
    try:
        with _errors("cannot open database", engine):
            if not inspect(engine).has_table(TABLE):
                raise StoreError(f"database {_safe(engine)} has no audit log (table {TABLE})")
            with Session(engine) as session:
                entries = list(session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))
        return check_chain(entries)
    finally:
        engine.dispose()


@contextmanager
def _errors(what: str, engine: Any) -> Iterator[None]:
    """Database failures as one-line StoreErrors that name the database."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StoreError(f"{what} {_safe(engine)}: {first_line(exc)}") from None


def _safe(engine: Any) -> str:
    url = getattr(engine, "url", None)
    return url.render_as_string(hide_password=True) if url is not None else "(unknown)"

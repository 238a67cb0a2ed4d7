"""Storage of reads and passages with SQLAlchemy 2: SQLite by default, any SQLAlchemy URL otherwise.

Reads and passages (records.Passage: a tracked plate's reads voted into one plate) are
written in batches, one transaction per batch. Nothing is created on disk until the
first batch is written, so a run that fails on bad input leaves no file.

Writes are idempotent: every kept read and every passage has a unique key, and every
batch a key that is recorded (table written_batches) in the batch's own transaction. A
batch sent again, for instance from the outage spool (anpr/storage/spool.py) after its commit
went through but its acknowledgement was lost, is recognised and skipped as a whole, so
neither its reads, its passages nor its counter increments are applied twice.

Retention treats a passage as it treats a read: it goes at its deadline (`purge`), and
with its plate's reads when those are deleted on payment (`delete_plate`).
"""

from __future__ import annotations

import json
import math
import os
import pwd
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
    case,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import URL, CursorResult, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql import Select

from anpr.config.settings import DATABASE_TIMEOUT_SECONDS, StoreSettings
from anpr.errors import StoreError, first_line
from anpr.files import create as create_file
from anpr.policy.rules import RULES_BY_ID
from anpr.records import CountKey, Passage, PolicedRead, hour_bucket, new_key
from anpr.redact import redact, redact_query
from anpr.storage.keys import Keys

# What a PostgreSQL server applies itself, as shares of the bound (store.timeout_seconds): a
# server that is alive but slow cancels the statement a little before the client would cut
# the connection, which then stays usable; a wait for a lock ends sooner, so that its error
# says that a lock was the cause.
STATEMENT_SHARE, LOCK_SHARE = 0.75, 0.5
# A connection left idle in the pool across a network cut is dropped by the kernel after
# about 10 + 3 x 5 s without an answer, instead of hours later.
KEEPALIVE_IDLE_SECONDS, KEEPALIVE_INTERVAL_SECONDS, KEEPALIVE_COUNT = 10, 5, 3
# How long a batch key is kept after its batch was written. A key is needed only while a
# copy of its batch may still be sent again: a spool file written because the commit's
# acknowledgement was lost, flushed at the first write after the database comes back, or
# by the next run if this one stops first. Keeping keys longer costs one small row per
# batch; keeping them shorter lets a spool older than this double a batch's counters
# (never its reads: a batch with reads is also recognised by its read keys, and a read
# gone by retention is also gone from the spool; the same holds for passages). Counted on
# the wall clock.
BATCH_KEY_SECONDS = 7 * 24 * 3600
# The functions `anpr db init-roles` makes on PostgreSQL (roles.py): once they exist, every
# `anpr db search` of the database goes through the first, and a data subject's requests
# (`anpr db subject-access`, `anpr db erase`) through the other two.
SEARCH_FUNCTION = "anpr_search"
SUBJECT_RECORDS_FUNCTION = "anpr_subject_records"
SUBJECT_ERASE_FUNCTION = "anpr_subject_erase"
# What they raise (SQLSTATE): the login may not ask; the audit entry it was given is not
# the next one (another entry came first: prepare it again).
REFUSED, STALE_ENTRY = "42501", "40001"


class DatabaseUnavailable(StoreError):
    """The database cannot be reached now (server down, connection lost): worth retrying
    later, unlike a refused statement (integrity, schema, permission), which stays an error."""


class FunctionRefused(StoreError):
    """A database function of roles.py refused the request: the login is not a designated
    agent of the purpose (search) or a data-protection officer (a data subject's requests),
    or the roles are not set for this deployment."""


class StaleAuditEntry(StoreError):
    """The audit entry prepared for a database function is no longer the next one of the
    log (another entry was appended first): prepare it again."""


class Base(DeclarativeBase):
    pass


class KeptRow:
    """The columns of every record a purpose keeps (a read, a passage): its unique key,
    where and for what it was kept, under which rule, until when, and its plate."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(32), unique=True)  # the record's key: a batch sent twice is stored once
    source: Mapped[str] = mapped_column(String(1024), index=True)
    camera: Mapped[str] = mapped_column(String(128), index=True)
    purpose: Mapped[str] = mapped_column(String(64), index=True)
    rule_id: Mapped[str] = mapped_column(String(32))
    delete_after: Mapped[float] = mapped_column(Float, index=True)  # Unix time
    hit: Mapped[bool] = mapped_column(Boolean, default=False)
    # The plate in clear only where its rule shows it (rules.Rule.shows_plate), and never
    # indexed: lookups go through plate_key, its keyed hash (keys.py), whose key the
    # database does not hold.
    plate: Mapped[str | None] = mapped_column(String(32), nullable=True)
    plate_key: Mapped[str] = mapped_column(String(64), index=True)
    candidates: Mapped[str] = mapped_column(Text, default="[]")  # JSON [[text, probability], ...]
    country: Mapped[str | None] = mapped_column(String(32), nullable=True)
    format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    stored_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))

    @staticmethod
    def _columns(record_dict: dict[str, Any], keys: Keys) -> dict[str, Any]:
        """A record's `to_dict(exact=True)` as this table's columns: its plate's keyed hash
        added, and every text of the plate dropped where its rule does not show it."""
        record_dict["plate_key"] = keys.plate_digest(record_dict["plate"])
        record_dict["rule_id"] = record_dict.pop("rule")
        rule = RULES_BY_ID.get(record_dict["rule_id"])
        if rule is None or not rule.shows_plate:
            record_dict.update(plate=None, candidates=[], **({"raw_text": ""} if "raw_text" in record_dict else {}))
        record_dict["candidates"] = json.dumps(record_dict["candidates"])
        return record_dict

    def _record_dict(self) -> dict[str, Any]:
        """This row as its record's dictionary form (for `from_dict`); a plate not kept in
        clear reads as "#" and the start of its keyed hash."""
        columns = self.__table__.columns  # type: ignore[attr-defined]  # mapped subclasses have a table
        return {
            **{column.key: getattr(self, column.key) for column in columns},
            "plate": self.plate if self.plate is not None else f"#{self.plate_key[:12]}",
            "rule": self.rule_id,
            "candidates": json.loads(self.candidates or "[]"),
        }


class ReadRow(KeptRow, Base):
    """One read kept for one purpose, with the deadline by which it must be gone."""

    __tablename__ = "reads"

    frame: Mapped[int] = mapped_column(Integer)
    time: Mapped[float] = mapped_column(Float, index=True)
    raw_text: Mapped[str] = mapped_column(String(128))
    confidence: Mapped[float] = mapped_column(Float)
    ocr_confidence: Mapped[float] = mapped_column(Float)
    detector_confidence: Mapped[float] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)
    detector_model: Mapped[str] = mapped_column(String(128))
    ocr_model: Mapped[str] = mapped_column(String(128))

    @classmethod
    def from_record(cls, policed: PolicedRead, keys: Keys) -> ReadRow:
        columns = cls._columns(policed.to_dict(exact=True), keys)
        columns["x1"], columns["y1"], columns["x2"], columns["y2"] = columns.pop("box")
        columns.pop("track")  # the passages table links a plate's reads; the reads table keeps its columns
        return cls(**columns)

    def to_record(self) -> PolicedRead:
        return PolicedRead.from_dict({**self._record_dict(), "box": (self.x1, self.y1, self.x2, self.y2)})


class PassageRow(KeptRow, Base):
    """One passage kept for one purpose: a tracked plate's reads voted into one plate."""

    __tablename__ = "passages"

    track: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(Float)
    first_frame: Mapped[int] = mapped_column(Integer)
    last_frame: Mapped[int] = mapped_column(Integer)
    first_time: Mapped[float] = mapped_column(Float, index=True)
    last_time: Mapped[float] = mapped_column(Float)
    reads: Mapped[int] = mapped_column(Integer)

    @classmethod
    def from_record(cls, passage: Passage, keys: Keys) -> PassageRow:
        return cls(**cls._columns(passage.to_dict(exact=True), keys))

    def to_record(self) -> Passage:
        return Passage.from_dict(self._record_dict())


KEPT_TABLES: tuple[type[ReadRow] | type[PassageRow], ...] = (ReadRow, PassageRow)  # what retention deletes
Kept = TypeVar("Kept", ReadRow, PassageRow)


class WrittenBatchRow(Base):
    """The key of a batch already written, so that the same batch sent again is skipped."""

    __tablename__ = "written_batches"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The start of the hour, like the policy counters: enough to prune by, while a time to
    # the second would say when a plate was read for a purpose that may only count.
    written_at: Mapped[int] = mapped_column(Integer, index=True)


class PolicyCountRow(Base):
    """How many reads a purpose blocked, counted or exempted per camera and hour: never which."""

    __tablename__ = "policy_counts"
    __table_args__ = (UniqueConstraint("bucket", "camera", "purpose", "rule_id", "outcome"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer)
    camera: Mapped[str] = mapped_column(String(128))
    purpose: Mapped[str] = mapped_column(String(64))
    rule_id: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    count: Mapped[int] = mapped_column(Integer)


@dataclass(frozen=True, slots=True)
class KeptCount:
    """How many rows of reads (or passages) a database holds for one camera, purpose and
    rule, of those stored on one day: a count, never which."""

    day: str  # YYYY-MM-DD (UTC) of `stored_at`
    camera: str
    purpose: str
    rule_id: str
    rows: int
    overdue: int  # of them, past their deadline and not purged yet (no query returns them)


class DeploymentBindingRow(Base):
    """The deployment a database serves: its fingerprint, bound at the first run and
    changed only by `anpr policy migrate` (both audited). The newest row is the binding."""

    __tablename__ = "deployment_bindings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(256))
    bound_at: Mapped[float] = mapped_column(Float)
    bound_by: Mapped[str] = mapped_column(String(128))


def database_url(target: str | None) -> str:
    """A SQLAlchemy URL from `--db`: a URL as is, a plain path as a SQLite file."""
    target = target or StoreSettings().url
    if "://" in target:
        return target
    return f"sqlite:///{Path(target).expanduser().resolve()}"


def shown_url(url: str | URL) -> str:
    """A database URL as every message, log and spool batch shows it: the login, not the
    password (as SQLAlchemy parses it, whose parse the driver gets), and no query value
    that is not known to be harmless (`?password=`, `?sslpassword=`: redact.py's rule)."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
        return redact_query(parsed.render_as_string(hide_password=True))
    except (ArgumentError, ValueError):  # not a URL SQLAlchemy reads: hidden as any location is
        return redact(str(url))


class ReadStore:
    """The reads, passages and policy counters of one database.

    Every call to the database is bounded by `timeout` seconds (store.timeout_seconds): a
    database that does not answer within it raises DatabaseUnavailable, as one that is down
    does. On PostgreSQL the server cancels a slow statement or lock wait itself, and a
    round trip that gets no answer at all (a stopped server, a network cut without reset)
    has its connection cut by the client (`_Watchdog`). On SQLite it is the busy timeout
    (a write waiting for another writer's lock).
    """

    def __init__(
        self, target: str | None, keys: Keys | Callable[[], Keys], timeout: float = DATABASE_TIMEOUT_SECONDS
    ) -> None:
        """`keys`: the deployment's keys, or what loads them when first needed (so that a
        database that cannot be opened is reported before a missing key file)."""
        self.url = database_url(target)
        self._keys = keys
        self.timeout = timeout
        try:
            url = make_url(self.url)
            if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
                parent = Path(url.database).parent
                if not parent.is_dir():
                    raise StoreError(f"database folder does not exist: {parent}")
                self._sqlite_file: Path | None = Path(url.database)
            else:
                self._sqlite_file = None
            self._engine: Engine = bounded_engine(url, timeout)
            if url.get_backend_name() == "sqlite":
                event.listen(self._engine, "connect", _sqlite_secure_delete)
            if self._sqlite_file is not None:
                _watch_file(self._engine, self._sqlite_file)
        except (ArgumentError, ImportError, ValueError) as exc:
            raise StoreError(f"invalid database URL {shown_url(self.url)!r}: {first_line(exc)}") from None
        self._ready = False

    def _ensure_schema(self) -> None:
        if not self._ready:
            if self._sqlite_file is not None:
                _create_private(self._sqlite_file)
            try:
                Base.metadata.create_all(self._engine)
                existing = inspect(self._engine)
                missing = [
                    f"{table.name}.{column.name}"
                    for table in Base.metadata.sorted_tables
                    for column in table.columns
                    if column.name not in {c["name"] for c in existing.get_columns(table.name)}
                ]
            except SQLAlchemyError as exc:
                raise database_error(exc)(f"cannot open database {self.safe_url}: {first_line(exc)}") from None
            if missing:  # create_all adds tables, never columns
                listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                raise StoreError(
                    f"database {self.safe_url} was made by an older anpr (no column {listed}): "
                    f"use a new database file, or add the columns"
                )
            self._ready = True

    @property
    def keys(self) -> Keys:
        if not isinstance(self._keys, Keys):
            self._keys = self._keys()
        return self._keys

    @property
    def safe_url(self) -> str:
        return shown_url(self.url)

    def check(self, create: bool = True) -> None:
        """Connect and create the schema now: a bad URL fails before any frame is read.
        Without `create`, a SQLite file that does not exist is an error (a query or a
        purge of a mistyped path must not leave an empty database behind). With it (a run),
        the database must also take a write (see `_check_writable`)."""
        if not create and self._sqlite_file is not None and not self._sqlite_file.is_file():
            raise StoreError(f"database not found: {self._sqlite_file}")
        self._ensure_schema()
        if create:
            self._check_writable()

    def _check_writable(self) -> None:
        """Write a batch key and roll it back. A database that can be read but not written
        (a read-only SQLite file, or a read-only folder for its journal; a read-only role or
        server) would otherwise pass the checks and fail at the first write, mid-run."""
        try:
            with Session(self._engine) as session:
                session.begin()
                session.add(WrittenBatchRow(key=new_key(), written_at=0))
                session.flush()
                session.rollback()
        except SQLAlchemyError as exc:
            raise database_error(exc)(f"cannot write to database {self.safe_url}: {first_line(exc)}") from None

    @contextmanager
    def _failures(self, what: str) -> Iterator[None]:
        """A database failure as the one-line error it is (database_error)."""
        try:
            yield
        except SQLAlchemyError as exc:
            raise database_error(exc)(f"{what} {self.safe_url}: {first_line(exc)}") from None

    @property
    def engine(self) -> Engine:
        self._ensure_schema()
        return self._engine

    def write(
        self,
        reads: Sequence[PolicedRead],
        counts: Mapping[CountKey, int] | None = None,
        key: str | None = None,
        passages: Sequence[Passage] = (),
        also: Callable[[Session], object] | None = None,
    ) -> bool:
        """Store a batch of reads and passages and add to the policy counters, in one transaction.

        `key` identifies the batch (a new one if not given): a batch whose key is already
        recorded, or one of whose reads or passages is already stored, is skipped whole.
        `also` writes more in the same transaction (the spool's audit entries). Whether it
        was written (False: it already was, or it holds nothing). Raises
        DatabaseUnavailable when the database cannot be reached (the batch may or may not
        have been committed), StoreError when it refuses the batch.
        """
        if not reads and not counts and not passages and also is None:
            return False
        self._ensure_schema()
        batch_key = key or new_key()
        try:
            with Session(self._engine) as session, session.begin():
                if self._already_written(session, batch_key, reads, passages):
                    return False
                session.add(WrittenBatchRow(key=batch_key, written_at=hour_bucket(time.time())))
                session.add_all([ReadRow.from_record(r, self.keys) for r in reads])
                session.add_all([PassageRow.from_record(p, self.keys) for p in passages])
                for counter, number in (counts or {}).items():
                    row = session.scalars(
                        select(PolicyCountRow).where(
                            PolicyCountRow.bucket == counter.bucket,
                            PolicyCountRow.camera == counter.camera,
                            PolicyCountRow.purpose == counter.purpose,
                            PolicyCountRow.rule_id == counter.rule_id,
                            PolicyCountRow.outcome == counter.outcome.value,
                        )
                    ).one_or_none()
                    if row is None:
                        session.add(PolicyCountRow(**counter.to_dict(), count=number))
                    else:
                        row.count += number
                if also is not None:
                    also(session)
        except IntegrityError as exc:
            # Another writer (a second run flushing the same spool) may have stored this
            # very batch between our check and our commit.
            if self._written_elsewhere(batch_key, reads, passages):
                return False
            raise StoreError(f"cannot write to database {self.safe_url}: {first_line(exc)}") from None
        except SQLAlchemyError as exc:
            raise database_error(exc)(f"cannot write to database {self.safe_url}: {first_line(exc)}") from None
        return True

    @staticmethod
    def _already_written(
        session: Session, key: str, reads: Sequence[PolicedRead], passages: Sequence[Passage] = ()
    ) -> bool:
        if session.get(WrittenBatchRow, key) is not None:
            return True
        # Its key may have been pruned (BATCH_KEY_SECONDS) while its reads or passages are still kept.
        return _any_stored(session, ReadRow, [r.key for r in reads]) or _any_stored(
            session, PassageRow, [p.key for p in passages]
        )

    def _written_elsewhere(self, key: str, reads: Sequence[PolicedRead], passages: Sequence[Passage]) -> bool:
        try:
            with Session(self._engine) as session:
                return self._already_written(session, key, reads, passages)
        except SQLAlchemyError:
            return False

    def purge(self, now: float) -> int:
        """Delete every read and every passage whose deadline has passed; the number of rows
        deleted, reads and passages together.

        Batch keys older than BATCH_KEY_SECONDS (wall clock, not `now`) go at the same time.
        """
        cutoff = time.time() - BATCH_KEY_SECONDS
        deleted = self._delete(
            [(table, table.delete_after <= now) for table in KEPT_TABLES], WrittenBatchRow.written_at < cutoff
        )
        if deleted:
            self._scrub()
        return deleted

    def delete_plate(self, plate: str, rule_id: str) -> int:
        """Delete the reads and passages of `plate` kept under `rule_id` (e.g. FPS reads
        matched to a payment); the number of rows deleted, reads and passages together."""
        plate_key = self.keys.plate_digest(plate)
        deleted = self._delete(
            [(table, (table.plate_key == plate_key) & (table.rule_id == rule_id)) for table in KEPT_TABLES]
        )
        if deleted:
            self._scrub()
        return deleted

    def erase_plate(self, plate: str, keep_hits_of: Collection[str] = ()) -> int:
        """Delete every read and passage of `plate` (a data subject's erasure request) but
        the hits kept under the rules `keep_hits_of`; the number of rows deleted. Then
        `scrub_after_erasure`."""
        plate_key = self.keys.plate_digest(plate)
        return self._delete(
            [
                (table, (table.plate_key == plate_key) & ~(table.hit & table.rule_id.in_(list(keep_hits_of))))
                for table in KEPT_TABLES
            ]
        )

    def scrub_after_erasure(self) -> list[str]:
        """After an erasure, make the deleted rows unreadable in every file of the database
        this login can reach; what still holds them, each said in a sentence ([]: nothing).

        SQLite: `_scrub`. PostgreSQL: VACUUM (the tables' owner only), then, where the server
        removes the write-ahead log's old files instead of reusing them (wal_recycle off), a
        switch to a new WAL file and a checkpoint, which retire the files that logged the rows
        (superuser or pg_checkpoint). Measured: after both, no byte of the plate or its
        keyed hash is left in the server's data directory (tests/test_roles.py)."""
        if self._engine.dialect.name != "postgresql":
            self._scrub()
            return []
        left: list[str] = []
        with self._failures("cannot clean up deleted rows in"):
            with self._engine.connect() as conn:
                tables = ", ".join(f"'{table.__tablename__}'::regclass" for table in KEPT_TABLES)
                owner = conn.exec_driver_sql(
                    f"SELECT bool_and(pg_has_role(relowner, 'USAGE')) FROM pg_class WHERE oid IN ({tables})"
                ).scalar()
                recycle = conn.exec_driver_sql("SHOW wal_recycle").scalar()
                archive = conn.exec_driver_sql("SHOW archive_mode").scalar()
            if owner:
                self._scrub()
            else:
                left.append(
                    "the server's table files hold the deleted rows as dead tuples until a VACUUM, which only the "
                    "tables' owner may run (autovacuum, or `anpr db purge` by the owner's login)"
                )
            if recycle == "on":
                left.append(
                    "the server reuses its write-ahead log files (wal_recycle on), which hold the deleted rows until "
                    "overwritten: with wal_recycle = off, an erasure by a login that may CHECKPOINT removes them"
                )
            elif not self._retire_wal():
                left.append(
                    "this login may not switch and checkpoint the write-ahead log (superuser, or pg_checkpoint and "
                    "EXECUTE on pg_switch_wal): its files hold the deleted rows until the server's checkpoints "
                    "retire them"
                )
            if archive != "off":
                left.append("the archived write-ahead log (archive_mode on) keeps them, out of anpr's reach")
        return left

    def _retire_wal(self) -> bool:
        """Start a new write-ahead log file and checkpoint, so that the files that logged the
        deleted rows are removed; False when this login may not."""
        try:
            with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("SELECT pg_switch_wal()")
                conn.exec_driver_sql("CHECKPOINT")
        except DBAPIError as exc:
            if _sqlstate(exc) == REFUSED:
                return False
            raise
        return True

    def _scrub(self) -> None:
        """After a deletion, what makes the deleted rows unreadable in the database's files.

        SQLite (secure_delete on) zeroes freed pages, but in WAL mode the old pages stay
        in the -wal file until a checkpoint: one is forced. PostgreSQL keeps deleted rows
        (and their index entries) as dead tuples until VACUUM, which is run on the kept
        tables; what its write-ahead log still holds is said in docs/commands.md ("Retention everywhere")."""
        with self._failures("cannot clean up deleted rows in"):
            if self._engine.dialect.name == "sqlite":
                with self._engine.connect() as conn:
                    mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
                    if str(mode).lower() == "wal":
                        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            elif self._engine.dialect.name == "postgresql":
                with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    for table in KEPT_TABLES:
                        conn.exec_driver_sql(f"VACUUM {table.__tablename__}")

    def _delete(
        self,
        conditions: Iterable[tuple[type[Base], ColumnElement[bool]]],
        batch_condition: ColumnElement[bool] | None = None,
    ) -> int:
        """Delete, in one transaction, the rows of each table that its condition selects; the number deleted."""
        self._ensure_schema()
        deleted = 0
        with self._failures("cannot delete from database"), Session(self._engine) as session, session.begin():
            if batch_condition is not None:
                session.execute(delete(WrittenBatchRow).where(batch_condition))
            for table, condition in conditions:
                result = cast("CursorResult[Any]", session.execute(delete(table).where(condition)))
                deleted += result.rowcount or 0
        return deleted

    def count(self) -> int:
        return self._count(ReadRow)

    def count_passages(self) -> int:
        return self._count(PassageRow)

    def _count(self, table: type[KeptRow]) -> int:
        self._ensure_schema()
        with self._failures("cannot query database"), Session(self._engine) as session:
            return session.scalar(select(func.count()).select_from(table)) or 0

    def kept_counts(self, now: float, passages: bool = False) -> list[KeptCount]:
        """The reads (with `passages`, the passages) held now, counted per day stored,
        camera, purpose and rule; `overdue`: those whose deadline is at or before `now`."""
        self._ensure_schema()
        table: type[KeptRow] = PassageRow if passages else ReadRow
        day = func.date(table.stored_at)
        groups = (day, table.camera, table.purpose, table.rule_id)
        overdue = func.sum(case((table.delete_after <= now, 1), else_=0))
        query = select(*groups, func.count(), overdue).group_by(*groups).order_by(*groups)
        with self._failures("cannot query database"), Session(self._engine) as session:
            return [
                KeptCount(str(day), camera, purpose, rule_id, int(rows), int(late or 0))
                for day, camera, purpose, rule_id, rows, late in session.execute(query)
            ]

    def reads(
        self,
        source: str | None = None,
        plate: str | None = None,
        purpose: str | None = None,
        alive_at: float | None = None,
    ) -> list[PolicedRead]:
        """The reads stored, in order, of the source, plate and purpose given; with
        `alive_at`, only those whose deadline is after it (a query never sees an expired read)."""
        query = self._select(ReadRow, source, plate, purpose, alive_at)
        with self._failures("cannot query database"), Session(self._engine) as session:
            return [row.to_record() for row in session.scalars(query)]

    def passages(
        self,
        source: str | None = None,
        plate: str | None = None,
        purpose: str | None = None,
        alive_at: float | None = None,
    ) -> list[Passage]:
        """As `reads`, for passages."""
        query = self._select(PassageRow, source, plate, purpose, alive_at)
        with self._failures("cannot query database"), Session(self._engine) as session:
            return [row.to_record() for row in session.scalars(query)]

    def _select(
        self, table: type[Kept], source: str | None, plate: str | None, purpose: str | None, alive_at: float | None
    ) -> Select[Kept]:
        self._ensure_schema()
        query = select(table).order_by(table.id)
        plate_key = None if plate is None else self.keys.plate_digest(plate)
        for column, value in ((table.source, source), (table.plate_key, plate_key), (table.purpose, purpose)):
            if value is not None:
                query = query.where(column == value)
        if alive_at is not None:
            query = query.where(table.delete_after > alive_at)
        return query

    def has_search_function(self) -> bool:
        """Whether queries go through the database's search function (PostgreSQL, once
        `anpr db init-roles` has made it); else `reads` and `passages` are read directly."""
        return self._has_function(SEARCH_FUNCTION)

    def has_subject_functions(self) -> bool:
        """Whether a data subject's requests go through the database's functions for them
        (PostgreSQL, once `anpr db init-roles` has made them)."""
        return self._has_function(SUBJECT_RECORDS_FUNCTION)

    def _has_function(self, name: str) -> bool:
        if self._engine.dialect.name != "postgresql":
            return False
        self._ensure_schema()
        with self._failures("cannot reach database"), self._engine.connect() as conn:
            found = conn.execute(text("SELECT to_regproc(:name) IS NOT NULL"), {"name": name})
            return bool(found.scalar())

    def search_function(
        self, entry: Base, plate: str, purpose: str, procedure: str | None, passages: bool
    ) -> tuple[list[PolicedRead] | list[Passage], int]:
        """The rows of `plate` kept for `purpose` that the database's search function
        returns to this login, and how many no-hit rows it withheld; it inserts `entry`
        (the query's audit entry, an audit.AuditEntry, made with the key, which the database does not hold) in
        the same transaction. Raises FunctionRefused or StaleAuditEntry (roles.py)."""
        arguments = {
            "purpose": purpose,
            "plate_key": self.keys.plate_digest(plate),
            "procedure": procedure,
            "passages": passages,
        }
        found = self._call(SEARCH_FUNCTION, arguments, entry, "cannot query database")
        rows = found["rows"]
        reads, passage_rows = _records([] if passages else rows, rows if passages else [])
        return (passage_rows if passages else reads), int(found["withheld"])

    def subject_records_function(self, entry: Base, forms: Sequence[str]) -> tuple[list[PolicedRead], list[Passage]]:
        """Every read and passage of the plate in any of its `forms`, as the database's
        function for a data subject's access request returns them to this login (a
        data-protection officer); it inserts `entry` (audit.AuditEntry) in the same transaction."""
        arguments = {"plate_keys": [self.keys.plate_digest(form) for form in forms]}
        found = self._call(SUBJECT_RECORDS_FUNCTION, arguments, entry, "cannot query database")
        return _records(found["reads"], found["passages"])

    def subject_erase_function(
        self, entry: Base, forms: Sequence[str], reason: str | None
    ) -> tuple[int, list[PolicedRead], list[Passage]]:
        """Delete every read and passage of the plate in any of its `forms` but the hits
        a rule keeps, through the database's function for a data subject's erasure request;
        the rows deleted, and the reads and passages kept. It inserts `entry` in the same
        transaction. Then `scrub_after_erasure`."""
        arguments = {"plate_keys": [self.keys.plate_digest(form) for form in forms], "reason": reason}
        found = self._call(SUBJECT_ERASE_FUNCTION, arguments, entry, "cannot erase from database")
        return int(found["deleted"]), *_records(found["reads"], found["passages"])

    def _call(self, function: str, arguments: dict[str, Any], entry: Base, failure: str) -> Any:
        """`function`'s answer to `arguments` and the audit `entry` it inserts; FunctionRefused,
        StaleAuditEntry, or the store's error for any other failure."""
        self._ensure_schema()
        entry_fields = ("seq", "at", "actor", "action", "details", "prev_hash", "entry_hash")
        arguments = {**arguments, **{name: getattr(entry, name) for name in entry_fields}}
        call = f"SELECT {function}({', '.join(f'p_{name} => :{name}' for name in arguments)})"
        try:
            with self._engine.begin() as conn:
                return conn.execute(text(call), arguments).scalar_one()
        except DBAPIError as exc:
            state = _sqlstate(exc)
            diag = getattr(exc.orig, "diag", None)
            message = getattr(diag, "message_primary", None) or first_line(exc)
            if state == STALE_ENTRY:
                raise StaleAuditEntry(message) from None
            if state == REFUSED:
                raise FunctionRefused(message) from None
            raise database_error(exc)(f"{failure} {self.safe_url}: {first_line(exc)}") from None
        except SQLAlchemyError as exc:
            raise database_error(exc)(f"{failure} {self.safe_url}: {first_line(exc)}") from None

    def binding(self) -> DeploymentBindingRow | None:
        """The deployment this database serves (None before its first run)."""
        self._ensure_schema()
        with self._failures("cannot query database"), Session(self._engine, expire_on_commit=False) as session:
            return session.scalars(
                select(DeploymentBindingRow).order_by(DeploymentBindingRow.id.desc()).limit(1)
            ).first()

    def user(self) -> str:
        """Who is asking, as authenticated: the database login on a server, the operating
        system account for a SQLite file (whose file permissions are its only access control)."""
        if self._engine.dialect.name == "sqlite":
            return pwd.getpwuid(os.geteuid()).pw_name
        with self._failures("cannot reach database"), self._engine.connect() as conn:
            return str(conn.exec_driver_sql("SELECT session_user").scalar())

    def policy_counts(self) -> list[tuple[CountKey, int]]:
        self._ensure_schema()
        with self._failures("cannot query database"), Session(self._engine) as session:
            rows = session.scalars(select(PolicyCountRow).order_by(PolicyCountRow.id))
            return [
                (CountKey.from_dict({c.key: getattr(r, c.key) for c in r.__table__.columns}), r.count) for r in rows
            ]

    def close(self) -> None:
        self._engine.dispose()


def _from_json(table: type[KeptRow], row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as the search function returns it (JSON) as the table's attributes; when it was
    stored is left out (no record holds it)."""
    columns = table.__table__.columns  # type: ignore[attr-defined]  # mapped subclasses have a table
    return {column.key: row[column.name] for column in columns if column.name != "stored_at"}


def _sqlstate(exc: DBAPIError) -> str | None:
    """The SQLSTATE PostgreSQL answered with (psycopg names it `sqlstate`, psycopg2 `pgcode`)."""
    return getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)


def _records(
    reads: list[Mapping[str, Any]], passages: list[Mapping[str, Any]]
) -> tuple[list[PolicedRead], list[Passage]]:
    """Rows as a database function returns them (JSON), as records."""
    return (
        [ReadRow(**_from_json(ReadRow, row)).to_record() for row in reads],
        [PassageRow(**_from_json(PassageRow, row)).to_record() for row in passages],
    )


def _any_stored(session: Session, row: type[KeptRow], keys: list[str]) -> bool:
    return bool(keys) and session.scalar(select(row.id).where(row.key.in_(keys)).limit(1)) is not None


def _create_private(path: Path) -> None:
    """Create an empty SQLite file as anpr's private file (anpr/files.py; SQLite would follow
    the umask); an existing file is left as it is."""
    try:
        create_file(path)
    except OSError as exc:
        raise StoreError(f"cannot create database {path}: {exc.strerror or exc}") from None


def _sqlite_secure_delete(connection, _record) -> None:
    # A deleted row otherwise stays readable in the file's free pages: retention would
    # delete the read in name only.
    connection.execute("PRAGMA secure_delete = ON")


def _watch_file(engine: Engine, path: Path) -> None:
    """Tell a SQLite file deleted or replaced while anpr uses it from a database that refuses a
    write: SQLite then says only "attempt to write a readonly database" (its connections keep
    the old file, which no path leads to any more). That database is gone for this process:
    DatabaseUnavailable, so that a run keeps the rest of its reads in the spool for the next
    run with a database at that path; and no new connection is made, which would create an
    empty database there."""
    opened: list[tuple[int, int] | None] = []  # the file's identity when first connected to

    def gone() -> str | None:
        try:
            now = _identity(path)
        except OSError:  # cannot be told (a folder no longer searchable): the error says what it is
            return None
        if not opened or now == opened[0]:
            return None
        what = "deleted" if now is None else "replaced by another file"
        return f"database file {path} was {what} while anpr was using it"

    @event.listens_for(engine, "do_connect")
    def connecting(*_: Any) -> None:
        if (reason := gone()) is not None:
            raise DatabaseUnavailable(reason)

    @event.listens_for(engine, "connect")
    def connected(*_: Any) -> None:
        if not opened:
            opened.append(_identity(path))

    @event.listens_for(engine, "handle_error")
    def failed(context: Any) -> None:
        if (reason := gone()) is not None:
            raise DatabaseUnavailable(reason)


def _identity(path: Path) -> tuple[int, int] | None:
    """The file's device and inode; None if there is none."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


# SQLite reports a schema mismatch, and a file it may not write, as an OperationalError
# too: that is no outage.
_SQLITE_REFUSALS = ("no such table", "no such column", "has no column named", "syntax error", "readonly database")


def is_unavailable(exc: BaseException) -> bool:
    """Whether a SQLAlchemy error means the database cannot be reached now (so retrying
    later may succeed), rather than that it refused the statement."""
    if isinstance(exc, DisconnectionError):
        return True
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return False
    if getattr(exc, "connection_invalidated", False):
        return True
    return not any(text in str(exc) for text in _SQLITE_REFUSALS)


def database_error(exc: BaseException) -> type[StoreError]:
    """The error a database failure is, for the store, the spool and the audit log alike:
    DatabaseUnavailable when the database cannot be reached now or did not answer in time
    (the run goes on, its reads spooled), StoreError when it refused."""
    return DatabaseUnavailable if is_unavailable(exc) else StoreError


# --- bounded calls to PostgreSQL -------------------------------------------------------------


def bounded_engine(url: URL, timeout: float = DATABASE_TIMEOUT_SECONDS) -> Engine:
    """An engine for `url` whose every call to the database gives up after about `timeout`
    seconds (see ReadStore); bound parameters given in the URL are left as they are."""
    connect_args: dict[str, Any] = {}
    libpq = url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg", "psycopg2")
    if libpq:
        connect_args = {k: v for k, v in _libpq_bounds(timeout).items() if k not in url.query}
    elif url.get_backend_name() == "sqlite":
        connect_args["timeout"] = timeout  # the busy timeout: how long a write waits for another's lock
    engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    if libpq and url.get_driver_name() == "psycopg":
        _bound_psycopg(engine, timeout)
    return engine


def _libpq_bounds(timeout: float) -> dict[str, Any]:
    """The connection parameters that bound a PostgreSQL connection's calls to `timeout` s."""
    statement_ms, lock_ms = (round(timeout * share * 1000) for share in (STATEMENT_SHARE, LOCK_SHARE))
    return {
        # libpq counts whole seconds, at least 2.
        "connect_timeout": max(2, math.ceil(timeout)),
        "options": f"-c statement_timeout={statement_ms} -c lock_timeout={lock_ms}",
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_SECONDS,
        "keepalives_interval": KEEPALIVE_INTERVAL_SECONDS,
        "keepalives_count": KEEPALIVE_COUNT,
    }


class _Watchdog:
    """One thread that cuts the connection of a database round trip that outlasts its deadline.

    A server that is stopped (SIGSTOP, a hung host) or cut off without a reset answers
    nothing, while its kernel, or none at all, leaves the client's socket waiting in peace:
    the server's statement_timeout never runs, keepalives and tcp_user_timeout see a healthy
    peer or take minutes. Only the client can give up: shutting the socket down wakes the
    waiting call, which fails as for a lost connection (and SQLAlchemy drops the pool's
    other connections to that server with it).
    """

    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, Callable[[], None]]] = {}
        self._changed = threading.Condition()
        self._tokens = 0
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, cut: Callable[[], None]) -> int:
        """Call `cut` in `seconds` unless disarmed first; a token for `disarm`."""
        deadline = time.monotonic() + seconds
        with self._changed:
            earliest = min((d for d, _ in self._armed.values()), default=math.inf)
            self._tokens += 1
            self._armed[self._tokens] = (deadline, cut)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="anpr-database-watchdog", daemon=True)
                self._thread.start()
            elif deadline < earliest:
                self._changed.notify()
            return self._tokens

    def disarm(self, token: int) -> bool:
        """Whether the round trip ended before its deadline (False: its connection was cut)."""
        with self._changed:
            return self._armed.pop(token, None) is not None

    def _watch(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for token, (deadline, cut) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        cut()
                earliest = min((d for d, _ in self._armed.values()), default=None)
                self._changed.wait(None if earliest is None else earliest - now)


_WATCHDOG = _Watchdog()


def _bound_psycopg(engine: Engine, timeout: float) -> None:
    """Make `engine` open psycopg connections whose every round trip is bounded to
    `timeout` s by the watchdog (the connection itself is bounded by connect_timeout)."""
    import psycopg

    class NoAnswer(psycopg.OperationalError):
        """The server did not answer in time: the watchdog cut the connection."""

    class BoundedConnection(psycopg.Connection[Any]):
        # psycopg runs every exchange with the server (statements, fetches, commit,
        # rollback, SQLAlchemy's ping) through `wait`.
        def wait(self, *args: Any, **kwargs: Any) -> Any:
            token = _WATCHDOG.arm(timeout, self._cut)
            try:
                return super().wait(*args, **kwargs)
            except psycopg.OperationalError:
                if not _WATCHDOG.disarm(token):
                    raise NoAnswer(f"no answer within {timeout:g} s (store.timeout_seconds)") from None
                raise
            finally:
                _WATCHDOG.disarm(token)

        def _cut(self) -> None:
            try:
                with socket.socket(fileno=os.dup(self.pgconn.socket)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except (OSError, psycopg.Error):
                pass  # already closed: the wait ends by itself

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        return BoundedConnection.connect(*cargs, **cparams)

    @event.listens_for(engine, "handle_error")
    def no_second_try(context: Any) -> None:
        # SQLAlchemy reconnects at once when its ping finds a connection lost: after a
        # ping that got no answer, that would wait for a second bound (connect_timeout)
        # in the same call. The error goes up instead, and the next call reconnects.
        if context.is_pre_ping and isinstance(context.original_exception, NoAnswer):
            context.is_disconnect = False

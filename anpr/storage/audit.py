"""An append-only, tamper-evident audit log, kept in the same database as the reads.

Each entry holds the hash of the entry before it, which makes the log a hash chain:
changing, removing or moving any entry breaks the chain at that entry, and `verify()`
says which entry and how.

The hash of an entry is the hex HMAC-SHA256, under the audit key of the deployment's key
file (keys.py, kept outside the database), of this UTF-8 text (fields joined by "\\n")::

    prev_hash + "\\n" + str(seq) + "\\n" + format(at, ".6f") + "\\n" + actor + "\\n" + action + "\\n" + details

- `seq` is 1, 2, 3, ... in the order of appending;
- `prev_hash` is the `entry_hash` of entry seq-1, and "0" * 64 for entry 1;
- `at` is Unix time in seconds, rounded to the microsecond when appended;
- `details` is canonical JSON:
  json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False).

Canonical JSON never holds a raw newline, and `append` refuses an actor or action that
does, so the text splits back into its fields one way only: no two different entries
share it.

Three layers protect the log:

1. Database triggers reject UPDATE and DELETE on audit_log (and TRUNCATE on
   PostgreSQL), so neither a bug nor an ordinary client can change it; `verify` reports
   a trigger that is missing or disabled.
   On PostgreSQL with the roles of `anpr db init-roles` (roles.py), the pipeline and
   the agents may only read and append, and an agent's query is appended by the
   database's search function from an entry made here (`append_through`).
2. Someone who can drop the triggers can change rows, but not without breaking the
   chain, which `verify()` finds: recomputing the hashes needs the key, which the
   database does not hold.
3. What no chain can show on its own, the newest entries removed (truncation) or the
   whole table replaced by a fresh chain, is shown by checkpoints: (database, seq,
   entry_hash) lines, authenticated with the key, appended to a file outside the
   database (`store.audit_checkpoints`) at the end of every run and every
   CHECKPOINT_EVERY entries. `verify --checkpoints FILE` checks the log against them.
   A checkpoint names its database by the id stored in it (anpr/storage/identity.py) and by
   where it is (DatabaseName), so no other spelling of its URL escapes its checkpoints.
   A line is appended whole or not at all (anpr/files.py); a damaged line (a crash
   mid-write, or an edit) is reported as a problem, and the other lines still checked.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import DDL, Double, Integer, String, Table, Text, event, inspect, select, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from anpr.errors import StoreError, first_line
from anpr.files import append as append_lines
from anpr.storage.identity import database_identity
from anpr.storage.keys import Keys
from anpr.storage.store import Base, StaleAuditEntry, bounded_engine, database_error, database_url, shown_url

GENESIS = "0" * 64
TABLE = "audit_log"
CHECKPOINT_EVERY = 100  # entries between two checkpoints written by append itself
# PostgreSQL advisory lock that appenders hold while they read the last entry and insert
# the next: any login may take it (LOCK TABLE in a mode that conflicts with itself needs
# UPDATE, DELETE or TRUNCATE on the table, which no role of roles.py has), and the
# search function of roles.py takes it too. "anpraudt" in ASCII.
APPEND_LOCK = 0x616E707261756474
T = TypeVar("T")
# The triggers that keep the table append-only, by dialect (verify checks they are in place).
TRIGGERS = {
    "sqlite": ("audit_log_no_update", "audit_log_no_delete"),
    "postgresql": ("audit_log_append_only", "audit_log_no_truncate"),
}


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

    def computed_hash(self, keys: Keys, seq: int | None = None) -> str:
        """The hash this entry's content should have (at `seq` instead of its own, if given)."""
        return chain_hash(
            keys, self.prev_hash, self.seq if seq is None else seq, self.at, self.actor, self.action, self.details
        )


def chain_hash(keys: Keys, prev_hash: str, seq: int, at: float, actor: str, action: str, details: str) -> str:
    """The entry hash of the module docstring; `details` is the stored canonical JSON text."""
    return keys.audit_mac("\n".join([prev_hash, str(seq), format(at, ".6f"), actor, action, details]))


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
                      chain (its hash matches its content at the position its links give);
          "unprotected" an append-only trigger is missing or disabled (seq 0);
          "truncated" a checkpoint names an entry the log no longer has;
          "rewritten" the log's entry at a checkpoint's seq is not the one checkpointed
                      (rewritten with the key, or a fresh chain started);
          "checkpoint" the checkpoint file is unreadable, forged, or has no checkpoint of
                      this database (seq 0 or the checkpoint's seq).
    """

    seq: int
    kind: str
    message: str


class AuditLog:
    """The audit log of one database, authenticated with `keys` (keys.py), its checkpoints
    appended to the file `checkpoints` (None: no checkpoints)."""

    def __init__(self, engine: Engine, keys: Keys, checkpoints: str | Path | None = None) -> None:
        self.engine = engine
        self.keys = keys
        self.checkpoints = Path(checkpoints) if checkpoints else None
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
        session is flushed. Without it, the entry is committed in its own transaction,
        and every CHECKPOINT_EVERY entries a checkpoint follows.
        """
        body, at = _checked(action, actor, details, at)
        if session is not None:
            with _errors("cannot write the audit log to database", session.get_bind()):
                return _append(session, self.keys, action, actor, body, at)
        with (
            _errors("cannot write the audit log to database", self.engine),
            Session(self.engine, expire_on_commit=False) as own,
            own.begin(),
        ):
            entry = _append(own, self.keys, action, actor, body, at)
        if entry.seq % CHECKPOINT_EVERY == 0:
            self._write_checkpoint(entry)
        return entry

    def append_through(
        self, insert: Callable[[AuditEntry], T], action: str, actor: str, details: dict[str, Any], attempts: int = 5
    ) -> T:
        """Append an entry that `insert` writes, and return what `insert` returns.

        For a writer that holds no key: the database's search function (roles.py) inserts
        the entry of the query it answers, in the query's transaction. The entry is made
        here, as the next one of the log, and made again while `insert` raises
        StaleAuditEntry (another entry came first).
        """
        body, _ = _checked(action, actor, details, None)
        for _ in range(attempts):
            at = round(time.time(), 6)
            with (
                _errors("cannot read the audit log from database", self.engine),
                Session(self.engine, expire_on_commit=False) as session,
            ):
                entry = _next_entry(session, self.keys, action, actor, body, at)
            try:
                result = insert(entry)
            except StaleAuditEntry:
                continue
            if entry.seq % CHECKPOINT_EVERY == 0:
                self._write_checkpoint(entry)
            return result
        raise StoreError(
            f"cannot write the audit log to database {_safe(self.engine)}: "
            f"other entries came first {attempts} times in a row"
        )

    def entries(self) -> list[AuditEntry]:
        with _errors("cannot read the audit log from database", self.engine), Session(self.engine) as session:
            return list(session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))

    def verify(self, checkpoints: str | Path | None = None) -> list[AuditProblem]:
        """Every break in the chain, in seq order, then missing triggers and every
        disagreement with the checkpoint file given; [] for an intact log."""
        return _problems(self.engine, self.entries(), self.keys, checkpoints)

    def checkpoint(self) -> Checkpoint | None:
        """Write a checkpoint of the newest entry to the checkpoint file (if there is one and any entry)."""
        with _errors("cannot read the audit log from database", self.engine), Session(self.engine) as session:
            last = session.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).first()
        return self._write_checkpoint(last) if last is not None else None

    def _write_checkpoint(self, entry: AuditEntry) -> Checkpoint | None:
        if self.checkpoints is None:
            return None
        point = Checkpoint.of(self.keys, str(_identity(self.engine)), entry.seq, entry.entry_hash)
        try:
            append_lines(self.checkpoints, (json.dumps(point.to_dict()) + "\n").encode("utf-8"))
        except OSError as exc:
            raise StoreError(
                f"cannot write audit checkpoint to {self.checkpoints}: {exc.strerror or exc} (store.audit_checkpoints)"
            ) from None
        return point


@dataclass(frozen=True)
class Checkpoint:
    """The newest entry of a database's audit log at one moment, authenticated with the key."""

    database: str  # str(DatabaseName) of its database (_identity)
    seq: int
    entry_hash: str
    at: float
    mac: str

    @classmethod
    def of(cls, keys: Keys, database: str, seq: int, entry_hash: str) -> Checkpoint:
        at = round(time.time(), 3)
        return cls(database, seq, entry_hash, at, keys.audit_mac(cls._payload(database, seq, entry_hash, at)))

    @staticmethod
    def _payload(database: str, seq: int, entry_hash: str, at: float) -> str:
        return "\n".join(["checkpoint", database, str(seq), entry_hash, format(at, ".3f")])

    @property
    def named(self) -> DatabaseName:
        return DatabaseName.parse(self.database)

    def authentic(self, keys: Keys) -> bool:
        expected = keys.audit_mac(self._payload(self.database, self.seq, self.entry_hash, self.at))
        return hmac.compare_digest(expected, self.mac)

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "seq": self.seq,
            "entry_hash": self.entry_hash,
            "at": self.at,
            "mac": self.mac,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(
            str(data["database"]), int(data["seq"]), str(data["entry_hash"]), float(data["at"]), str(data["mac"])
        )


def _checked(action: str, actor: str, details: dict[str, Any], at: float | None) -> tuple[str, float]:
    """An entry's details as canonical JSON and its time as stored, once its fields are checked."""
    for name, value in (("actor", actor), ("action", action)):
        # A newline would let two different (actor, action) pairs hash alike; NUL
        # cannot be stored in PostgreSQL text.
        if not isinstance(value, str) or "\n" in value or "\x00" in value:
            raise ValueError(f"audit {name} must be text without newlines or NUL: {value!r}")
    if not isinstance(details, dict):
        raise TypeError(f"audit details must be a dict, not {type(details).__name__}")
    at = time.time() if at is None else float(at)
    if not math.isfinite(at):
        raise ValueError(f"audit time must be finite: {at!r}")
    # Rounded so the stored number is exactly what the hash says (see verify).
    return canonical_json(details), round(at, 6)


def _next_entry(session: Session, keys: Keys, action: str, actor: str, body: str, at: float) -> AuditEntry:
    """The entry that would follow the last one the session sees (not added to it)."""
    last = session.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).first()
    seq = last.seq + 1 if last else 1
    prev = last.entry_hash if last else GENESIS
    return AuditEntry(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        details=body,
        prev_hash=prev,
        entry_hash=chain_hash(keys, prev, seq, at, actor, action, body),
    )


def _append(session: Session, keys: Keys, action: str, actor: str, body: str, at: float) -> AuditEntry:
    # Two appenders would both read the same last entry, and the second insert would fail
    # on the seq key. Taking the write lock before reading makes them take turns (it is
    # released at commit or rollback); readers go on.
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK})
    elif dialect == "sqlite":
        # SQLite has no LOCK TABLE: a write that touches no row (so fires no trigger)
        # opens the transaction and takes the database's write lock.
        session.execute(text(f"UPDATE {TABLE} SET seq = seq WHERE 0"))
    entry = _next_entry(session, keys, action, actor, body, at)
    session.add(entry)
    # Now, not at commit: a clash shows here, and a later append in this session sees it.
    session.flush()
    return entry


def check_chain(entries: Sequence[AuditEntry], keys: Keys) -> list[AuditProblem]:
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
        if not _intact(entry, keys):
            bad_content.add(n)
            place = positions.get(n)
            moved = place is not None and place != n and _on_grid(entry.at)
            if moved and entry.computed_hash(keys, place) == entry.entry_hash:
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


def _intact(entry: AuditEntry, keys: Keys) -> bool:
    return _on_grid(entry.at) and hmac.compare_digest(entry.computed_hash(keys), entry.entry_hash)


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


def check_triggers(engine: Engine) -> list[AuditProblem]:
    """A problem for each append-only trigger of the dialect that is missing or disabled."""
    names = TRIGGERS.get(engine.dialect.name)
    if names is None:
        return []
    with _errors("cannot read the triggers of database", engine), engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            query = text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :table")
        else:
            # tgenabled 'D': disabled (ALTER TABLE ... DISABLE TRIGGER); 'O', 'A', 'R': fires.
            query = text(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(:table) AND tgenabled <> 'D' "
                "AND NOT tgisinternal"
            )
        active = {row[0] for row in conn.execute(query, {"table": TABLE})}
    return [
        AuditProblem(0, "unprotected", f"trigger {name} is missing or disabled: the log can be changed")
        for name in names
        if name not in active
    ]


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint file's checkpoints, and the numbers of its lines that are none."""

    points: list[Checkpoint]
    damaged: list[int]


def read_checkpoints(path: Path) -> CheckpointFile:
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise StoreError(f"cannot read checkpoint file {path}: {exc.strerror or exc}") from None
    points, damaged = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            points.append(Checkpoint.from_dict(json.loads(line.decode("utf-8"))))
        except (ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
            damaged.append(number)
    return CheckpointFile(points, damaged)


def checkpoints_of(path: Path, database: DatabaseName) -> list[Checkpoint]:
    """The distinct checkpoints of `database` in the file at `path`."""
    return _distinct(p for p in read_checkpoints(path).points if database.names(p.named))


def _distinct(points: Iterable[Checkpoint]) -> list[Checkpoint]:
    # The same entry is checkpointed again by every command that adds none: once is enough.
    return list({(p.seq, p.entry_hash, p.mac): p for p in points}.values())


def check_checkpoints(
    entries: Sequence[AuditEntry], keys: Keys, path: Path, database: DatabaseName
) -> list[AuditProblem]:
    """The log (its entries) against the checkpoints of `database` in the file at `path`."""
    by_seq = {entry.seq: entry for entry in entries}
    last = entries[-1].seq if entries else 0
    read = read_checkpoints(path)
    # A damaged line may be a checkpoint someone wanted gone: it cannot count as none.
    problems = [
        AuditProblem(
            0,
            "checkpoint",
            f"{path}: line {number} is damaged, not a checkpoint (a write cut short, or an edit); "
            f"the other lines were checked",
        )
        for number in read.damaged
    ]
    mine = _distinct(p for p in read.points if database.names(p.named))
    replaced = [p for p in read.points if p.named.location == database.location and not database.names(p.named)]
    replaced = [p for p in _distinct(replaced) if p.authentic(keys)]
    if replaced:
        newest = max(replaced, key=lambda p: p.seq)
        problems.append(
            AuditProblem(
                newest.seq,
                "rewritten",
                f"{path} holds {len(replaced)} checkpoint(s) of another database at {database.location} "
                f"(id {newest.named.id}, up to entry {newest.seq} at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(newest.at))} UTC): this one replaced it",
            )
        )
    if not mine:
        return [*problems, AuditProblem(0, "checkpoint", f"{path} holds no checkpoint of database {database.shown}")]
    for point in mine:
        if not point.authentic(keys):
            problems.append(
                AuditProblem(point.seq, "checkpoint", f"checkpoint of entry {point.seq} is forged (its MAC is wrong)")
            )
        elif point.seq not in by_seq:
            problems.append(
                AuditProblem(
                    point.seq,
                    "truncated",
                    f"a checkpoint records entry {point.seq}, but the log "
                    + (f"ends at entry {last}: entries were removed" if point.seq > last else "has no such entry"),
                )
            )
        elif not hmac.compare_digest(by_seq[point.seq].entry_hash, point.entry_hash):
            problems.append(
                AuditProblem(
                    point.seq,
                    "rewritten",
                    f"entry {point.seq} is not the entry checkpointed at "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(point.at))} UTC: the log was rewritten "
                    f"or replaced by a fresh chain",
                )
            )
    return problems


@dataclass(frozen=True)
class AuditState:
    """What `anpr audit verify` finds in a database: its log's entries (in seq order), every
    problem (AuditProblem; none: intact), and the checkpoint file checked against, with the
    number of distinct checkpoints of this database it holds."""

    entries: list[AuditEntry]
    problems: list[AuditProblem]
    checkpoints: Path | None = None
    checkpointed: int = 0

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def last_seq(self) -> int:
        return self.entries[-1].seq if self.entries else 0

    def summary(self) -> str:
        """The verdict in one line, as `anpr audit verify` ends."""
        entries = f"{len(self.entries)} entries"
        if self.problems:
            return f"{entries}, {len(self.problems)} problem(s)"
        against = (
            f", and agrees with the {self.checkpointed} checkpoint(s) in {self.checkpoints}"
            if self.checkpoints
            else " (no checkpoint file given)"
        )
        return f"{entries}, chain intact, triggers in place{against}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "entries": len(self.entries),
            "last_seq": self.last_seq,
            "intact": self.intact,
            "problems": [{"seq": p.seq, "kind": p.kind, "message": p.message} for p in self.problems],
            "checkpoints": None if self.checkpoints is None else str(self.checkpoints),
            "checkpointed": self.checkpointed,
        }


def checkpoint_file(given: str | Path | None, configured: str | Path) -> Path | None:
    """The checkpoint file to verify against: the one given, else the config's
    (store.audit_checkpoints) when it exists, else none."""
    if given is not None:
        return Path(given)
    return Path(configured) if Path(configured).is_file() else None


def verify_database(
    url: str, keys: Keys | Callable[[], Keys], checkpoints: str | Path | None = None
) -> list[AuditProblem]:
    """Verify the audit log of a database given as a SQLAlchemy URL or a SQLite file path
    (chain, triggers, and the checkpoint file if given): its problems (inspect_database)."""
    return inspect_database(url, keys, checkpoints).problems


def inspect_database(url: str, keys: Keys | Callable[[], Keys], checkpoints: str | Path | None = None) -> AuditState:
    """The audit log of a database given as a SQLAlchemy URL or a SQLite file path, verified
    (chain, triggers, and the checkpoint file if given). `keys` may be what loads them,
    called once the database is found to hold a log.

    Read-only: it creates neither a file nor a table.
    """
    url = database_url(url)
    try:
        parsed = make_url(url)
        # Connecting would create an empty file; a missing file is a mistake to report.
        local_file = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
        if local_file and not Path(str(parsed.database)).is_file():
            raise StoreError(f"database not found: {parsed.database}")
        engine = bounded_engine(parsed)
    except (ArgumentError, ImportError, ValueError) as exc:
        raise StoreError(f"invalid database URL {shown_url(url)!r}: {first_line(exc)}") from None
    try:
        with _errors("cannot open database", engine):
            has_log = inspect(engine).has_table(TABLE)
            if not has_log and checkpoints is None:
                raise StoreError(f"database {_safe(engine)} has no audit log (table {TABLE})")
            keys = keys if isinstance(keys, Keys) else keys()
            _require_key(engine, keys)
            entries: list[AuditEntry] = []
            if has_log:
                with Session(engine) as session:
                    entries = list(session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))
        if not has_log:  # a dropped log: its checkpoints say what was there
            problems = check_checkpoints([], keys, Path(str(checkpoints)), _identity(engine))
        else:
            problems = _problems(engine, entries, keys, checkpoints)
        if checkpoints is None:
            return AuditState(entries, problems)
        checkpointed = len(checkpoints_of(Path(checkpoints), _identity(engine)))
        return AuditState(entries, problems, Path(checkpoints), checkpointed)
    finally:
        engine.dispose()


def _problems(
    engine: Engine, entries: Sequence[AuditEntry], keys: Keys, checkpoints: str | Path | None
) -> list[AuditProblem]:
    problems = check_chain(entries, keys) + check_triggers(engine)
    if checkpoints is not None:
        problems += check_checkpoints(entries, keys, Path(checkpoints), _identity(engine))
    return problems


@contextmanager
def _errors(what: str, engine: Any) -> Iterator[None]:
    """Database failures as one-line errors that name the database, classified as the
    store's are: DatabaseUnavailable when it cannot be reached (store.database_error)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise database_error(exc)(f"{what} {_safe(engine)}: {first_line(exc)}") from None


def _require_key(engine: Engine, keys: Keys) -> None:
    """Refuse a key that is not the one the database was bound with (anpr/storage/identity.py): under
    it, every entry would read as edited."""
    bound = database_identity(engine)
    if bound is not None and not hmac.compare_digest(bound.key_fingerprint, keys.fingerprint()):
        raise StoreError(
            f"the key file (store.key_file) is not the key of database {_safe(engine)}: it was first run with key "
            f"{bound.key_fingerprint[:12]}, this is key {keys.fingerprint()[:12]}; give the key file it was run with"
        )


@dataclass(frozen=True)
class DatabaseName:
    """What a checkpoint names its database by: where it is (its URL without the login,
    password and options, since the pipeline, the agents and the auditor each connect with
    their own login; a SQLite file by its real path) and, once bound, the id stored in it
    (anpr/storage/identity.py), which names it however its URL is spelled and wherever it moves.
    Written "location#id" ("location" alone before the database was bound)."""

    location: str
    id: str | None = None

    def __str__(self) -> str:
        return f"{self.location}#{self.id}" if self.id else self.location

    @property
    def shown(self) -> str:
        return f"{self.location} (id {self.id})" if self.id else self.location

    @classmethod
    def parse(cls, text: str) -> DatabaseName:
        named = _NAMED.fullmatch(text)  # a path may hold a "#" too: an id is 32 hex digits
        return cls(_canonical(named[1]), named[2]) if named else cls(_canonical(text))

    def names(self, other: DatabaseName) -> bool:
        """Whether a checkpoint naming `other` is of this database: by id when both have one;
        by location when either has none (a checkpoint from before the database was bound,
        or a database that lost its identity, or another in its place: compared with it)."""
        if self.id and other.id:
            return self.id == other.id
        return self.location == other.location


_NAMED = re.compile(r"(.*)#([0-9a-f]{32})", re.DOTALL)


def _canonical(location: str) -> str:
    """A database's location spelled one way: a SQLite file by its real path (no `..`, `//`, link)."""
    try:
        url = make_url(location)
    except ArgumentError:
        return location
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        url = url.set(database=os.path.realpath(str(url.database)))
    return url.render_as_string()


def _identity(engine: Engine) -> DatabaseName:
    """The database's name in checkpoints (DatabaseName)."""
    url = engine.url
    location = URL.create(url.drivername, host=url.host, port=url.port, database=url.database).render_as_string()
    with _errors("cannot read the identity of database", engine):
        bound = database_identity(engine)
    return DatabaseName(_canonical(location), bound.database_id if bound else None)


def _safe(engine: Any) -> str:
    url = getattr(engine, "url", None)
    return shown_url(url) if url is not None else "(unknown)"

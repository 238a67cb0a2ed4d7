"""Storage of reads with SQLAlchemy 2: SQLite by default, any SQLAlchemy URL otherwise.

Reads are written in batches, one transaction per batch. Nothing is created on disk
until the first batch is written, so a run that fails on bad input leaves no file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import json

from sqlalchemy import Boolean, Float, Integer, String, Text, UniqueConstraint, create_engine, delete, event, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from anpr.errors import StoreError
from anpr.plates import PlateRead
from anpr.policy.gate import CountKey, Outcome, PolicedRead

DEFAULT_DATABASE = "anpr.sqlite"


class Base(DeclarativeBase):
    pass


class ReadRow(Base):
    """One read kept for one purpose, with the deadline by which it must be gone."""

    __tablename__ = "reads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(1024), index=True)
    camera: Mapped[str] = mapped_column(String(128), index=True)
    purpose: Mapped[str] = mapped_column(String(64), index=True)
    rule_id: Mapped[str] = mapped_column(String(32))
    delete_after: Mapped[float] = mapped_column(Float, index=True)  # Unix time
    hit: Mapped[bool] = mapped_column(Boolean, default=False)
    frame: Mapped[int] = mapped_column(Integer)
    time: Mapped[float] = mapped_column(Float, index=True)
    plate: Mapped[str] = mapped_column(String(32), index=True)
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
    candidates: Mapped[str] = mapped_column(Text, default="[]")  # JSON [[text, probability], ...]
    country: Mapped[str | None] = mapped_column(String(32), nullable=True)
    format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    stored_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(timezone.utc))

    @classmethod
    def from_policed(cls, policed: PolicedRead) -> ReadRow:
        read = policed.read
        x1, y1, x2, y2 = read.box
        return cls(
            source=read.source, camera=policed.camera, purpose=policed.purpose, rule_id=policed.rule_id,
            delete_after=policed.delete_after, hit=policed.hit,
            frame=read.frame, time=read.time, plate=read.plate, raw_text=read.raw_text,
            confidence=read.confidence, ocr_confidence=read.ocr_confidence,
            detector_confidence=read.detector_confidence, x1=x1, y1=y1, x2=x2, y2=y2,
            detector_model=read.detector_model, ocr_model=read.ocr_model,
            candidates=json.dumps([[t, p] for t, p in read.candidates]), country=read.country, format=read.format,
        )

    def to_policed(self) -> PolicedRead:
        read = PlateRead(
            source=self.source, frame=self.frame, time=self.time, plate=self.plate, raw_text=self.raw_text,
            confidence=self.confidence, ocr_confidence=self.ocr_confidence,
            detector_confidence=self.detector_confidence, box=(self.x1, self.y1, self.x2, self.y2),
            detector_model=self.detector_model, ocr_model=self.ocr_model,
            candidates=tuple((t, p) for t, p in json.loads(self.candidates or "[]")),
            country=self.country, format=self.format,
        )
        return PolicedRead(read, self.camera, self.purpose, self.rule_id, self.delete_after, self.hit)


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


def database_url(target: str | None) -> str:
    """A SQLAlchemy URL from `--db`: a URL as is, a plain path as a SQLite file."""
    target = target or DEFAULT_DATABASE
    if "://" in target:
        return target
    return f"sqlite:///{Path(target).expanduser().resolve()}"


class ReadStore:
    """The read table of one database."""

    def __init__(self, target: str | None = None) -> None:
        self.url = database_url(target)
        try:
            url = make_url(self.url)
            if url.get_backend_name() == "sqlite" and url.database:
                parent = Path(url.database).parent
                if not parent.is_dir():
                    raise StoreError(f"database folder does not exist: {parent}")
            self._engine: Engine = create_engine(url, pool_pre_ping=True)
            if url.get_backend_name() == "sqlite":
                event.listen(self._engine, "connect", _sqlite_secure_delete)
        except (ArgumentError, ImportError, ValueError) as exc:
            raise StoreError(f"invalid database URL {self.url!r}: {exc}") from None
        self._ready = False

    def _ensure_schema(self) -> None:
        if not self._ready:
            try:
                Base.metadata.create_all(self._engine)
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot open database {self.safe_url}: {_first_line(exc)}") from None
            self._ready = True

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def check(self) -> None:
        """Connect and create the schema now: a bad URL fails before any frame is read."""
        self._ensure_schema()

    @property
    def engine(self) -> Engine:
        self._ensure_schema()
        return self._engine

    def write(self, reads: Sequence[PolicedRead], counts: Mapping[CountKey, int] | None = None) -> None:
        """Store a batch of reads and add to the policy counters, in one transaction."""
        if not reads and not counts:
            return
        self._ensure_schema()
        try:
            with Session(self._engine) as session, session.begin():
                session.add_all([ReadRow.from_policed(r) for r in reads])
                for key, number in (counts or {}).items():
                    row = session.scalars(select(PolicyCountRow).where(
                        PolicyCountRow.bucket == key.bucket, PolicyCountRow.camera == key.camera,
                        PolicyCountRow.purpose == key.purpose, PolicyCountRow.rule_id == key.rule_id,
                        PolicyCountRow.outcome == key.outcome.value)).one_or_none()
                    if row is None:
                        session.add(PolicyCountRow(bucket=key.bucket, camera=key.camera, purpose=key.purpose,
                                                   rule_id=key.rule_id, outcome=key.outcome.value, count=number))
                    else:
                        row.count += number
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot write to database {self.safe_url}: {_first_line(exc)}") from None

    def purge(self, now: float) -> int:
        """Delete every read whose deadline has passed; the number deleted."""
        return self._delete(ReadRow.delete_after <= now)

    def delete_plate(self, plate: str, rule_id: str) -> int:
        """Delete the reads of `plate` kept under `rule_id` (e.g. FPS reads matched to a payment)."""
        return self._delete((ReadRow.plate == plate) & (ReadRow.rule_id == rule_id))

    def _delete(self, condition) -> int:
        self._ensure_schema()
        try:
            with Session(self._engine) as session, session.begin():
                return session.execute(delete(ReadRow).where(condition)).rowcount or 0
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot delete from database {self.safe_url}: {_first_line(exc)}") from None

    def count(self) -> int:
        self._ensure_schema()
        with Session(self._engine) as session:
            return session.scalar(select(func.count()).select_from(ReadRow)) or 0

    def reads(self, source: str | None = None, plate: str | None = None, purpose: str | None = None,
              hits_only: bool = False) -> list[PolicedRead]:
        self._ensure_schema()
        query = select(ReadRow).order_by(ReadRow.id)
        for column, value in ((ReadRow.source, source), (ReadRow.plate, plate), (ReadRow.purpose, purpose)):
            if value is not None:
                query = query.where(column == value)
        if hits_only:
            query = query.where(ReadRow.hit.is_(True))
        with Session(self._engine) as session:
            return [row.to_policed() for row in session.scalars(query)]

    def policy_counts(self) -> list[tuple[CountKey, int]]:
        self._ensure_schema()
        with Session(self._engine) as session:
            rows = session.scalars(select(PolicyCountRow).order_by(PolicyCountRow.id))
            return [(CountKey(r.bucket, r.camera, r.purpose, r.rule_id, Outcome(r.outcome)), r.count) for r in rows]

    def close(self) -> None:
        self._engine.dispose()


def _sqlite_secure_delete(connection, _record) -> None:
    # A deleted row otherwise stays readable in the file's free pages: retention would
    # delete the read in name only.
    connection.execute("PRAGMA secure_delete = ON")


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__

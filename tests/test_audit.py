"""The audit log: a hash chain that shows edits, deletions and moves, even by someone who
drops the append-only triggers first."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, func, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from support.keys import TEST_KEYS

from anpr.errors import StoreError
from anpr.storage.audit import GENESIS, AuditLog, AuditProblem, canonical_json, chain_hash, verify_database

T0 = 1_700_000_000.0
PAYLOAD = ("at", "actor", "action", "details")
ALL_BUT_SEQ = (*PAYLOAD, "prev_hash", "entry_hash")


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    yield engine
    engine.dispose()


def filled(engine: Engine, n: int = 5) -> AuditLog:
    log = AuditLog(engine, TEST_KEYS)
    for i in range(n):
        log.append(f"action.{i + 1}", f"user{i + 1}", {"n": i + 1, "note": f"café {i + 1}"}, at=T0 + i + 0.25)
    return log


def drop_triggers(engine: Engine) -> None:
    """What an attacker with direct database access does first."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER audit_log_no_update"))
            conn.execute(text("DROP TRIGGER audit_log_no_delete"))
        else:
            conn.execute(text("DROP TRIGGER audit_log_append_only ON audit_log"))
            conn.execute(text("DROP TRIGGER audit_log_no_truncate ON audit_log"))


def sql(engine: Engine, *statements: str, **params) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), params)


def row(engine: Engine, seq: int) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM audit_log WHERE seq = :s"), {"s": seq}).mappings().one())


def set_columns(engine: Engine, seq: int, values: dict) -> None:
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    sql(engine, f"UPDATE audit_log SET {assignments} WHERE seq = :seq", seq=seq, **values)


def found(problems: list[AuditProblem]) -> list[tuple[int, str]]:
    """The chain's problems (the tests that tamper drop the triggers first: that is reported apart)."""
    return [(p.seq, p.kind) for p in problems if p.kind != "unprotected"]


def test_chain_of_five(sqlite_engine):
    log = filled(sqlite_engine)
    entries = log.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert [e.action for e in entries] == [f"action.{i}" for i in range(1, 6)]
    assert entries[0].prev_hash == GENESIS
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.entry_hash
    for entry in entries:
        assert entry.entry_hash == chain_hash(
            TEST_KEYS, entry.prev_hash, entry.seq, entry.at, entry.actor, entry.action, entry.details
        )
        assert len(entry.entry_hash) == 64
    # The formula of the docstring, spelled out once by hand.
    first = entries[0]
    assert first.details == '{"n":1,"note":"café 1"}' == canonical_json({"note": "café 1", "n": 1})
    payload = f"{GENESIS}\n1\n1700000000.250000\nuser1\naction.1\n{first.details}"
    expected = hmac.new(TEST_KEYS.audit, payload.encode(), hashlib.sha256).hexdigest()
    assert first.entry_hash == expected
    assert log.verify() == []
    # A second handle on the same database goes on from the last entry.
    assert AuditLog(sqlite_engine, TEST_KEYS).append("query", "bob", {}).seq == 6
    assert AuditLog(sqlite_engine, TEST_KEYS).verify() == []


# A table of the caller's own, standing for the reads (whose columns are not this test's concern).
caller_tables = MetaData()
payments = Table("payments", caller_tables, Column("id", Integer, primary_key=True), Column("plate", String))


def count_payments(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(payments)).scalar_one()


def test_append_commits_or_rolls_back_with_the_callers_transaction(sqlite_engine):
    caller_tables.create_all(sqlite_engine)
    log = filled(sqlite_engine, 2)
    with pytest.raises(RuntimeError), Session(sqlite_engine) as session, session.begin():
        session.execute(insert(payments).values(plate="AB123CD"))
        entry = log.append("mark-paid", "alice", {"payment": 1}, session=session)
        assert entry.seq == 3
        assert log.append("query", "alice", {}, session=session).seq == 4  # sees its own pending entry
        raise RuntimeError("the caller fails after appending")
    assert len(log.entries()) == 2 and count_payments(sqlite_engine) == 0
    # Nothing of the rolled-back entries is left to chain from.
    with Session(sqlite_engine) as session, session.begin():
        session.execute(insert(payments).values(plate="AB123CD"))
        log.append("mark-paid", "alice", {"payment": 1}, session=session)
    entries = log.entries()
    assert [e.seq for e in entries] == [1, 2, 3] and entries[2].prev_hash == entries[1].entry_hash
    assert count_payments(sqlite_engine) == 1
    assert log.verify() == []


def test_append_refuses_ambiguous_fields(sqlite_engine):
    log = AuditLog(sqlite_engine, TEST_KEYS)
    with pytest.raises(ValueError, match="actor"):
        log.append("query", "alice\nbob", {})
    with pytest.raises(ValueError, match="action"):
        log.append("query\x00", "alice", {})
    with pytest.raises(TypeError):
        log.append("query", "alice", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        log.append("query", "alice", {}, at=float("nan"))
    assert log.entries() == []


def test_update_and_delete_are_refused(engine):
    log = filled(engine, 3)
    for statement in (
        "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 2",
        "DELETE FROM audit_log",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            sql(engine, statement)
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"):
            sql(engine, "TRUNCATE audit_log")
    assert [e.actor for e in log.entries()] == ["user1", "user2", "user3"]
    assert log.verify() == []


def test_concurrent_appenders_take_turns(engine):
    log = AuditLog(engine, TEST_KEYS)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        for i in range(10):
            try:
                log.append("query", f"worker{worker}", {"i": i})
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [e.seq for e in log.entries()] == list(range(1, 41))
    assert log.verify() == []


def swap_contents(engine: Engine, a: int, b: int, columns=ALL_BUT_SEQ) -> None:
    first, second = row(engine, a), row(engine, b)
    set_columns(engine, a, {c: second[c] for c in columns})
    set_columns(engine, b, {c: first[c] for c in columns})


def rewrite_with_recomputed_hash(engine: Engine, seq: int) -> None:
    old = row(engine, seq)
    details = canonical_json({"n": 0, "note": "nothing happened"})
    new_hash = chain_hash(TEST_KEYS, old["prev_hash"], seq, old["at"], old["actor"], old["action"], details)
    set_columns(engine, seq, {"details": details, "entry_hash": new_hash})


TAMPERING = {
    "nothing": (lambda e: None, []),
    "details of 3": (lambda e: set_columns(e, 3, {"details": '{"n":3,"note":"nothing to see"}'}), [(3, "edited")]),
    "actor of 3": (lambda e: set_columns(e, 3, {"actor": "mallory"}), [(3, "edited")]),
    "action of the last": (lambda e: set_columns(e, 5, {"action": "query"}), [(5, "edited")]),
    "time of the first": (lambda e: set_columns(e, 1, {"at": T0 + 3600.25}), [(1, "edited")]),
    "time of 2 by under a microsecond": (lambda e: set_columns(e, 2, {"at": T0 + 1.25 + 3e-7}), [(2, "edited")]),
    "stored hash of 4": (lambda e: set_columns(e, 4, {"entry_hash": "f" * 64}), [(4, "edited")]),
    "link of 4": (lambda e: set_columns(e, 4, {"prev_hash": row(e, 2)["entry_hash"]}), [(4, "edited")]),
    "3 rewritten with its hash recomputed": (lambda e: rewrite_with_recomputed_hash(e, 3), [(3, "edited")]),
    "delete 3": (lambda e: sql(e, "DELETE FROM audit_log WHERE seq = 3"), [(4, "deleted")]),
    "delete 2 and 3": (lambda e: sql(e, "DELETE FROM audit_log WHERE seq IN (2, 3)"), [(4, "deleted")]),
    "delete the first": (lambda e: sql(e, "DELETE FROM audit_log WHERE seq = 1"), [(2, "deleted")]),
    "swap contents of 2 and 3": (lambda e: swap_contents(e, 2, 3), [(2, "reordered"), (3, "reordered")]),
    "swap seq numbers of 2 and 3": (
        lambda e: sql(
            e,
            "UPDATE audit_log SET seq = -2 WHERE seq = 2",
            "UPDATE audit_log SET seq = 2 WHERE seq = 3",
            "UPDATE audit_log SET seq = 3 WHERE seq = -2",
        ),
        [(2, "reordered"), (3, "reordered")],
    ),
    "swap seq numbers of 1 and 2": (
        lambda e: sql(
            e,
            "UPDATE audit_log SET seq = -1 WHERE seq = 1",
            "UPDATE audit_log SET seq = 1 WHERE seq = 2",
            "UPDATE audit_log SET seq = 2 WHERE seq = -1",
        ),
        [(1, "reordered"), (2, "reordered")],
    ),
    # Only what was recorded moves, the chain fields stay: both hashes stop matching.
    "swap what 2 and 3 recorded": (lambda e: swap_contents(e, 2, 3, PAYLOAD), [(2, "edited"), (3, "edited")]),
    # The documented limit: without an anchor outside the database, truncation is invisible.
    "delete the last (undetectable)": (lambda e: sql(e, "DELETE FROM audit_log WHERE seq = 5"), []),
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_tampering_is_found_on_sqlite(sqlite_engine, tampering):
    tamper, expected = TAMPERING[tampering]
    log = filled(sqlite_engine)
    drop_triggers(sqlite_engine)
    tamper(sqlite_engine)
    problems = log.verify()
    assert found(problems) == expected
    assert [p.kind for p in problems if p.seq == 0] == ["unprotected", "unprotected"]
    for problem in problems:
        assert "\n" not in problem.message
        assert f"entry {problem.seq} " in problem.message or problem.kind == "unprotected"


@pytest.mark.parametrize(
    "tampering",
    [
        "nothing",
        "details of 3",
        "actor of 3",
        "delete 3",
        "swap contents of 2 and 3",
        "time of 2 by under a microsecond",
    ],
)
def test_tampering_is_found_on_postgresql(postgres, tampering):
    engine = create_engine(postgres.new_database())
    try:
        tamper, expected = TAMPERING[tampering]
        log = filled(engine)
        drop_triggers(engine)
        tamper(engine)
        assert found(log.verify()) == expected
    finally:
        engine.dispose()


def test_messages(sqlite_engine):
    log = filled(sqlite_engine, 7)
    drop_triggers(sqlite_engine)
    set_columns(sqlite_engine, 7, {"details": "{}"})
    sql(sqlite_engine, "DELETE FROM audit_log WHERE seq IN (3, 4)")
    assert [p.message for p in log.verify()] == [
        "entry 5 follows entry 2: entries 3 to 4 are missing",
        "entry 7 was edited: its hash does not match its content",
        "trigger audit_log_no_update is missing or disabled: the log can be changed",
        "trigger audit_log_no_delete is missing or disabled: the log can be changed",
    ]


def test_verify_database(tmp_path):
    path = tmp_path / "reads.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    filled(engine, 3)
    drop_triggers(engine)
    set_columns(engine, 2, {"actor": "mallory"})
    engine.dispose()
    assert verify_database(str(path), TEST_KEYS) == [
        AuditProblem(2, "edited", "entry 2 was edited: its hash does not match its content"),
        AuditProblem(0, "unprotected", "trigger audit_log_no_update is missing or disabled: the log can be changed"),
        AuditProblem(0, "unprotected", "trigger audit_log_no_delete is missing or disabled: the log can be changed"),
    ]
    assert found(verify_database(f"sqlite:///{path}", TEST_KEYS)) == [(2, "edited")]

    with pytest.raises(StoreError, match="database not found") as error:
        verify_database(str(tmp_path / "missing.sqlite"), TEST_KEYS)
    assert not (tmp_path / "missing.sqlite").exists() and "\n" not in str(error.value)
    (tmp_path / "junk.sqlite").write_bytes(b"this is not a database at all, not even close" * 10)
    with pytest.raises(StoreError, match="cannot open database"):
        verify_database(str(tmp_path / "junk.sqlite"), TEST_KEYS)
    no_log = tmp_path / "no-log.sqlite"
    create_engine(f"sqlite:///{no_log}").connect().close()
    with pytest.raises(StoreError, match="has no audit log"):
        verify_database(str(no_log), TEST_KEYS)
    with pytest.raises(StoreError, match="invalid database URL"):
        verify_database("nosuchdialect://x", TEST_KEYS)
    with pytest.raises(StoreError, match="cannot open database"):
        verify_database("postgresql+psycopg://anpr@127.0.0.1:1/none", TEST_KEYS)


# --- property: any single-field edit of any entry is found, and blamed on that entry ---

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
details_dicts = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
# The attacker may write anything, JSON or not, newlines included.
attacker_text = st.text(max_size=12)
one_line = st.text(max_size=12).filter(lambda s: "\n" not in s and "\x00" not in s)
entries_st = st.lists(
    st.tuples(one_line, one_line, details_dicts, st.one_of(st.none(), st.floats(0, 4e9))), min_size=1, max_size=6
)
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=entries_st, data=st.data())
def test_any_single_edit_is_found(tmp_path_factory, entries, data):
    engine = create_engine(f"sqlite:///{tmp_path_factory.mktemp('prop') / 'audit.sqlite'}")
    try:
        log = AuditLog(engine, TEST_KEYS)
        for actor, action, details, at in entries:
            log.append(action, actor, details, at=at)
        assert log.verify() == []
        stored = log.entries()
        target = data.draw(st.sampled_from(stored), label="entry")
        column = data.draw(
            st.sampled_from(["at", "actor", "action", "details", "prev_hash", "entry_hash"]), label="column"
        )
        if column == "at":
            value = data.draw(st.floats(allow_nan=False, allow_infinity=False), label="value")
        elif column == "details":
            value = data.draw(details_dicts.map(canonical_json) | attacker_text, label="value")
        elif column in ("actor", "action"):
            value = data.draw(attacker_text, label="value")
        else:
            others = [GENESIS] + [e.entry_hash for e in stored]
            value = data.draw(hex64 | st.sampled_from(others), label="value")
        assume(value != getattr(target, column))
        drop_triggers(engine)
        set_columns(engine, target.seq, {column: value})
        assert found(log.verify()) == [(target.seq, "edited")]
    finally:
        engine.dispose()


def test_details_are_canonical_json(sqlite_engine):
    log = AuditLog(sqlite_engine, TEST_KEYS)
    entry = log.append("query", "alice", {"b": [1, 2.5, None], "a": "ü\n"})
    assert entry.details == '{"a":"ü\\n","b":[1,2.5,null]}'
    assert json.loads(entry.details) == {"a": "ü\n", "b": [1, 2.5, None]}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 7), data=st.data())
def test_any_deletion_or_swap_is_found(tmp_path_factory, n, data):
    """Deleting any entry but the last names the entry after it; swapping any two names both."""
    engine = create_engine(f"sqlite:///{tmp_path_factory.mktemp('prop') / 'audit.sqlite'}")
    try:
        log = filled(engine, n)
        drop_triggers(engine)
        if data.draw(st.booleans(), label="delete"):
            k = data.draw(st.integers(1, n - 1), label="deleted entry")
            sql(engine, "DELETE FROM audit_log WHERE seq = :k", k=k)
            assert found(log.verify()) == [(k + 1, "deleted")]
        else:
            a, b = sorted(data.draw(st.lists(st.integers(1, n), min_size=2, max_size=2, unique=True), label="pair"))
            swap_contents(engine, a, b)
            assert found(log.verify()) == [(a, "reordered"), (b, "reordered")]
    finally:
        engine.dispose()

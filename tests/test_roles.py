"""PostgreSQL roles (`anpr db init-roles`, anpr/storage/roles.py), on a real server, each login
a real one: the pipeline writes but reads no plate and stores no denied purpose, agents
read only through the audited search function, the auditor verifies the log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ProgrammingError
from support.keys import TEST_KEYS, write_key_file

from anpr.config.settings import load_settings
from anpr.errors import StoreError
from anpr.policy.engine import Policy
from anpr.records import CountKey, Outcome, Passage, PlateRead, PolicedRead
from anpr.storage.audit import AuditLog, verify_database
from anpr.storage.binding import migrate, require_binding
from anpr.storage.queries import search
from anpr.storage.roles import DPO_TABLE
from anpr.storage.store import FunctionRefused, ReadStore, StaleAuditEntry

REPO = Path(__file__).resolve().parent.parent
DAY = 86_400.0
FPS = ("parking_fps", "FR-FPS")
DENIED = ("city_wide_analytics", "FR-DEFAULT")  # declared, but denied: no DPIA


def deployment(agents: list[str]) -> dict:
    """FPS with its designated agents, and a purpose the rules deny on the same camera."""
    return {
        "name": "FPS",
        "controller": {"type": "municipality", "name": "Ville"},
        "cameras": [{"id": "car-1", "purposes": ["parking_fps", "city_wide_analytics"]}],
        "purposes": {
            "parking_fps": {
                "safeguards": {"human_review": True, "signage": True, "designated_agents": agents},
                "retention_days": 1,
                "sinks": ["store"],
            },
            "city_wide_analytics": {"retention_days": 30, "sinks": ["store"]},
        },
        "sinks": {"store": {"type": "database"}},
    }


def lapi(agents: list[str]) -> dict:
    """A gendarmerie LAPI camera: no-hit reads are queried only for a named procedure."""
    return {
        "name": "LAPI",
        "controller": {"type": "gendarmerie", "name": "Gendarmerie"},
        "cameras": [{"id": "car-1", "purposes": ["criminal_investigation"]}],
        "purposes": {
            "criminal_investigation": {"safeguards": {"designated_agents": agents}, "sinks": ["store"]},
        },
        "sinks": {"store": {"type": "database"}},
    }


def read(plate: str, kind: tuple[str, str] = FPS, delete_after: float | None = None, hit: bool = False):
    plate_read = PlateRead(
        "cam.mp4", 1, 0.5, plate, plate.lower(), 0.9, 0.9, 0.9, (0, 0, 10, 5), "d", "o", ((plate, 0.9),)
    )
    deadline = time.time() + DAY if delete_after is None else delete_after
    return PolicedRead(plate_read, "car-1", kind[0], kind[1], deadline, hit)


def passage(plate: str, delete_after: float, kind: tuple[str, str] = FPS) -> Passage:
    return Passage(
        "cam.mp4",
        "car-1",
        kind[0],
        kind[1],
        1,
        plate,
        0.95,
        ((plate, 0.95),),
        "FR",
        "LLDDDLL",
        1,
        9,
        0.1,
        0.9,
        3,
        delete_after,
    )


@dataclass
class Site:
    """A database whose owner has run init-roles, its config and key file in `cwd`, and
    the URL of each login."""

    owner: str
    cwd: Path
    config: Path
    prefix: str

    def url(self, login: str) -> str:
        return self.owner.replace("//anpr@", f"//{login}@")

    def login(self, name: str, *roles: str) -> str:
        """A login (made if missing: logins belong to the whole server) granted `roles`
        (ROLES keys); its URL to this database."""
        with admin(self.owner) as conn:
            if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": name}).first() is None:
                conn.execute(text(f"CREATE ROLE {name} LOGIN"))
            for role in roles:
                conn.execute(text(f"GRANT {self.prefix}_{role} TO {name}"))
        return self.url(name)

    def policy(self) -> Policy:
        settings = load_settings(self.config)
        assert settings.deployment is not None
        return Policy(settings.deployment)


class admin:
    """An autocommit connection as the owner."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, isolation_level="AUTOCOMMIT")

    def __enter__(self):
        self.conn = self.engine.connect()
        return self.conn

    def __exit__(self, *exc_info) -> None:
        self.conn.close()
        self.engine.dispose()


def anpr(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """This worktree's `anpr`, run as a user would, in `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "anpr", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def make_site(postgres, tmp_path: Path, data: dict, prefix: str = "anpr") -> Site:
    write_key_file(tmp_path)
    config = tmp_path / "deployment.yaml"
    config.write_text(yaml.safe_dump(data))
    site = Site(postgres.new_database(), tmp_path, config, prefix)
    done = anpr(tmp_path, "db", "init-roles", "--config", str(config), "--db", site.owner, "--prefix", prefix)
    assert done.returncode == 0, done.stderr
    return site


@pytest.fixture
def site(postgres, tmp_path) -> Site:
    return make_site(postgres, tmp_path, deployment(["alice"]))


def pipeline_writes(site: Site, reads: list[PolicedRead], passages: Sequence[Passage] = ()) -> ReadStore:
    """What `anpr run` does to the database, as the writer login: bind, audit, write."""
    store = ReadStore(site.login("pipeline", "writer"), TEST_KEYS)
    audit = AuditLog(store.engine, TEST_KEYS)
    require_binding(store, audit, site.policy().deployment, store.user(), bind_if_new=True)
    audit.append("run.start", "pipeline", {"user": store.user()})
    counts = {CountKey(0, "car-1", DENIED[0], DENIED[1], Outcome.BLOCKED): 2}
    assert store.write(reads, counts, passages=passages)
    return store


def query_details(plate: str) -> dict:
    """The details of a query's audit entry made for the search function: the query, not its rows."""
    return {"purpose": "parking_fps", "plate_key": TEST_KEYS.plate_digest(plate), "procedure": None, "passages": False}


def denied(engine: Engine, statement: str) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text(statement)).all()
    except ProgrammingError as exc:
        return "permission denied" in str(exc)
    return False


def audit_entries(site: Site) -> list[tuple[str, str, dict]]:
    with admin(site.owner) as conn:
        rows = conn.execute(text("SELECT actor, action, details FROM audit_log ORDER BY seq")).all()
    return [(actor, action, json.loads(details)) for actor, action, details in rows]


def test_the_writer_writes_and_purges_but_reads_no_plate(site):
    now = time.time()
    batch = [read("AB123CD"), read("EF456GH", delete_after=now + 1)]
    passages = [passage("AB123CD", now + DAY), passage("EF456GH", now + 1)]
    store = pipeline_writes(site, batch, passages)
    # The same batch again (a spool flush after a lost acknowledgement) is recognised by its keys.
    assert not store.write(batch, passages=passages, key="another-key")
    assert store.purge(now + 2) == 2  # the read and the passage past their deadline
    assert store.policy_counts()[0][1] == 2
    for column in ("plate", "plate_key", "candidates", "raw_text", "*"):
        assert denied(store.engine, f"SELECT {column} FROM reads"), column
    assert denied(store.engine, "SELECT plate FROM passages")
    # What is left is there, plate and all, for the owner.
    with admin(site.owner) as conn:
        assert conn.execute(text("SELECT plate FROM reads")).scalars().all() == ["AB123CD"]
        assert conn.execute(text("SELECT plate FROM passages")).scalars().all() == ["AB123CD"]
    # It bound the database, but may not bind it to another deployment: that is the owner's.
    changed = load_settings(site.config).deployment.model_copy(update={"region": ["FR"]})
    with pytest.raises(StoreError, match="row-level security"):
        migrate(store, AuditLog(store.engine, TEST_KEYS), changed, store.user())
    store.close()


def test_the_writer_cannot_store_a_denied_purposes_reads(site):
    store = pipeline_writes(site, [read("AB123CD")])
    for batch, passages in (([read("XY987ZT", DENIED)], []), ([], [passage("XY987ZT", time.time() + DAY, DENIED)])):
        with pytest.raises(StoreError, match="row-level security"):
            store.write(batch, passages=passages)
    with admin(site.owner) as conn:
        assert conn.execute(text("SELECT purpose FROM reads")).scalars().all() == ["parking_fps"]
        assert conn.execute(text("SELECT count(*) FROM passages")).scalar() == 0
    store.close()


def test_an_agent_queries_through_the_cli_and_the_auditor_verifies(site):
    expired = time.time() + 1
    pipeline_writes(site, [read("AB123CD"), read("AB123CD", delete_after=expired)]).close()
    alice = site.login("alice", "query")
    time.sleep(max(0.0, expired - time.time()) + 0.5)  # one read past its deadline, not yet purged
    args = ("--purpose", "parking_fps", "--config", str(site.config), "--db", alice, "--json")
    found = anpr(site.cwd, "db", "search", "AB-123-CD", *args)
    assert found.returncode == 0, found.stderr
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    assert [(r["plate"], r["purpose"]) for r in rows] == [("AB123CD", "parking_fps")]
    assert rows[0]["delete_after"] > time.time()
    passages = anpr(site.cwd, "db", "search", "AB123CD", "--passages", *args)
    assert passages.returncode == 0 and passages.stdout == "", passages.stderr
    actor, action, details = audit_entries(site)[-2]
    assert (actor, action) == ("alice", "query")
    assert details == query_details("AB123CD")
    audrey = site.login("audrey", "auditor")
    verified = anpr(site.cwd, "audit", "verify", "--db", audrey, "--config", str(site.config))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "chain intact, triggers in place" in verified.stderr
    # The auditor reads the log, and nothing of the plates.
    engine = create_engine(audrey)
    assert denied(engine, "SELECT id FROM reads") and denied(engine, "SELECT id FROM passages")
    engine.dispose()


def test_a_query_login_cannot_read_the_tables(site):
    pipeline_writes(site, [read("AB123CD")], [passage("AB123CD", time.time() + DAY)]).close()
    engine = create_engine(site.login("alice", "query"))
    for statement in ("SELECT * FROM reads", "SELECT id FROM reads", "SELECT * FROM passages"):
        assert denied(engine, statement), statement
    with pytest.raises(ProgrammingError, match="permission denied"), engine.begin() as conn:
        conn.execute(text("DELETE FROM reads"))
    engine.dispose()


def test_the_function_applies_the_hits_only_rule(postgres, tmp_path):
    site = make_site(postgres, tmp_path, lapi(["alice"]))
    kind = ("criminal_investigation", "FR-LAPI-1")
    pipeline_writes(site, [read("AB123CD", kind, hit=True), read("AB123CD", kind)]).close()
    store = ReadStore(site.login("alice", "query"), TEST_KEYS)
    audit = AuditLog(store.engine, TEST_KEYS)
    policy = site.policy()
    plain = search(store, policy, audit, "AB123CD", kind[0], "alice")
    assert plain.allowed and [r.hit for r in plain.rows] == [True] and plain.withheld == 1
    named = search(store, policy, audit, "AB123CD", kind[0], "alice", procedure="PV-2024-17")
    assert named.allowed and named.withheld == 0
    owners = ReadStore(site.owner, TEST_KEYS)
    assert named.rows == owners.reads()  # as the store reads them itself, to the last digit
    owners.close()
    assert audit.verify() == []
    store.close()


def test_a_login_that_is_no_agent_is_refused_and_gets_nothing(site):
    pipeline_writes(site, [read("AB123CD")]).close()
    for login, roles in (("bob", ("query",)), ("audrey", ("auditor",))):
        store = ReadStore(site.login(login, *roles), TEST_KEYS)
        audit = AuditLog(store.engine, TEST_KEYS)
        before = len(audit_entries(site))
        with pytest.raises(FunctionRefused, match=r"not a designated agent|permission denied for function"):
            audit.append_through(
                lambda entry, store=store: store.search_function(entry, "AB123CD", "parking_fps", None, False),
                "query",
                login,
                query_details("AB123CD"),
            )
        assert len(audit_entries(site)) == before  # nothing written, nothing returned
        store.close()
    # Through `anpr db search`, bob is refused by the config already, and the refusal audited.
    bob = site.url("bob")
    args = ("--purpose", "parking_fps", "--config", str(site.config), "--db", bob)
    refused = anpr(site.cwd, "db", "search", "AB123CD", *args)
    assert refused.returncode == 3 and "not a designated agent" in refused.stderr
    assert audit_entries(site)[-1][:2] == ("bob", "query.refused")


def test_the_function_takes_only_the_next_entry_of_this_query(site):
    pipeline_writes(site, [read("AB123CD")]).close()
    store = ReadStore(site.login("alice", "query"), TEST_KEYS)
    audit = AuditLog(store.engine, TEST_KEYS)
    details = query_details("AB123CD")
    calls: list[int] = []

    def call_with(change: dict, plate: str = "AB123CD"):
        def insert(entry):
            calls.append(entry.seq)
            for name, value in change.items():
                setattr(entry, name, value)
            return store.search_function(entry, plate, "parking_fps", None, False)

        return insert

    before = len(audit_entries(site))
    # A wrong prev_hash or seq: refused as stale, and tried again with a fresh entry (also wrong).
    for change in ({"prev_hash": "f" * 64}, {"seq": 1}):
        calls.clear()
        with pytest.raises(StoreError, match="other entries came first 5 times"):
            audit.append_through(call_with(change), "query", "alice", details)
        assert len(calls) == 5
        with pytest.raises(StaleAuditEntry, match="not the next one"):
            call_with(change)(audit_entries_next(audit, details))
    # Another actor, another action, details that are not this query's.
    for change, plate in (({"actor": "bob"}, "AB123CD"), ({"action": "purge"}, "AB123CD"), ({}, "XY987ZT")):
        with pytest.raises(StoreError, match="not this request's"):
            audit.append_through(call_with(change, plate), "query", "alice", details)
    assert len(audit_entries(site)) == before
    # A forged MAC goes in (the database has no key to check it with), and verify finds it.
    rows, withheld = audit.append_through(call_with({"entry_hash": "0" * 64}), "query", "alice", details)
    assert len(rows) == 1 and withheld == 0
    problems = verify_database(site.login("audrey", "auditor"), TEST_KEYS)
    assert [p.kind for p in problems] == ["edited"]
    store.close()


def audit_entries_next(audit: AuditLog, details: dict):
    """The next entry of the log, as the client makes it."""
    return audit.append_through(lambda entry: entry, "query", "alice", details)


def test_init_roles_twice_is_fine(postgres, tmp_path):
    site = make_site(postgres, tmp_path, deployment(["alice"]), prefix="twice")
    grants = table_grants(site)
    again = anpr(site.cwd, "db", "init-roles", "--config", str(site.config), "--db", site.owner, "--prefix", "twice")
    assert again.returncode == 0, again.stderr
    assert "(created)" not in again.stdout and "twice_query: " in again.stdout
    assert table_grants(site) == grants
    assert ("twice_writer", "reads", "INSERT") in grants and ("twice_query", "audit_log", "SELECT") in grants
    assert not {g for g in grants if g[0] == "twice_query" and g[1] in ("reads", "passages")}
    assert [a for _, a, _ in audit_entries(site)] == ["roles.init", "roles.init"]
    # And the roles still work: the writer writes, the agent finds.
    pipeline_writes(site, [read("AB123CD")]).close()
    store = ReadStore(site.login("alice", "query"), TEST_KEYS)
    found = search(store, site.policy(), AuditLog(store.engine, TEST_KEYS), "AB123CD", "parking_fps", "alice")
    assert found.allowed and len(found.rows) == 1
    store.close()
    # A config of another deployment is refused once the database serves one.
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(deployment(["alice", "mallory"])))
    refused = anpr(site.cwd, "db", "init-roles", "--config", str(other), "--db", site.owner, "--prefix", "twice")
    assert refused.returncode == 3 and "anpr policy migrate" in refused.stderr


def table_grants(site: Site) -> set[tuple[str, str, str]]:
    with admin(site.owner) as conn:
        rows = conn.execute(
            text(
                "SELECT grantee, table_name, privilege_type FROM information_schema.role_table_grants "
                "WHERE grantee LIKE :p UNION SELECT grantee, table_name, privilege_type || ' (' || column_name || ')' "
                "FROM information_schema.column_privileges WHERE grantee LIKE :p"
            ),
            {"p": f"{site.prefix}\\_%"},
        ).all()
    return {tuple(row) for row in rows}


def with_dpo(data: dict, officers: list[str]) -> dict:
    return {**data, "controller": {**data["controller"], "dpo": officers}}


def subject_details(plate: str, forms: int, **more) -> dict:
    """A data subject request's audit entry as the subject functions take it: the request, not its answer."""
    return {"request_key": TEST_KEYS.request_digest(plate), "forms": forms, **more}


def test_the_dpo_role_answers_and_erases_one_plate_through_the_functions_only(postgres, tmp_path):
    site = make_site(postgres, tmp_path, with_dpo(deployment(["alice"]), ["dana"]))
    fresh = anpr(site.cwd, "db", "init-roles", "--config", str(site.config), "--db", site.owner)
    assert "data-protection officers: dana" in fresh.stdout
    assert "to do: dana is no login granted anpr_dpo yet" in fresh.stderr
    pipeline_writes(site, [read("AB123CD"), read("EF456GH")], [passage("AB123CD", time.time() + DAY)]).close()
    dana = site.login("dana", "dpo")
    engine = create_engine(dana)
    for statement in ("SELECT id FROM reads", "SELECT * FROM passages", f"SELECT * FROM {DPO_TABLE}"):
        assert denied(engine, statement), statement  # a DPO login reads no table of plates either
    engine.dispose()

    args = ("--config", str(site.config), "--db", dana)
    answered = anpr(site.cwd, "db", "subject-access", "ab 123 cd", *args, "--json")
    assert answered.returncode == 0, answered.stderr
    held = json.loads(answered.stdout)["records"]
    assert sorted((r["kind"], r["where"], r["rule"]) for r in held) == [
        ("passage", "database", "FR-FPS"),
        ("read", "database", "FR-FPS"),
    ]
    actor, action, details = audit_entries(site)[-1]
    assert (actor, action, details) == ("dana", "subject-access", subject_details("AB123CD", 1))

    erased = anpr(site.cwd, "db", "erase", "AB123CD", *args, "--reason", "letter of 1 December")
    assert erased.returncode == 0 and "erased 2 record(s) of AB123CD; 0 kept by rule" in erased.stderr, erased.stderr
    assert audit_entries(site)[-1] == ("dana", "erase", subject_details("AB123CD", 1, reason="letter of 1 December"))
    with admin(site.owner) as conn:
        left = conn.execute(text("SELECT plate FROM reads UNION ALL SELECT plate FROM passages")).scalars().all()
    assert left == ["EF456GH"]  # the other plate's read stays
    again = anpr(site.cwd, "db", "subject-access", "AB123CD", *args, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["records"] == [] and "nothing held" in again.stderr

    summary = anpr(site.cwd, "db", "summary", "--config", str(site.config), "--db", site.owner, "--json")
    requests = [(r["request"], r["answered"]) for r in json.loads(summary.stdout)["subject_requests"]]
    assert requests == [("access", True), ("erasure", True), ("access", True)]
    verified = anpr(site.cwd, "audit", "verify", "--db", site.login("audrey", "auditor"), "--config", str(site.config))
    assert verified.returncode == 0 and "chain intact" in verified.stderr, verified.stderr


def test_the_subject_functions_refuse_other_logins_and_other_entries(postgres, tmp_path):
    site = make_site(postgres, tmp_path, with_dpo(deployment(["alice"]), ["dana"]))
    pipeline_writes(site, [read("AB123CD")]).close()
    # eve holds the role but is no officer of the deployment; alice is an agent, not an officer.
    for login, role in (("eve", "dpo"), ("alice", "query")):
        store = ReadStore(site.login(login, role), TEST_KEYS)
        audit = AuditLog(store.engine, TEST_KEYS)
        before = len(audit_entries(site))
        for action, call in (
            ("subject-access", lambda entry, s=store: s.subject_records_function(entry, ("AB123CD",))),
            ("erase", lambda entry, s=store: s.subject_erase_function(entry, ("AB123CD",), None)),
        ):
            more = {"reason": None} if action == "erase" else {}
            with pytest.raises(FunctionRefused, match=r"not a data-protection officer|permission denied for function"):
                audit.append_through(call, action, login, subject_details("AB123CD", 1, **more))
        assert len(audit_entries(site)) == before
        store.close()
    # Through the command, eve is refused by the config already (exit 3), and the refusal audited.
    refused = anpr(site.cwd, "db", "erase", "AB123CD", "--config", str(site.config), "--db", site.url("eve"))
    assert refused.returncode == 3 and "not the deployment's data-protection officer" in refused.stderr
    assert audit_entries(site)[-1][:2] == ("eve", "erase.refused") and "AB123CD" not in refused.stdout
    # The officer's entry must be this request's: not one that claims what it found.
    store = ReadStore(site.login("dana", "dpo"), TEST_KEYS)
    audit = AuditLog(store.engine, TEST_KEYS)
    with pytest.raises(StoreError, match="not this request's"):
        audit.append_through(
            lambda entry: store.subject_records_function(entry, ("AB123CD",)),
            "subject-access",
            "dana",
            subject_details("AB123CD", 1, records=0),
        )
    with admin(site.owner) as conn:
        assert conn.execute(text("SELECT count(*) FROM reads")).scalar() == 1
    store.close()


def test_an_erasure_through_the_function_keeps_a_lapi_hit(postgres, tmp_path):
    site = make_site(postgres, tmp_path, with_dpo(lapi(["alice"]), ["dana"]))
    kind = ("criminal_investigation", "FR-LAPI-1")
    pipeline_writes(site, [read("AB123CD", kind, hit=True), read("AB123CD", kind)]).close()
    args = ("--config", str(site.config), "--db", site.login("dana", "dpo"))
    erased = anpr(site.cwd, "db", "erase", "AB123CD", *args)
    assert erased.returncode == 0, erased.stderr
    assert "erased 1 record(s) of AB123CD; 1 kept by rule" in erased.stderr
    assert "Directive (EU) 2016/680" in erased.stdout
    with admin(site.owner) as conn:
        assert conn.execute(text("SELECT hit FROM reads")).scalars().all() == [True]


def traces(root: Path, *needles: str) -> dict[str, list[str]]:
    """Which files under `root` hold each needle's bytes."""
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for needle in needles:
                if needle.encode() in content:
                    found.setdefault(needle, []).append(str(path.relative_to(root)))
    return found


def test_an_erasure_leaves_no_byte_of_the_plate_in_the_server_s_files(tmp_path):
    from support.postgres import PostgresServer

    # A server of its own: the shared one's files hold other tests' plates. The owner's
    # login may VACUUM and CHECKPOINT; the server removes its old WAL files (wal_recycle off).
    with PostgresServer() as server:
        site = make_site(server, tmp_path, with_dpo(deployment(["alice"]), ["dana", "anpr"]))
        others = [read(f"AA{n:03d}BB") for n in range(40)]
        pipeline_writes(site, [read("ZQ731XK"), read("ZQ731XK"), read("KV208WN"), *others]).close()
        erased_by_dpo = anpr(
            site.cwd, "db", "erase", "KV208WN", "--config", str(site.config), "--db", site.login("dana", "dpo")
        )
        assert erased_by_dpo.returncode == 0, erased_by_dpo.stderr
        # The officer's login may do neither: the command says what still holds the rows.
        assert "only the tables' owner may run" in erased_by_dpo.stderr
        assert "reuses its write-ahead log files (wal_recycle on)" in erased_by_dpo.stderr

        with admin(site.owner) as conn:
            conn.execute(text("ALTER SYSTEM SET wal_recycle = off"))
            conn.execute(text("SELECT pg_reload_conf()"))
            conn.execute(text("CHECKPOINT"))
        plate, digest = "ZQ731XK", TEST_KEYS.plate_digest("ZQ731XK")
        assert set(traces(server.data, plate, digest)) == {plate, digest}  # in the table and the WAL
        erased = anpr(site.cwd, "db", "erase", plate, "--config", str(site.config), "--db", site.owner)
        assert erased.returncode == 0 and "erased 2 record(s)" in erased.stderr, erased.stderr
        assert "note:" not in erased.stderr
        assert traces(server.data, plate, digest) == {}
        assert "AA000BB" in traces(server.data, "AA000BB")  # the search finds what is there

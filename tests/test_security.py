"""The red-team cases of issue 13: what a user with bad intent tried, each as a test.

Every test here failed on the code before the fix it names, and passes after; SECURITY.md
lists the attacks with their commands and results.
"""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import stat
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, inspect, text
from support.keys import TEST_KEYS, write_key_file

from anpr.config.settings import load_settings
from anpr.errors import ConfigError, PolicyRefusal
from anpr.policy.engine import Policy
from anpr.records import PlateRead, PolicedRead
from anpr.storage.audit import AuditLog, verify_database
from anpr.storage.binding import migrate, require_binding
from anpr.storage.keys import Keys, load_keys
from anpr.storage.queries import search
from anpr.storage.store import ReadStore

REPO = Path(__file__).resolve().parent.parent
DAY = 86_400.0
ME = pwd.getpwuid(os.geteuid()).pw_name


def config(tmp_path: Path, data: dict, name: str = "deployment.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def valenciennes() -> dict:
    return yaml.safe_load((REPO / "configs" / "valenciennes-2020.yaml").read_text())


def fps(agents: list[str] | None = None, **purpose) -> dict:
    safeguards = {"human_review": True, "signage": True, **({"designated_agents": agents} if agents else {})}
    return {
        "name": "FPS",
        "controller": {"type": "municipality", "name": "Ville"},
        "cameras": [{"id": "car-1", "purposes": ["parking_fps"]}],
        "purposes": {"parking_fps": {"safeguards": safeguards, "retention_days": 1, "sinks": ["store"], **purpose}},
        "sinks": {"store": {"type": "database"}},
    }


def read(plate: str, rule: str = "FR-FPS", purpose: str = "parking_fps", delete_after: float | None = None):
    plate_read = PlateRead(
        "cam.mp4", 1, 0.5, plate, plate, 0.9, 0.9, 0.9, (0, 0, 10, 5), "d", "o", ((plate, 0.9), (plate[:-1], 0.05))
    )
    deadline = time.time() + DAY if delete_after is None else delete_after
    return PolicedRead(plate_read, "car-1", purpose, rule, deadline, False)


# --- 1. renaming the purpose defeats the policy ---------------------------------------------


def test_a_renamed_purpose_cannot_send_reads_to_a_third_party(tmp_path):
    data = valenciennes()
    purpose = data["purposes"].pop("law_enforcement_request")
    purpose["safeguards"] = {"human_review": True, "signage": True}
    purpose["retention_days"] = 36525
    data["purposes"]["parking_fps"] = purpose
    data["cameras"][0]["purposes"] = ["parking_fps"]
    decision = Policy(load_settings(config(tmp_path, data)).deployment).purpose("parking_fps")
    assert not decision.allowed
    assert "not to sink(s) 'police_export' (jsonl_export)" in decision.reasons[0]


def test_rules_without_a_period_still_have_a_maximum():
    for code, extra in (("parking_fps", {}),):
        data = fps(retention_days=36525, **extra)
        decision = Policy(load_settings_from(data)).purpose(code)
        assert decision.allowed and decision.retention_days == 30
        assert "clamped to 30" in decision.retention_notes[0]


def load_settings_from(data: dict):
    from anpr.config.settings import Settings

    return Settings.model_validate(data).deployment


@pytest.mark.parametrize(
    "safeguards",
    [
        {"dpia_reference": " ", "cnil_prior_consultation": "CNIL-2024-1"},
        {"dpia_reference": "TODO", "cnil_prior_consultation": "CNIL-2024-1"},
        {"dpia_reference": "DPIA-7", "cnil_prior_consultation": "tbd."},
        {"dpia_reference": "DPIA-7", "cnil_prior_consultation": "N/A", "designated_agents": ["a"]},
        {"dpia_reference": "DPIA-7", "cnil_prior_consultation": "C-1", "designated_agents": [""]},
        {"dpia_reference": "DPIA-7", "cnil_prior_consultation": "C-1", "designated_agents": ["ann", "ann"]},
    ],
)
def test_blank_or_placeholder_safeguards_are_rejected(tmp_path, safeguards):
    data = {
        "controller": {"type": "municipality", "name": "Ville"},
        "cameras": [{"id": "c", "purposes": ["city_wide_analytics"]}],
        "purposes": {"city_wide_analytics": {"safeguards": safeguards, "retention_days": 5, "sinks": ["store"]}},
    }
    with pytest.raises(ConfigError, match="safeguards"):
        load_settings(config(tmp_path, data))


def test_a_database_serves_one_deployment_until_an_audited_migration(tmp_path):
    store = ReadStore(str(tmp_path / "fps.sqlite"), TEST_KEYS)
    audit = AuditLog(store.engine, TEST_KEYS)
    mine = load_settings_from(fps(agents=["ann"]))
    require_binding(store, audit, mine, "ann", bind_if_new=True)
    require_binding(store, audit, mine, "ann", bind_if_new=False)  # the same deployment: fine
    forged = load_settings_from(fps(agents=["ann", "mallory"]))  # a hand-written config adding an agent
    with pytest.raises(PolicyRefusal, match="anpr policy migrate"):
        require_binding(store, audit, forged, "mallory", bind_if_new=True)
    old, new = migrate(store, audit, forged, "root-operator")
    assert (old, new) == (mine.fingerprint(), forged.fingerprint())
    require_binding(store, audit, forged, "mallory", bind_if_new=False)
    entries = audit.entries()
    assert [e.action for e in entries] == ["deployment.bind", "deployment.migrate"]
    assert entries[1].actor == "root-operator" and json.loads(entries[1].details)["previous"] == old
    # What the fingerprint ignores: names and where frames come from.
    renamed = fps(agents=["ann"])
    renamed["name"], renamed["cameras"][0]["source"] = "other name", "rtsp://elsewhere/1"
    assert load_settings_from(renamed).fingerprint() == mine.fingerprint()
    store.close()


# --- 2. queries run on trust -------------------------------------------------------------------


def test_a_purpose_without_designated_agents_cannot_be_queried(tmp_path):
    store = ReadStore(str(tmp_path / "fps.sqlite"), TEST_KEYS)
    store.write([read("AB123CD")])
    result = search(
        store, Policy(load_settings_from(fps())), AuditLog(store.engine, TEST_KEYS), "AB123CD", "parking_fps", "anyone"
    )
    assert not result.allowed and "names no designated_agents" in result.reason and result.rows == []
    store.close()


def test_plates_are_not_indexed_in_clear_and_hidden_where_the_rule_does_not_show_them(tmp_path):
    path = tmp_path / "access.sqlite"
    store = ReadStore(str(path), TEST_KEYS)
    store.write([read("AB123CD"), read("XY987ZT", rule="FR-ACCESS", purpose="access_control")])
    indexed = {
        c
        for table in ("reads", "passages")
        for i in inspect(store.engine).get_indexes(table)
        for c in i["column_names"]
    }
    assert "plate" not in indexed and "plate_key" in indexed
    [fps_read] = store.reads(plate="AB-123-CD".replace("-", ""))
    assert fps_read.read.plate == "AB123CD"  # FPS: an agent confirms every notice, so sees the plate
    [access_read] = store.reads(plate="XY987ZT")  # found by its keyed hash...
    assert access_read.read.plate.startswith("#") and access_read.read.candidates == ()  # ...never shown
    store.close()
    assert b"XY987ZT" not in path.read_bytes() and b"XY987Z" not in path.read_bytes()
    # Without the key, the keyed hash of a guessed plate does not match.
    other = ReadStore(str(path), Keys.from_secret(b"\x07" * 32))
    assert other.reads(plate="XY987ZT") == [] and other.reads(plate="AB123CD") == []
    other.close()


def test_files_are_for_their_owner_only(tmp_path):
    store = ReadStore(str(tmp_path / "reads.sqlite"), TEST_KEYS)
    store.write([read("AB123CD")])
    key = load_keys(tmp_path / "anpr.key", create=True)
    audit = AuditLog(store.engine, key, tmp_path / "checkpoints")
    audit.append("x", "y", {})
    audit.checkpoint()
    for name in ("reads.sqlite", "anpr.key", "checkpoints"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    store.close()
    (tmp_path / "anpr.key").chmod(0o644)
    with pytest.raises(ConfigError, match="can be read by other users"):
        load_keys(tmp_path / "anpr.key")


# --- 3. the audit chain can be rewritten -----------------------------------------------------


def _forge_with_plain_hashes(engine, delete_seq: int) -> None:
    """The attack of the issue: drop the triggers, delete an entry, recompute every hash
    after it (with SHA-256, or any key but the deployment's: the database holds none)."""
    import hashlib

    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER audit_log_no_update"))
            conn.execute(text("DROP TRIGGER audit_log_no_delete"))
        else:
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        conn.execute(text("DELETE FROM audit_log WHERE seq = :s"), {"s": delete_seq})
        rows = conn.execute(text("SELECT * FROM audit_log WHERE seq > :s ORDER BY seq"), {"s": delete_seq}).mappings()
        prev = conn.execute(text("SELECT entry_hash FROM audit_log WHERE seq = :s"), {"s": delete_seq - 1}).scalar()
        for row in list(rows):
            seq = row["seq"] - 1
            payload = "\n".join([prev, str(seq), format(row["at"], ".6f"), row["actor"], row["action"], row["details"]])
            new_hash = hashlib.sha256(payload.encode()).hexdigest()
            conn.execute(
                text("UPDATE audit_log SET seq = :n, prev_hash = :p, entry_hash = :h WHERE seq = :s"),
                {"n": seq, "p": prev, "h": new_hash, "s": row["seq"]},
            )
            prev = new_hash
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER USER"))


def test_a_forged_chain_is_found(tmp_path, engine):
    log = AuditLog(engine, TEST_KEYS, tmp_path / "checkpoints")
    for n in range(1, 6):
        log.append("query", "ann", {"n": n})
    log.checkpoint()
    _forge_with_plain_hashes(engine, 3)
    problems = log.verify(tmp_path / "checkpoints")
    kinds = {p.kind for p in problems}
    assert "edited" in kinds  # the recomputed hashes are not the key's
    assert "truncated" in kinds  # entry 5, checkpointed, is gone
    if engine.dialect.name == "sqlite":
        assert "unprotected" in kinds  # and the triggers it dropped


def test_truncation_and_a_fresh_chain_are_found_by_the_checkpoints(tmp_path, engine):
    checkpoints = tmp_path / "checkpoints"
    log = AuditLog(engine, TEST_KEYS, checkpoints)
    for n in range(1, 4):
        log.append("query", "ann", {"n": n})
    log.checkpoint()
    assert log.verify(checkpoints) == []
    # The owner drops the whole table; the next command starts a fresh chain of the same length.
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE audit_log" + (" CASCADE" if engine.dialect.name == "postgresql" else "")))
    fresh = AuditLog(engine, TEST_KEYS, checkpoints)
    for n in range(1, 4):
        fresh.append("query", "ann", {"n": n, "innocent": True})
    assert fresh.verify() == []  # the chain alone cannot tell
    assert [(p.seq, p.kind) for p in fresh.verify(checkpoints)] == [(3, "rewritten")]
    # A checkpoint written by hand without the key is itself found out.
    lines = checkpoints.read_text().splitlines()
    forged = json.loads(lines[-1]) | {"seq": 2}
    checkpoints.write_text("\n".join([*lines, json.dumps(forged)]) + "\n")
    assert (2, "checkpoint") in [(p.seq, p.kind) for p in fresh.verify(checkpoints)]


def test_verify_reports_a_disabled_trigger_on_postgresql(postgres, tmp_path):
    url = postgres.new_database()
    engine = create_engine(url)
    AuditLog(engine, TEST_KEYS).append("query", "ann", {})
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
    assert [(p.kind, p.message) for p in verify_database(url, TEST_KEYS)] == [
        ("unprotected", "trigger audit_log_append_only is missing or disabled: the log can be changed")
    ]
    engine.dispose()


# --- 4 and 5. retention everywhere; the audit log keeps no plates ---------------------------------


def test_search_never_returns_an_expired_read(tmp_path):
    store = ReadStore(str(tmp_path / "fps.sqlite"), TEST_KEYS)
    store.write([read("AB123CD", delete_after=time.time() - 1), read("AB123CD")])
    policy = Policy(load_settings_from(fps(agents=["ann"])))
    audit = AuditLog(store.engine, TEST_KEYS)
    require_binding(store, audit, policy.deployment, "ann", bind_if_new=True)
    result = search(store, policy, audit, "AB123CD", "parking_fps", "ann")
    assert len(result.rows) == 1 and result.rows[0].delete_after > time.time()
    assert store.count() == 2  # not purged yet: only hidden
    store.close()


def test_a_purge_leaves_no_plate_in_the_sqlite_files_in_wal_mode(tmp_path):
    path = tmp_path / "wal.sqlite"
    store = ReadStore(str(path), TEST_KEYS)
    store.check()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode = WAL").scalar() == "wal"
    store.write([read("QQ111QQ", delete_after=time.time() + 1)])
    assert store.purge(time.time() + 2) == 1
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("wal.sqlite"))
    assert b"QQ111QQ" not in on_disk
    store.close()


def test_a_purge_vacuums_postgresql(postgres, tmp_path):
    store = ReadStore(postgres.new_database(), TEST_KEYS)
    store.write([read("QQ111QQ", delete_after=time.time() + 1)])
    assert store.purge(time.time() + 2) == 1
    with store.engine.connect() as conn:
        dead = conn.exec_driver_sql(
            "SELECT n_dead_tup, vacuum_count + autovacuum_count FROM pg_stat_user_tables WHERE relname = 'reads'"
        ).one()
    assert dead[1] >= 1  # a VACUUM ran on reads after the deletion
    store.close()


def test_the_cli_query_user_is_the_authenticated_one(anpr_cli, tmp_path):
    db = tmp_path / "fps.sqlite"
    write_key_file(tmp_path)
    settings = fps(agents=[ME])
    checkpoints = tmp_path / "checkpoints"
    settings["store"] = {"url": str(db), "key_file": str(tmp_path / "anpr.key"), "audit_checkpoints": str(checkpoints)}
    path = config(tmp_path, settings)
    store = ReadStore(str(db), TEST_KEYS)
    store.write([read("AB123CD")])
    require_binding(store, AuditLog(store.engine, TEST_KEYS), load_settings(path).deployment, ME, bind_if_new=True)
    store.close()
    spoofed = anpr_cli(
        "db", "search", "AB123CD", "--purpose", "parking_fps", "--user", "mallory", "--config", str(path)
    )
    assert spoofed.returncode == 2 and "--user" in spoofed.stderr  # no such option: the user is not a flag
    answered = anpr_cli("db", "search", "AB123CD", "--purpose", "parking_fps", "--config", str(path))
    assert answered.returncode == 0, answered.stderr
    assert "AB123CD" in answered.stdout
    # A hand-written config adding an agent, pointed at this database, is refused.
    settings["purposes"]["parking_fps"]["safeguards"]["designated_agents"] = [ME, "mallory"]
    forged = anpr_cli(
        "db", "search", "AB123CD", "--purpose", "parking_fps", "--config", str(config(tmp_path, settings, "f.yaml"))
    )
    assert forged.returncode == 3 and "anpr policy migrate" in forged.stderr
    connection = sqlite3.connect(db)
    actors = connection.execute("select actor, action, details from audit_log order by seq").fetchall()
    assert [(a, b) for a, b, _ in actors] == [(ME, "deployment.bind"), (ME, "query"), (ME, "query.refused")]
    assert "serves deployment" in json.loads(actors[2][2])["reason"]
    assert "AB123CD" not in actors[1][2] and TEST_KEYS.plate_digest("AB123CD") in actors[1][2]
    # Each command anchors its entries outside the database at once: the query's entry,
    # the newest, removed with the trigger put back, is found missing.
    assert json.loads(checkpoints.read_text().splitlines()[-1])["seq"] == 3
    connection.execute("drop trigger audit_log_no_delete")
    connection.execute("delete from audit_log where seq = 3")
    connection.execute(
        "create trigger audit_log_no_delete before delete on audit_log begin select raise(abort, 'x'); end"
    )
    connection.commit()
    verify = anpr_cli("audit", "verify", "--config", str(path))
    assert (
        verify.returncode == 1
        and "truncated: a checkpoint records entry 3, but the log ends at entry 2" in verify.stdout
    )

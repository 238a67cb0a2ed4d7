"""Issue 27: a data subject's access and erasure requests (`anpr db subject-access`, `anpr db
erase`), by the real command, on what the real run kept (SQLite and PostgreSQL), in the
spool and an export file too; only the data-protection officer may ask; the letter read
back by headless Chromium."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, make_url, text
from support.browser import page_alone
from support.reads import plate_read

from anpr.config.settings import load_settings
from anpr.reading.plates import stored_forms
from anpr.records import PolicedRead
from anpr.sinks.jsonl import JsonlExport, JsonlExportSettings
from anpr.storage.keys import load_keys
from anpr.storage.spool import SpooledStore
from anpr.storage.store import ReadStore

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "sample.mp4"
MIXED = REPO / "configs" / "mixed-camera.yaml"
CAR_PARK = REPO / "configs" / "private-car-park.yaml"
ME = pwd.getpwuid(os.geteuid()).pw_name
UNREACHABLE = "postgresql+psycopg://anpr@127.0.0.1:1/none"  # nothing listens on port 1
NEVER_SEEN = "QQ-999-QQ"


def _anpr(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("anpr") or str(Path(sys.executable).parent / "anpr")
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=folder, timeout=600)


def _deployment(folder: Path, shipped: Path, url: str, dpo: list[str]) -> Path:
    """A shipped config on the sample, with its data-protection officer and its files in `folder`."""
    data = yaml.safe_load(shipped.read_text())
    data["controller"]["dpo"] = dpo
    data["controller"]["contact"] = "dpo@example.org"
    data["cameras"][0]["source"] = str(SAMPLE)
    data["store"] = {"url": url, "spool_dir": str(folder / "spool")}
    for sink in data["sinks"].values():
        if sink["type"] == "jsonl_export":
            sink["path"] = str(folder / "export.jsonl")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _kept_plate(folder: Path, config: Path) -> str:
    """Run the sample; the plate of the run's most frequent kept read."""
    run = _anpr(folder, "run", "--config", str(config), "--jsonl")
    assert run.returncode == 0, run.stderr
    plates = Counter(json.loads(line)["plate"] for line in run.stdout.splitlines() if line.startswith("{"))
    assert plates, run.stderr
    return plates.most_common(1)[0][0]


def _outage_and_export(config: Path, plate: str) -> None:
    """A read of `plate` spooled while the database was down, and one in the export file."""
    settings = load_settings(config)
    keys = load_keys(settings.store.key_file)
    read = PolicedRead(plate_read(plate, 7), "vlc-parking-02", "parking_fps", "FR-FPS", time.time() + 3600, False)
    spool = SpooledStore(ReadStore(UNREACHABLE, keys), settings.store.spool_dir, 1 << 20)
    spool.write([read])
    spool.close()
    assert any(Path(settings.store.spool_dir).glob("*.json*")), "the read was not spooled"
    export = next(s for s in settings.deployment.sinks.values() if s.type == "jsonl_export")
    JsonlExport(JsonlExportSettings(type="jsonl_export", path=export.path)).write([read])


def _count(url: str, digest: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return sum(
                conn.execute(text(f"select count(*) from {t} where plate_key = :k"), {"k": digest}).scalar()
                for t in ("reads", "passages")
            )
    finally:
        engine.dispose()


def _access(folder: Path, config: Path, plate: str) -> tuple[dict, str]:
    answered = _anpr(folder, "db", "subject-access", plate, "--config", str(config), "--json")
    assert answered.returncode == 0, answered.stderr
    return json.loads(answered.stdout), answered.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_data_subject_is_told_everything_held_and_it_is_erased_everywhere(backend, request, tmp_path):
    url = str(tmp_path / "db.sqlite") if backend == "sqlite" else request.getfixturevalue("postgres").new_database()
    user = ME if backend == "sqlite" else make_url(url).username  # the authenticated one: OS account, or login
    config = _deployment(tmp_path, MIXED, url, [user])
    plate = _kept_plate(tmp_path, config)
    _outage_and_export(config, plate)
    digest = load_keys(load_settings(config).store.key_file).plate_digest(plate)
    stored = _count(url if backend == "postgresql" else f"sqlite:///{url}", digest)
    assert stored > 0

    typed = f"{plate[:2].lower()} {plate[2:]}"  # as a person writes it
    answer, said = _access(tmp_path, config, typed)
    assert plate in answer["forms"] and f"{len(answer['records'])} record(s) held" in said
    where = Counter(r["where"].split(" ")[0] for r in answer["records"])
    assert where == {"database": stored, "spool": 1, "export": 1}, answer["records"]
    assert {r["kind"] for r in answer["records"] if r["where"] == "database"} == {"read", "passage"}
    for record in answer["records"]:  # what, why, until when
        assert record["purpose"] == "parking_fps" and record["rule"] == "FR-FPS"
        assert "CGCT L2333-87" in record["legal_reference"] and record["delete_after"] > time.time()
        assert record["plate_in_clear"] and record["kept_on_erasure"] is None
    assert [p for p, _ in answer["nothing_kept"]] == ["law_enforcement_request"]  # the denied purpose
    assert "denied by rule FR-MUN-REQ" in answer["nothing_kept"][0][1]

    nothing, said = _access(tmp_path, config, NEVER_SEEN)
    assert nothing["records"] == [] and "nothing held" in said

    erased = _anpr(tmp_path, "db", "erase", typed, "--config", str(config), "--reason", "letter of 1 December")
    assert erased.returncode == 0, erased.stderr
    assert f"erased {stored + 2} record(s) of {plate}; 0 kept by rule" in erased.stderr
    assert _count(url if backend == "postgresql" else f"sqlite:///{url}", digest) == 0
    again, said = _access(tmp_path, config, plate)
    assert again["records"] == [] and "nothing held" in said
    twice = _anpr(tmp_path, "db", "erase", plate, "--config", str(config))
    assert twice.returncode == 0 and "erased 0 record(s)" in twice.stderr

    # No trace of the plate or its keyed hash in any file anpr keeps (SQLite: the database,
    # its WAL, the spool, the export; PostgreSQL's own files are the server's, below).
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".yaml",)]
    for path in files:
        content = path.read_bytes()
        assert plate.encode() not in content and digest.encode() not in content, path
    verified = _anpr(tmp_path, "audit", "verify", "--config", str(config), "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout)["intact"], verified.stdout
    summary = json.loads(_anpr(tmp_path, "db", "summary", "--config", str(config), "--json").stdout)
    requests = [(r["request"], r["answered"], r["records"]) for r in summary["subject_requests"]]
    assert requests == [
        ("access", True, stored + 2),
        ("access", True, 0),
        ("erasure", True, stored + 2),
        ("access", True, 0),
        ("erasure", True, 0),
    ]
    assert any("data subject's erasure" in d["why"] for d in summary["deletions"])


def test_where_only_a_keyed_hash_is_kept_the_request_finds_and_erases_it(tmp_path):
    config = _deployment(tmp_path, CAR_PARK, str(tmp_path / "db.sqlite"), [ME])
    plate = _kept_plate(tmp_path, config)
    answer, _ = _access(tmp_path, config, plate)
    assert answer["records"] and not any(r["plate_in_clear"] for r in answer["records"])
    assert {r["rule"] for r in answer["records"]} == {"FR-ACCESS"}
    erased = _anpr(tmp_path, "db", "erase", plate, "--config", str(config))
    assert erased.returncode == 0 and f"erased {len(answer['records'])} record(s)" in erased.stderr
    assert _access(tmp_path, config, plate)[0]["records"] == []


def test_only_the_data_protection_officer_may_ask(tmp_path):
    config = _deployment(tmp_path, MIXED, str(tmp_path / "db.sqlite"), ["someone-else"])
    plate = _kept_plate(tmp_path, config)
    for command in (["subject-access", plate], ["erase", plate, "--reason", "asked by letter"]):
        refused = _anpr(tmp_path, "db", *command, "--config", str(config))
        assert refused.returncode == 3, refused.stderr
        assert f"user '{ME}' is not the deployment's data-protection officer" in refused.stderr
        assert plate not in refused.stdout
    digest = load_keys(load_settings(config).store.key_file).plate_digest(plate)
    assert _count(f"sqlite:///{tmp_path / 'db.sqlite'}", digest) > 0  # nothing erased
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.connect() as conn:
        entries = conn.execute(text("select action, details from audit_log where action like '%.refused'")).all()
    engine.dispose()
    assert [a for a, _ in entries] == ["subject-access.refused", "erase.refused"]
    assert not any(plate in details or digest in details for _, details in entries)
    verified = _anpr(tmp_path, "audit", "verify", "--config", str(config))
    assert verified.returncode == 0, verified.stdout


@pytest.mark.system
def test_the_letter_renders_in_chromium_and_escapes_what_it_quotes(tmp_path):
    config = _deployment(tmp_path, MIXED, str(tmp_path / "db.sqlite"), [ME])
    data = yaml.safe_load(config.read_text())
    data["controller"]["contact"] = "<script>alert(1)</script> <img src=x onerror=alert(2)>"
    config.write_text(yaml.safe_dump(data))
    plate = _kept_plate(tmp_path, config)
    html, md = tmp_path / "letter.html", tmp_path / "letter.md"
    made = _anpr(tmp_path, "db", "subject-access", plate, "--config", str(config), "--html", str(html), "--md", str(md))
    assert made.returncode == 0, made.stderr
    assert html.stat().st_mode & 0o777 == 0o600 and md.stat().st_mode & 0o777 == 0o600
    for letter in (html, md):
        assert "<script>" not in letter.read_text() and "<img" not in letter.read_text()
    with page_alone(html) as page:
        assert page.locator("#records tbody tr").count() > 0
        assert "Your rights" in page.inner_text("#rights")
        assert "law_enforcement_request" in page.inner_text("#nothing-kept")


def test_a_plate_is_looked_for_as_the_reader_stores_it():
    assert stored_forms("ab-123 cd", ["FR"]) == ("AB123CD",)
    assert stored_forms("AB 0I2 CD", ["FR"]) == ("AB0I2CD", "AB012CD")  # a letter O typed as 0, I for 1
    assert stored_forms("ZZ999ZZ") == ("ZZ999ZZ",)  # fits a layout as typed: no other vehicle's plate


def test_naming_a_data_protection_officer_is_the_only_fingerprint_change(tmp_path):
    data = yaml.safe_load(MIXED.read_text())
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    before = load_settings(path).deployment.fingerprint()
    data["controller"]["contact"] = "dpo@example.org"
    path.write_text(yaml.safe_dump(data))
    assert load_settings(path).deployment.fingerprint() == before  # where to write is not policy
    data["controller"]["dpo"] = "alice"
    path.write_text(yaml.safe_dump(data))
    named = load_settings(path).deployment
    assert named.controller.dpo == ["alice"] and named.fingerprint() != before  # who may erase is


def _queued_read(plate: str) -> PolicedRead:
    return PolicedRead(plate_read(plate, 3), "cam", "criminal_investigation", "FR-LAPI-1", time.time() + 3600, False)


@pytest.mark.parametrize("kind", ["webhook", "mqtt"])
def test_what_a_sink_could_not_deliver_is_listed_and_erased_from_its_queue(kind, tmp_path):
    """A queue filled by the real sink while its receiver is down (nothing listens on port 1)."""
    from anpr.sinks.mqtt import MqttSettings
    from anpr.sinks.mqtt_client import MqttSink
    from anpr.sinks.webhook import Webhook, WebhookSettings

    queue = tmp_path / "queue"
    if kind == "webhook":
        settings = WebhookSettings(
            type="webhook", url="http://127.0.0.1:1/in", allow_http_hosts=["127.0.0.1"], queue_dir=str(queue)
        )
        sink = Webhook(settings)
    else:
        settings = MqttSettings(type="mqtt", host="127.0.0.1", port=1, tls=False, reads=True, queue_dir=str(queue))
        sink = MqttSink(settings)
    sink.write([_queued_read("AB123CD"), _queued_read("EF456GH")])
    sink.close()
    held = settings.held_records("out", lambda plate: plate == "AB123CD")
    assert held is not None and [r["plate"] for r in held[1]] == ["AB123CD"], held
    erased = settings.erase_records("out", lambda record: record["plate"] == "AB123CD")
    assert erased is not None and erased[0] == 1
    assert settings.held_records("out", lambda plate: plate == "AB123CD")[1] == []  # type: ignore[index]
    assert [r["plate"] for r in settings.held_records("out", lambda plate: True)[1]] == ["EF456GH"]  # type: ignore[index]
    assert not any(b"AB123CD" in p.read_bytes() for p in queue.iterdir() if p.is_file())

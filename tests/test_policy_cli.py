"""The policy layer as a user meets it: `anpr policy`, `anpr run --config`, `anpr demo`, `anpr db`, `anpr audit`."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import sqlite3
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
SAMPLE = REPO / "samples" / "sample.mp4"
VALENCIENNES = CONFIGS / "valenciennes-2020.yaml"
PARIS = CONFIGS / "paris-fps.yaml"
ME = pwd.getpwuid(os.geteuid()).pw_name


def test_policy_check_valenciennes_is_non_compliant_and_cites_the_law(anpr_cli):
    result = anpr_cli("policy", "check", str(VALENCIENNES))
    assert result.returncode == 3
    for citation in ("FR-MUN-REQ", "CNIL warning to Valenciennes, 12 May 2021", "L233-1", "L251-2"):
        assert citation in result.stdout


def test_policy_check_exit_codes(anpr_cli, tmp_path):
    assert anpr_cli("policy", "check", str(PARIS)).returncode == 0
    assert anpr_cli("policy", "check", str(CONFIGS / "mixed-camera.yaml")).returncode == 3
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("controller: {type: municipality, name: X}\ncameras: []\npurposes: {}\n")
    result = anpr_cli("policy", "check", str(invalid))
    assert result.returncode == 2 and str(invalid) in result.stderr and "camera" in result.stderr


def test_policy_explain(anpr_cli):
    result = anpr_cli("policy", "explain", str(CONFIGS / "zfe-unauthorised.yaml"))
    assert result.returncode == 0
    assert "DENY by rule FR-ZFE" in result.stdout and "missing:    prefect_authorisation" in result.stdout
    assert "UNVERIFIED" in result.stdout and "not legal advice" in result.stdout
    explained = json.loads(anpr_cli("policy", "explain", str(CONFIGS / "gendarmerie-l233.yaml"), "--json").stdout)
    [purpose] = explained["purposes"]
    assert (purpose["verdict"], purpose["rule"], purpose["verified"]) == ("allow", "FR-LAPI-1", True)
    assert (purpose["retention_days"], purpose["hit_retention_days"]) == (15, 30)


def test_run_refuses_a_deployment_whose_every_purpose_is_denied(anpr_cli, tmp_path):
    db = tmp_path / "v.sqlite"
    result = anpr_cli("run", str(SAMPLE), "--config", str(VALENCIENNES), "--db", str(db))
    assert result.returncode == 3
    assert "FR-MUN-REQ" in result.stderr and "CNIL warning to Valenciennes" in result.stderr
    assert "L233-1, L251-2" in result.stderr and "Traceback" not in result.stderr
    assert not db.exists()


def test_run_without_a_deployment_is_refused(anpr_cli, tmp_path):
    result = anpr_cli("run", str(SAMPLE), "--db", str(tmp_path / "x.sqlite"))
    assert result.returncode == 3 and "no deployment declared" in result.stderr


def agents_config(folder: Path) -> Path:
    """The Paris FPS config with the test's own OS account as its one designated agent
    (the user a query is made as: the authenticated one, never a flag)."""
    data = yaml.safe_load(PARIS.read_text())
    data["purposes"]["parking_fps"]["safeguards"]["designated_agents"] = [ME]
    path = folder / "paris-agents.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def ocr_plates(tmp_path_factory):
    """Every plate text (and raw OCR text) the pipeline produces on the sample, from an
    allowed run: its database, key file and config in one folder (see `copied`)."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("anpr") or str(Path(sys.executable).parent / "anpr")
    folder = tmp_path_factory.mktemp("paris")
    config = agents_config(folder)
    result = subprocess.run(
        [exe, "run", str(SAMPLE), "--config", str(config), "--db", str(folder / "p.sqlite"), "--jsonl"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr
    reads = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(reads) >= 20  # video's defaults: every third frame, settled plates read no more
    return folder, {r["plate"] for r in reads} | {r["raw_text"] for r in reads}


def copied(run_folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The run's database, key file and config copied into `tmp_path` (the CLI's working
    folder there): the database and the config to give it."""
    for name in ("p.sqlite", "anpr.key", "paris-agents.yaml"):
        (tmp_path / name).write_bytes((run_folder / name).read_bytes())
    (tmp_path / "anpr.key").chmod(0o600)
    return tmp_path / "p.sqlite", tmp_path / "paris-agents.yaml"


def test_valenciennes_demo_run_stores_nothing_derived_from_any_read(anpr_cli, tmp_path, ocr_plates):
    _, plates = ocr_plates
    db = tmp_path / "valenciennes.sqlite"
    result = anpr_cli(
        "run", str(SAMPLE), "--config", str(VALENCIENNES), "--db", str(db), "--demo", "--jsonl", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # not even the operator's own output shows a blocked read
    assert not (tmp_path / "police-requisitions.jsonl").exists()
    content = db.read_bytes()
    digests = {hashlib.new(name, p.encode()).hexdigest().encode() for p in plates for name in ("sha256", "sha1", "md5")}
    found = [p for p in plates if p.encode() in content] + [d.decode() for d in digests if d in content]
    assert found == []
    connection = sqlite3.connect(db)
    assert connection.execute("select count(*) from reads").fetchone() == (0,)
    [(purpose, rule, outcome, count)] = connection.execute(
        "select purpose, rule_id, outcome, sum(count) from policy_counts group by 1, 2, 3"
    ).fetchall()
    assert (purpose, rule, outcome) == ("law_enforcement_request", "FR-MUN-REQ", "blocked") and count >= 20
    assert f"anpr: law_enforcement_request: {count} reads blocked (FR-MUN-REQ); only the count is kept" in result.stderr
    assert anpr_cli("audit", "verify", "--db", str(db), cwd=tmp_path).returncode == 0


# LEGAL.md's verdict and rule for each shipped config's purposes.
EXPECTED_DEMO = {
    ("city-analytics.yaml", "city_wide_analytics"): ("deny", "FR-ANALYTICS"),
    ("gendarmerie-l233.yaml", "criminal_investigation"): ("allow", "FR-LAPI-1"),
    ("mixed-camera.yaml", "parking_fps"): ("allow", "FR-FPS"),
    ("mixed-camera.yaml", "law_enforcement_request"): ("deny", "FR-MUN-REQ"),
    ("municipal-parking-offence.yaml", "parking_criminal_offence"): ("deny", "FR-MUN-CRIM"),
    ("paris-fps.yaml", "parking_fps"): ("allow", "FR-FPS"),
    ("private-car-park.yaml", "access_control"): ("allow", "FR-ACCESS"),
    ("traffic-stats.yaml", "traffic_statistics"): ("allow", "FR-STATS"),
    ("valenciennes-2020.yaml", "law_enforcement_request"): ("deny", "FR-MUN-REQ"),
    ("zfe-unauthorised.yaml", "zfe_enforcement"): ("deny", "FR-ZFE"),
    ("zfe.yaml", "zfe_enforcement"): ("allow", "FR-ZFE"),
}


def test_demo_table_agrees_with_the_rule_table(anpr_cli, tmp_path):
    result = anpr_cli("demo", "--json", "--keep", str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(r["config"], r["purpose"]): (r["verdict"], r["rule"]) for r in rows} == EXPECTED_DEMO
    for row in rows:
        seen = row["seen"]
        assert seen >= 20  # the sample's reads at video's defaults (every third frame, settled plates)
        if row["verdict"] == "deny":
            assert (row["stored"], row["blocked"]) == (0, seen), row
        elif row["rule"] == "FR-STATS":
            assert (row["stored"], row["counted_only"]) == (0, seen), row
        elif row["rule"] == "FR-ZFE":
            assert row["stored"] > 0 and row["not_stored"] > 0 and row["stored"] + row["not_stored"] == seen, row
        else:
            assert (row["stored"], row["blocked"]) == (seen, 0), row
    mixed = sqlite3.connect(tmp_path / "mixed-camera.sqlite")
    assert mixed.execute("select distinct purpose from reads").fetchall() == [("parking_fps",)]
    assert not (tmp_path / "mixed-camera-police_export.jsonl").exists()


def test_fps_reads_are_deleted_on_payment_and_on_recorded_finding(anpr_cli, tmp_path, ocr_plates):
    db, config = copied(ocr_plates[0], tmp_path)
    plates = [p for (p,) in sqlite3.connect(db).execute("select distinct plate from reads order by plate")]
    paid, unpaid = plates[0], plates[1]
    connection = sqlite3.connect(db)
    before = dict(connection.execute("select plate, count(*) from reads group by plate").fetchall())
    for plate, number in connection.execute("select plate, count(*) from passages group by plate").fetchall():
        before[plate] = before.get(plate, 0) + number  # a plate's passages go with its reads
    connection.close()
    result = anpr_cli("db", "mark-paid", paid, "--config", str(config), "--db", str(db), cwd=tmp_path)
    assert result.returncode == 0 and f"deleted {before[paid]} read(s)" in result.stdout
    result = anpr_cli("db", "record-finding", unpaid, "--config", str(config), "--db", str(db), cwd=tmp_path)
    assert result.returncode == 0 and f"deleted {before[unpaid]} read(s)" in result.stdout
    remaining = {p for (p,) in sqlite3.connect(db).execute("select distinct plate from reads")}
    assert paid not in remaining and unpaid not in remaining and remaining
    actions = sqlite3.connect(db).execute("select action, actor, details from audit_log order by seq").fetchall()
    assert [(a, actor) for a, actor, _ in actions][-2:] == [("mark-paid", ME), ("record-finding", ME)]
    assert all(paid not in details and unpaid not in details for _, _, details in actions[-2:])
    result = anpr_cli("db", "mark-paid", paid, "--config", str(VALENCIENNES), "--db", str(db), cwd=tmp_path)
    assert result.returncode == 3
    # Another deployment's config (here: the shipped one, which names no agent) is refused.
    result = anpr_cli("db", "mark-paid", plates[2], "--config", str(PARIS), "--db", str(db), cwd=tmp_path)
    assert result.returncode == 3 and "anpr policy migrate" in result.stderr


def test_queries_are_gated_and_tampering_with_the_audit_log_is_found(anpr_cli, tmp_path, ocr_plates):
    db, config = copied(ocr_plates[0], tmp_path)
    [(plate,)] = sqlite3.connect(db).execute("select plate from reads limit 1").fetchall()
    answered = anpr_cli(
        "db",
        "search",
        plate,
        "--purpose",
        "parking_fps",
        "--config",
        str(config),
        "--db",
        str(db),
        "--json",
        cwd=tmp_path,
    )
    assert answered.returncode == 0
    assert {json.loads(line)["plate"] for line in answered.stdout.splitlines()} == {plate}
    refused = anpr_cli(
        "db",
        "search",
        plate,
        "--purpose",
        "law_enforcement_request",
        "--config",
        str(config),
        "--db",
        str(db),
        cwd=tmp_path,
    )
    assert refused.returncode == 3 and "query refused" in refused.stderr and refused.stdout == ""
    connection = sqlite3.connect(db)
    actions = [a for (a,) in connection.execute("select action from audit_log order by seq")]
    assert actions[-2:] == ["query", "query.refused"]
    assert anpr_cli("audit", "verify", "--db", str(db), cwd=tmp_path).returncode == 0

    # Someone with write access to the database drops the guard and rewrites history.
    connection.execute("drop trigger if exists audit_log_no_update")
    connection.execute("drop trigger if exists audit_log_no_delete")
    for (name,) in connection.execute("select name from sqlite_master where type = 'trigger'").fetchall():
        connection.execute(f"drop trigger {name}")
    last = connection.execute("select max(seq) from audit_log").fetchone()[0]
    connection.execute("update audit_log set actor = 'nobody' where seq = ?", (last,))
    connection.commit()
    result = anpr_cli("audit", "verify", "--db", str(db), cwd=tmp_path)
    assert result.returncode == 1 and f"entry {last}" in result.stdout and "edited" in result.stdout

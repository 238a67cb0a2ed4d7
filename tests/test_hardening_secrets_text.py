"""Issue 26, cases 1, 2, 5, 6 and 7: secrets in URLs, and outside text that reaches a person.

1. A camera URL's query holds a secret under a name no list foresaw (`pass=`, `pw=`,
   `passphrase=`): every query value whose name is not known to be harmless is hidden,
   in the error, the reads' and passages' source, the JSON lines and the status log.
2. A `--db` URL's `?password=` / `?sslpassword=`: hidden in every error.
5. The Markdown report: names from the config and a query's procedure are text, never HTML.
6. A `--purpose` holding an escape sequence or a plate: shown escaped, and a purpose that
   is no known purpose kept in the audit log by its length only.
7. A file name holding a line break and an ANSI escape: shown escaped on stderr and stored
   escaped in `reads.source`.

Real parts throughout: the `anpr` command in a subprocess, a real HTTP stream, the real
database and audit log.
"""

from __future__ import annotations

import http.server
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support.live_run import LiveRun

from anpr.errors import StoreError
from anpr.redact import printable, redact
from anpr.storage.store import ReadStore, shown_url

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "sample.mp4"
PARIS = REPO / "configs" / "paris-fps.yaml"
ME = pwd.getpwuid(os.geteuid()).pw_name
SECRET = "S3cretValue"
UNREACHABLE_DB = "postgresql+psycopg://anpr@127.0.0.1:1/anpr"  # nothing listens on port 1
# A file name that would clear the screen and forge a line of the run's summary.
FORGED_NAME = "v\x1b[2J\nanpr: 0 reads kept\n.mp4"
FORGED_PURPOSE = "x\x1b[2J\nreads held: 0\u202e\u2028\x9b31m"
HOSTILE = {
    "deployment": "Paris <script>alert(1)</script>",
    "controller": "<img src=x onerror=alert(2)>",
    "camera": "cam<b>7</b>",
    "location": '<iframe src="https://evil.example/"></iframe>',
    "legal_basis": "<svg onload=alert(3)> [click](javascript:alert(4))",
    "agent": '<a href="javascript:alert(5)">agent</a>',
    "procedure": "<script>alert(6)</script>\x1b[2J",
}


def _anpr(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("anpr") or str(Path(sys.executable).parent / "anpr")
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def _controls(text: str) -> set[str]:
    """The characters of `text` that would act on a terminal or break a line (tab and the
    line breaks between lines excepted)."""
    return {ch for ch in text if not ch.isprintable() and ch not in "\n"}


# ---- 1: every query value not known to be harmless is hidden ----------------------------------


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        (
            f"rtsp://127.0.0.1:1/live?user=admin&pass={SECRET}&pw={SECRET}&passphrase={SECRET}",
            "rtsp://127.0.0.1:1/live?user=***&pass=***&pw=***&passphrase=***",
        ),
        (
            f"http://cam/s.ts?channel=1&subtype=0&Vendor-Key={SECRET}",
            "http://cam/s.ts?channel=1&subtype=0&Vendor-Key=***",
        ),
        (f"rtsp://cam/x?RTSP-Transport=tcp&{SECRET}", "rtsp://cam/x?RTSP-Transport=tcp&***"),  # a bare token
        (f"rtsp://cam/x?profile=1?k={SECRET}#{SECRET}", "rtsp://cam/x?profile=1?k=***#***"),
        (f"rtsp://cam/x?p%61ss={SECRET}&ch%61nnel=2", "rtsp://cam/x?p%61ss=***&ch%61nnel=2"),
        ("rtsp://cam/x?empty=&fps=", "rtsp://cam/x?empty=&fps="),
    ],
)
def test_every_query_value_not_known_to_be_harmless_is_hidden(location, shown):
    assert redact(location) == shown
    assert SECRET not in redact(location) and redact(shown) == shown


class _TsStream:
    """A real HTTP server that answers every GET, whatever its query, with the sample as an
    MPEG-TS stream (what a camera's `http://.../s.ts?pass=...` serves), and records the
    paths asked for: the stream must get its secret."""

    def __init__(self, ts: bytes) -> None:
        asked = self.asked = []

        class Stream(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                asked.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Content-Length", str(len(ts)))
                self.end_headers()
                self.wfile.write(ts)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stream)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def sample_ts(tmp_path_factory) -> bytes:
    ts = tmp_path_factory.mktemp("ts") / "s.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(SAMPLE), "-c", "copy", "-f", "mpegts", str(ts)], check=True)
    return ts.read_bytes()


@pytest.mark.system
def test_a_stream_s_pass_parameter_reaches_the_stream_and_nothing_else(sample_ts, tmp_path):
    config = tmp_path / "paris.yaml"
    data = yaml.safe_load(PARIS.read_text())
    data["purposes"]["parking_fps"]["safeguards"]["designated_agents"] = [ME]
    config.write_text(yaml.safe_dump(data))
    db, status_log = tmp_path / "live.sqlite", tmp_path / "status.jsonl"
    server = _TsStream(sample_ts)
    url = f"http://127.0.0.1:{server.port}/s.ts?user=admin&pass={SECRET}&channel=1"
    shown = f"http://127.0.0.1:{server.port}/s.ts?user=***&pass=***&channel=1"
    try:
        options = ("--config", str(config), "--db", str(db), "--jsonl", "--log-json", str(status_log))
        with LiveRun(url, *options, cwd=tmp_path) as run:
            run.wait_for(lambda o: True, 180, "a first read")
            run.stop(signal.SIGTERM)
    finally:
        server.close()
    assert run.process.returncode == 0, run.stderr
    assert f"/s.ts?user=admin&pass={SECRET}&channel=1" in server.asked  # the stream got it
    with sqlite3.connect(db) as connection:
        assert connection.execute("select distinct source from reads").fetchall() == [(shown,)]
        assert connection.execute("select distinct source from passages").fetchall() == [(shown,)]
    assert {o["source"] for o in run.objects} == {shown}
    assert shown in run.stderr  # "reading ... as camera scan-car-07"
    for where, text in [
        ("stderr", run.stderr),
        ("JSON lines", json.dumps(run.objects)),
        ("status log", status_log.read_text()),
        ("database", db.read_bytes().decode("latin-1")),
    ]:
        assert SECRET not in text, where


def test_a_stream_url_s_pass_parameter_is_not_in_the_error(tmp_path):
    config = tmp_path / "paris.yaml"
    config.write_text(PARIS.read_text())
    url = f"rtsp://127.0.0.1:1/live?user=admin&pass={SECRET}"  # nothing listens on port 1
    result = _anpr(tmp_path, "run", url, "--config", str(config), "--db", str(tmp_path / "x.sqlite"))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "anpr: error: cannot connect to stream: " + redact(url)
    assert SECRET not in result.stderr + result.stdout


# ---- 2: a database URL's query password ---------------------------------------------------------


def test_a_database_url_shows_its_login_and_hides_its_query_passwords():
    url = f"{UNREACHABLE_DB}?password={SECRET}&sslpassword={SECRET}&sslmode=require"
    shown = f"{UNREACHABLE_DB}?password=***&sslmode=require&sslpassword=***"  # as SQLAlchemy orders them
    assert shown_url(url) == shown
    assert shown_url(f"postgresql://anpr:{SECRET}@h/db") == "postgresql://anpr:***@h/db"
    assert SECRET not in shown_url(f"postgresql://anpr:{SECRET}@h:notaport/db?password={SECRET}")  # unparsable
    with pytest.raises(StoreError) as refused:
        ReadStore(url, lambda: None).check(create=False)  # type: ignore[arg-type, return-value]
    assert str(refused.value).startswith(f"cannot open database {shown}: ") and SECRET not in str(refused.value)


@pytest.mark.parametrize(
    "command",
    [
        ("db", "summary", "--config", "{config}"),
        ("db", "purge", "--config", "{config}"),
        ("audit", "verify"),
        ("run", str(SAMPLE), "--config", "{config}"),
        ("db", "search", "AB123CD", "--purpose", "parking_fps", "--config", "{config}"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
@pytest.mark.parametrize("parameter", ["password", "sslpassword"])
def test_a_db_url_s_query_password_is_in_no_error(command, parameter, tmp_path):
    config = tmp_path / "paris.yaml"
    config.write_text(PARIS.read_text())
    db = f"{UNREACHABLE_DB}?{parameter}={SECRET}"
    result = _anpr(tmp_path, *(a.format(config=config) for a in command), "--db", db)
    assert result.returncode == 2, result.stderr
    assert f"anpr: error: cannot open database {UNREACHABLE_DB}?{parameter}=***: " in result.stderr
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize("command", [("db", "summary", "--config", "{config}"), ("audit", "verify")])
def test_an_invalid_db_url_is_named_without_its_passwords(command, tmp_path):
    config = tmp_path / "paris.yaml"
    config.write_text(PARIS.read_text())
    db = f"postgresql+psycopg://anpr:{SECRET}@h:notaport/anpr?password={SECRET}"
    result = _anpr(tmp_path, *(a.format(config=config) for a in command), "--db", db)
    assert result.returncode == 2 and "invalid database URL" in result.stderr, result.stderr
    assert SECRET not in result.stderr + result.stdout


# ---- 3: outside text is made printable in one place ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("\x1b[2J\x07\x7f", "\\x1b[2J\\x07\\x7f"),  # an ANSI sequence, a bell, DEL
        ("\x85\x9b31m", "\\u0085\\u009b31m"),  # C1: NEL, and CSI, which some terminals obey
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),  # line and paragraph separators
        ("\u202eevil\u202c \u2066x\u2069 \u200f", "\\u202eevil\\u202c \\u2066x\\u2069 \\u200f"),  # bidi
        (os.fsdecode(b"photo-\xff.jpg"), "photo-\\xff.jpg"),  # a byte that is not UTF-8
        ("\udc41", "\\udc41"),  # a surrogate that was no byte (a YAML string's escape)
        ("Zürich 東京 🚗 plain", "Zürich 東京 🚗 plain"),
    ],
)
def test_printable_shows_every_control_and_format_character_escaped(text, shown):
    assert printable(text) == shown
    assert printable(shown) == shown and shown.isprintable()


# ---- 5, 6, 7: a deployment whose names are HTML, a file name that forges a line ----------------


@dataclass
class Hostile:
    folder: Path
    config: Path
    db: Path
    plate: str
    run: subprocess.CompletedProcess[str]

    def anpr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _anpr(self.folder, *args, "--config", str(self.config), "--db", str(self.db))

    def audit_details(self) -> list[str]:
        with sqlite3.connect(self.db) as connection:
            return [details for (details,) in connection.execute("select details from audit_log order by seq")]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Iterator[Hostile]:
    """Paris FPS with HTML in every name the report shows, this user as an agent, and the
    sample run under a file name holding an ANSI escape and line breaks."""
    folder = tmp_path_factory.mktemp("hostile")
    data = yaml.safe_load(PARIS.read_text())
    data["name"] = HOSTILE["deployment"]
    data["controller"]["name"] = HOSTILE["controller"]
    data["cameras"][0].update(id=HOSTILE["camera"], location=HOSTILE["location"])
    purpose = data["purposes"]["parking_fps"]
    purpose["legal_basis"] = HOSTILE["legal_basis"]
    purpose["safeguards"]["designated_agents"] = [ME, HOSTILE["agent"]]
    config = folder / "hostile.yaml"
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    video = folder / FORGED_NAME
    shutil.copy(SAMPLE, video)
    db = folder / "h.sqlite"
    run = _anpr(folder, "run", str(video), "--config", str(config), "--db", str(db), "--jsonl")
    assert run.returncode == 0, run.stderr
    plate = json.loads(run.stdout.splitlines()[0])["plate"]
    yield Hostile(folder, config, db, plate, run)


@pytest.mark.system
def test_a_file_name_cannot_forge_a_line_nor_reach_the_database_raw(hostile):
    lines = hostile.run.stderr.splitlines()
    assert "anpr: 0 reads kept" not in lines and not _controls(hostile.run.stderr), lines
    shown = printable(str(hostile.folder / FORGED_NAME))
    assert f"anpr: reading {shown} as camera {HOSTILE['camera']}" in lines
    with sqlite3.connect(hostile.db) as connection:
        assert connection.execute("select distinct source from reads").fetchall() == [(shown,)]
        assert connection.execute("select distinct source from passages").fetchall() == [(shown,)]
    assert {json.loads(line)["source"] for line in hostile.run.stdout.splitlines()} == {shown}


@pytest.mark.system
def test_a_purpose_with_an_escape_sequence_is_shown_escaped_and_not_kept(hostile):
    refused = hostile.anpr("db", "search", hostile.plate, "--purpose", FORGED_PURPOSE)
    assert refused.returncode == 3 and not _controls(refused.stderr)
    assert refused.stderr == f"anpr: error: query refused: purpose '{printable(FORGED_PURPOSE)}' is denied " + (
        "for this deployment (FR-DEFAULT: GDPR art. 5(1)(b) purpose limitation (fail closed))\n"
    )
    as_plate = hostile.anpr("db", "search", hostile.plate, "--purpose", hostile.plate)  # a plate typed as purpose
    assert as_plate.returncode == 3 and hostile.plate in as_plate.stderr  # shown to whoever typed it
    denied = hostile.anpr("db", "search", hostile.plate, "--purpose", "law_enforcement_request")
    assert denied.returncode == 3
    refusals = [json.loads(d) for d in hostile.audit_details()[-3:]]
    assert [r["purpose"] for r in refusals] == [
        f"(not a known purpose: {len(FORGED_PURPOSE)} characters)",
        f"(not a known purpose: {len(hostile.plate)} characters)",
        "law_enforcement_request",  # a purpose of the rules is a word of theirs, kept as typed
    ]
    log = "\n".join(hostile.audit_details())
    assert "reads held" not in log and "\\u001b" not in log and f'"{hostile.plate}' not in log
    assert hostile.plate not in json.dumps(refusals)
    summary = hostile.anpr("db", "summary")
    assert summary.returncode == 0, summary.stderr
    assert not _controls(summary.stdout + summary.stderr)
    assert f"purpose (not a known purpose: {len(FORGED_PURPOSE)} characters), procedure -, reads: refused" in (
        summary.stdout
    )


@pytest.mark.system
def test_a_procedure_is_kept_printable_and_the_summary_shows_old_entries_escaped(hostile):
    answered = hostile.anpr("db", "search", hostile.plate, "--purpose", "parking_fps", "--procedure", "P\x1b[2J\n1")
    assert answered.returncode == 0, answered.stderr
    assert json.loads(hostile.audit_details()[-1])["procedure"] == "P\\x1b[2J\\n1"
    summary = hostile.anpr("db", "summary")
    assert "procedure P\\x1b[2J\\n1, reads: answered" in summary.stdout and not _controls(summary.stdout)


@pytest.mark.system
def test_the_markdown_report_shows_every_name_as_text_never_as_html(hostile):
    from markdown_it import MarkdownIt

    answered = hostile.anpr(
        "db", "search", hostile.plate, "--purpose", "parking_fps", "--procedure", HOSTILE["procedure"]
    )
    assert answered.returncode == 0, answered.stderr
    made = hostile.anpr("report", "--md", "r.md", "--html", "r.html")
    assert made.returncode == 0, made.stderr
    md = (hostile.folder / "r.md").read_text()
    for tag in ("<script", "<img", "<iframe", "<svg", "<a ", "<b>"):
        assert tag not in md, tag
    assert not _controls(md)
    rendered = MarkdownIt("commonmark").render(md)  # raw HTML passes through CommonMark
    for tag in ("<script", "<img", "<iframe", "<svg", "<a ", "<b>"):
        assert tag not in rendered, tag
    # Each name is there, as the text it is (entities decoded by the renderer).
    page = rendered.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    for name in ("deployment", "controller", "camera", "location", "legal_basis", "agent"):
        assert HOSTILE[name] in page, name
    assert printable(HOSTILE["procedure"]) in page

"""Issue 26, cases 1, 2, 5, 6 and 7: secrets in URLs, and outside text that reaches a person.

Camera and database URLs whose secrets sit under names no list foresaw; a report whose
names are HTML; a purpose and a file name that hold escape sequences and line breaks.
"""

from __future__ import annotations

import http.server
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from anpr.redact import printable
from benchmarks.attacks.kit import ME, SAMPLE, Target, anpr, row, said, write_yaml

SECRET = "S3cret"
UNREACHABLE_DB = "postgresql+psycopg://anpr@127.0.0.1:1/anpr"
FORGED_NAME = "v\x1b[2J\nanpr: 0 reads kept\n.mp4"
FORGED_PURPOSE = "x\x1b[2J\nreads held: 0"
HTML_NAMES = {
    "deployment": "Paris <script>alert(1)</script>",
    "controller": "<img src=x onerror=alert(2)>",
    "camera": '<iframe src="https://evil.example/"></iframe>',
    "agent": '<a href="javascript:alert(3)">agent</a>',
}
TAGS = ("<script", "<img", "<iframe", "<a ")


def run(target: Target) -> None:
    """Every attack of this group, each adding its row."""
    camera_secrets(target)
    database_secrets(target)
    config, run_of_forged_name = hostile_names(target)
    markdown_report(target, config)
    forged_purpose(target)
    forged_file_name(target, run_of_forged_name)


def _controls(text: str) -> bool:
    """Whether `text` holds a character that acts on a terminal (line breaks between lines aside)."""
    return any(not ch.isprintable() for ch in text.replace("\n", ""))


def _leaks(texts: dict[str, str]) -> str:
    found = [where for where, text in texts.items() if SECRET in text]
    return ", ".join(found) if found else "nowhere"


def camera_secrets(target: Target) -> None:
    url = f"rtsp://127.0.0.1:1/live?user=admin&pass={SECRET}&pw={SECRET}&passphrase={SECRET}"
    result = anpr("run", url, "--config", str(target.config), "--db", str(target.work / "r.sqlite"), cwd=target.work)
    row(
        "26.1",
        "a camera URL with `pass=`, `pw=`, `passphrase=`",
        f"anpr run '{url}' --config ...",
        said(result) + f"; `{SECRET}` in output: {SECRET in result.stderr + result.stdout}",
    )
    stream_with_pass(target)


def stream_with_pass(target: Target) -> None:
    """The sample served as an MPEG-TS stream over HTTP, its URL holding `?pass=`."""
    ts = target.work / "s.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(SAMPLE), "-c", "copy", "-f", "mpegts", str(ts)], check=True
    )
    data = ts.read_bytes()

    class Stream(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    db, status = target.work / "stream.sqlite", target.work / "status.jsonl"
    url = f"http://127.0.0.1:{server.server_address[1]}/s.ts?pass={SECRET}"
    command = [sys.executable, "-m", "anpr", "run", url, "--config", str(target.config), "--db", str(db), "--jsonl"]
    process = subprocess.Popen(
        [*command, "--log-json", str(status)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=target.work,
    )
    watchdog = threading.Timer(600, process.kill)  # a stream never ends by itself: stopped after its first read
    watchdog.start()
    try:
        first = process.stdout.readline() if process.stdout else ""
        process.send_signal(signal.SIGTERM)
        rest, stderr = process.communicate(timeout=120)
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
    with sqlite3.connect(db) as connection:
        sources = sorted(
            {s for (s,) in connection.execute("select source from reads union select source from passages")}
        )
    texts = {
        "stderr": stderr,
        "JSON lines": first + rest,
        "status log": status.read_text() if status.exists() else "",
        "database": db.read_bytes().decode("latin-1"),
    }
    row(
        "26.1",
        "a stream served at `http://…/s.ts?pass=…`, read until its first plate",
        "anpr run 'http://127.0.0.1:PORT/s.ts?pass=S3cret' --jsonl --log-json status.jsonl ...",
        f"exit {process.returncode}; reads.source and passages.source "
        + ", ".join(f"`{printable(s.replace(str(server.server_address[1]), 'PORT'))}`" for s in sources)
        + f"; `{SECRET}` found {_leaks(texts)}",
    )


def database_secrets(target: Target) -> None:
    for parameter in ("password", "sslpassword"):
        db = f"{UNREACHABLE_DB}?{parameter}={SECRET}"
        for command in (
            ("db", "summary", "--config", str(target.config)),
            ("run", str(SAMPLE), "--config", str(target.config)),
            ("db", "purge", "--config", str(target.config)),
            ("audit", "verify"),
        ):
            result = anpr(*command, "--db", db, cwd=target.work)
            shown = " ".join(command[:2] if command[0] != "run" else command[:1])
            row(
                "26.2",
                f"a `--db` URL with `?{parameter}=`",
                f"anpr {shown} ... --db '{db}'",
                said(result) + f"; `{SECRET}` in output: {SECRET in result.stderr + result.stdout}",
            )


def hostile_names(target: Target) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The sample run under a file name holding an ANSI escape and line breaks, by a
    deployment whose names are HTML (into html-names.sqlite): its config, and the run."""
    data = yaml.safe_load(target.config.read_text())
    data["name"] = HTML_NAMES["deployment"]
    data["controller"]["name"] = HTML_NAMES["controller"]
    data["cameras"][0]["location"] = HTML_NAMES["camera"]
    data["purposes"]["parking_fps"]["safeguards"]["designated_agents"] = [ME, HTML_NAMES["agent"]]
    config = write_yaml(target.work / "html-names.yaml", data)
    video = target.work / FORGED_NAME
    shutil.copy(SAMPLE, video)
    db = target.work / "html-names.sqlite"
    return config, anpr("run", str(video), "--config", str(config), "--db", str(db), cwd=target.work)


def forged_file_name(target: Target, result: subprocess.CompletedProcess[str]) -> None:
    with sqlite3.connect(target.work / "html-names.sqlite") as connection:
        sources = sorted(
            {s for (s,) in connection.execute("select source from reads union select source from passages")}
        )
    lines = result.stderr.splitlines()
    row(
        "26.7",
        "a video named `v<ESC>[2J<LF>anpr: 0 reads kept<LF>.mp4`",
        "anpr run $'v\\e[2J\\nanpr: 0 reads kept\\n.mp4' --config ...",
        f"exit {result.returncode}; forged stderr line: {'anpr: 0 reads kept' in lines}; "
        f"control characters on stderr: {_controls(result.stderr)}; "
        "reads.source and passages.source "
        + ", ".join(f"`{printable(s.replace(f'{target.work}/', ''))}`" for s in sources),
    )


def forged_purpose(target: Target) -> None:
    for purpose, what in ((FORGED_PURPOSE, "an escape sequence and a line break"), (target.plate, "a plate")):
        result = anpr(
            "db",
            "search",
            target.plate,
            "--purpose",
            purpose,
            "--config",
            str(target.config),
            "--db",
            str(target.db),
            cwd=target.work,
        )
        with sqlite3.connect(target.db) as connection:
            (details,) = connection.execute("select details from audit_log order by seq desc limit 1").fetchone()
        kept = json.loads(details).get("purpose")
        row(
            "26.6",
            f"`--purpose` holding {what}",
            f"anpr db search {target.plate} --purpose {purpose!r} ...",
            f"{said(result)}; the audit log keeps purpose `{printable(str(kept))}`",
        )
    summary = anpr("db", "summary", "--config", str(target.config), "--db", str(target.db), cwd=target.work)
    raw = summary.stdout + summary.stderr
    refused = [line.split(" UTC ", 1)[-1] for line in summary.stdout.splitlines() if "refused" in line][-2:]
    row(
        "26.6",
        "those queries read back",
        "anpr db summary --config ... --db p.sqlite",
        f"exit {summary.returncode}; control characters in its output: {_controls(raw)}; "
        + "; ".join(f"`{printable(line.split(', reads')[0])}`" for line in refused),
    )


def markdown_report(target: Target, config: Path) -> None:
    db = target.work / "html-names.sqlite"
    plate = target.plate
    procedure = "<script>alert(4)</script>"
    anpr(
        "db", "search", plate, "--purpose", "parking_fps", "--procedure", procedure,
        "--config", str(config), "--db", str(db), cwd=target.work,
    )  # fmt: skip
    result = anpr("report", "--config", str(config), "--db", str(db), "--md", "html-names.md", cwd=target.work)
    md = (target.work / "html-names.md").read_text() if (target.work / "html-names.md").exists() else ""
    raw = sorted({tag for tag in TAGS if tag in md})
    row(
        "26.5",
        "deployment, controller, camera and agent names and a query's procedure written as HTML",
        "anpr report --md html-names.md --config html-names.yaml ...",
        f"exit {result.returncode}; raw tags in the Markdown: {raw or 'none'}",
    )

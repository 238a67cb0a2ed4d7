"""Bad input through the real command line (issue 6, item 4).

Every case is one row of `CASES`: the files it writes, the `anpr` command it runs in a
subprocess (`python -m anpr ...`), and what must come out. Whatever the input, the
answer is a clear error or a clamp with a warning, never a traceback, and never lost
data:

- exit status 2 (bad input) or 3 (refused by policy): stderr holds exactly one
  `anpr: error: ...` line, the last, naming the problem; a refused run creates no
  database; every input file is left as it was;
- exit status 0 (damage skipped, a value clamped): the warning is printed and the reads
  of the frames that could be decoded are stored.

Issue 6 acceptance: bad inputs tried = len(CASES); tracebacks = the cases failing with
"TRACEBACK" (the first assertion of `test_bad_input`; must be 0).
"""

from __future__ import annotations

import http.server
import json
import os
import random
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO
from support.http_receiver import Receiver

from anpr.reading.plates import same_plate

PARIS = (REPO / "configs" / "paris-fps.yaml").read_text()  # FR-FPS: allowed, reads kept 1 day, 30 at most
CAR_PARK = (REPO / "configs" / "private-car-park.yaml").read_text()  # FR-ACCESS: reads kept 1 day at most
DAY = 86_400.0


@dataclass(frozen=True)
class Photo:
    """The bytes of photo `index` of the annotated set (few_photos)."""

    index: int


@dataclass(frozen=True)
class Clip:
    """A 30-frame 640x360 H.264 clip, one 10-frame passage per photo 0, 1, 2; then damaged."""

    container: str  # mkv, ts or mp4
    keep: float = 1.0  # the leading fraction of the file kept (truncation)
    damage: int = 0  # bytes overwritten with random ones, from the middle of the file


@dataclass(frozen=True)
class BoundDatabase:
    """An anpr database bound to configs/paris-fps.yaml, as its first run leaves it."""


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]  # after `python -m anpr`; {tmp} {db} {image} {paris} {port} {http} are filled in
    status: int  # expected exit status
    says: str = ""  # in the `anpr: error:` line (status 2, 3), or in an `anpr: warning:` line (status 0)
    also: str = ""  # anywhere in stderr (e.g. the reason printed above a refusal)
    files: dict[str, str | bytes | Photo | Clip | BoundDatabase | None] = field(default_factory=dict)  # None: a folder
    # Files made read-only (0444) and folders made unwritable (0555) for the run, which then
    # runs without root's power to write them regardless (CAP_DAC_OVERRIDE).
    read_only: tuple[str, ...] = ()
    db_after: str = ""  # "none", "reads" (reads stored) or "audit" (only the audit log); default by status
    reads_of: tuple[int, ...] = ()  # photos/passages whose plate must be among the stored reads
    true_frames: bool = False  # stored reads carry the frame number and media time of the clip's frame
    keeps_days: float | None = None  # every stored read is deleted after this many days
    queued: str = ""  # a webhook queue folder that must hold every stored read (by key), in private files


def _config(text: str) -> dict[str, str]:
    return {"c.yaml": text}


RUN_WITH_CONFIG = ("run", "{image}", "--config", "{tmp}/c.yaml")


def _run_config(name: str, text: str, status: int, says: str, **kw) -> Case:
    return Case(name, RUN_WITH_CONFIG, status, says, files=_config(text), **kw)


def _run_source(name: str, source: str, status: int, says: str, **kw) -> Case:
    return Case(name, ("run", source, "--config", "{paris}"), status, says, **kw)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _alias_bomb(levels: int) -> str:
    """YAML whose `name` expands to 9**levels strings (aliases: a few lines of text)."""
    lines = ["_0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"_{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nname: *a{levels - 1}\n"


# Investigators of the gendarmerie (FR-LAPI-1): the one rule that lets reads go to an
# export or a webhook (the authority's own systems); parking reads go to the database only.
LAPI = (
    "controller: {type: gendarmerie, name: Groupement du Nord}\n"
    "cameras:\n  - id: scan-car-07\n    purposes: [criminal_investigation]\n"
    "purposes:\n  criminal_investigation:\n    safeguards: {designated_agents: [adj-martin]}\n"
    "    sinks: [store]\n"
    "sinks:\n  store: {type: database}\n"
)
WEBHOOK = (
    LAPI.replace("sinks: [store]", "sinks: [store, hook]")
    + "  hook: {type: webhook, url: 'http://127.0.0.1:{port}/reads', allow_http_hosts: [127.0.0.1]}\n"
)
EXPORT = (
    LAPI.replace("sinks: [store]", "sinks: [store, export]")
    + "  export: {type: jsonl_export, path: '{tmp}/no/such/folder/reads.jsonl'}\n"
)
UNNAMED = PARIS.replace("name: Paris parking check (FPS)\n", "")
HOTLIST = PARIS.replace("sinks: [store]", "sinks: [store]\n    hotlist: {hotlist}")
NOISE = random.Random(4).randbytes(65536)
CORRUPT_JPEG = b"\xff\xd8\xff\xe0" + random.Random(5).randbytes(4096)  # a JPEG header, then nothing decodable


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, holding only its first rows:
    what a decoder allocates is decided by the header alone."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * width) * 4)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


NOT_UTF8 = os.fsdecode(b"\xff")  # a byte Linux allows in a file name; Python holds it as a lone surrogate

CASES: list[Case] = [
    # ---- sources ----
    _run_source("zero-byte video", "{tmp}/empty.mp4", 2, "video file is empty", files={"empty.mp4": b""}),
    _run_source("zero-byte image", "{tmp}/empty.jpg", 2, "not a readable image", files={"empty.jpg": b""}),
    _run_source(
        "text file named .mp4",
        "{tmp}/notes.mp4",
        2,
        "cannot open video",
        files={"notes.mp4": "meeting notes, not a video\n"},
    ),
    _run_source("random bytes named .mkv", "{tmp}/noise.mkv", 2, "cannot open video", files={"noise.mkv": NOISE}),
    _run_source("nonexistent path", "{tmp}/nope.mp4", 2, "no such file or folder"),
    _run_source(
        "folder of photos with annotation and sidecar files: the photos are read",
        "{tmp}/mixed",
        0,
        "3 file(s) that are not images skipped",
        files={
            "mixed/car.jpg": Photo(0),
            "mixed/car.txt": "car.jpg\t10\t10\t80\t20\tAB123CD\n",
            "mixed/labels.json": '{"car.jpg": "AB123CD"}',
            "mixed/README": "photos of the car park, March",
        },
        reads_of=(0,),
    ),
    _run_source(
        "folder of other files only",
        "{tmp}/docs",
        2,
        "folder holds no images",
        files={"docs/notes.txt": "not an image", "docs/README": "nothing here"},
    ),
    _run_source("empty folder", "{tmp}/void", 2, "folder holds no images", files={"void": None}),
    _run_source(
        "folder whose only image is empty",
        "{tmp}/photos",
        2,
        "folder holds no readable image",
        files={"photos/only.jpg": b""},
    ),
    _run_source(
        "folder with a zero-byte image between two good ones",
        "{tmp}/photos",
        0,
        "b.jpg: not a readable image (empty file)",
        files={"photos/a.jpg": Photo(0), "photos/b.jpg": b"", "photos/c.jpg": Photo(2)},
        reads_of=(0, 2),
    ),
    _run_source(
        "folder with a text file named .jpg",
        "{tmp}/photos",
        0,
        "notes.jpg: not a readable image (no JPEG, PNG",
        files={"photos/a.jpg": Photo(0), "photos/notes.jpg": "not an image\n"},
        reads_of=(0,),
    ),
    _run_source(
        "PNG declaring 60000x60000 pixels",
        "{tmp}/huge.png",
        2,
        "image too large (60000x60000 pixels",
        files={"huge.png": _png_declaring(60000, 60000)},
    ),
    _run_source(
        "folder with a PNG declaring 20000x20000 pixels: skipped, not decoded",
        "{tmp}/photos",
        0,
        "b.png: image too large (20000x20000 pixels",
        files={"photos/a.jpg": Photo(0), "photos/b.png": _png_declaring(20000, 20000)},
        reads_of=(0,),
    ),
    _run_source(
        "image whose name is not UTF-8",
        f"{{tmp}}/car{NOT_UTF8}.jpg",
        0,
        "",
        files={f"car{NOT_UTF8}.jpg": Photo(0)},
        reads_of=(0,),
    ),
    _run_source(
        "folder with an image whose name is not UTF-8",
        "{tmp}/photos",
        0,
        "",
        files={f"photos/a{NOT_UTF8}.jpg": Photo(0), "photos/b.jpg": Photo(2)},
        reads_of=(0, 2),
    ),
    _run_source(
        "video whose name is not UTF-8",
        f"{{tmp}}/clip{NOT_UTF8}.mkv",
        0,
        "",
        files={f"clip{NOT_UTF8}.mkv": Clip("mkv")},
        reads_of=(0, 2),
        true_frames=True,
    ),
    _run_source(
        "video whose name FFmpeg would take for a URL (http:clip.mkv)",
        "http:clip.mkv",  # relative to the working folder, {tmp}
        0,
        "",
        files={"http:clip.mkv": Clip("mkv")},
        reads_of=(0, 2),
    ),
    _run_source(
        "folder with an undecodable image between two good ones",
        "{tmp}/photos",
        0,
        "b.jpg",
        files={"photos/a.jpg": Photo(0), "photos/b.jpg": CORRUPT_JPEG, "photos/c.jpg": Photo(2)},
        reads_of=(0, 2),
    ),
    _run_source("rtsp URL to a closed port", "rtsp://127.0.0.1:{port}/stream", 2, "cannot connect to stream"),
    _run_source("malformed rtsp URL", "rtsp://", 2, "cannot connect to stream"),
    _run_source(
        "rtsp URL with a byte that is not UTF-8",
        f"rtsp://127.0.0.1:{{port}}/cam{NOT_UTF8}",
        2,
        "stream URL is not valid UTF-8",
    ),
    _run_source("http URL to a closed port", "http://127.0.0.1:{port}/cam.mjpg", 2, "cannot connect to stream"),
    _run_source("http URL serving a web page", "{http}/index.html", 2, "stream"),
    _run_source(
        "mkv truncated at half",
        "{tmp}/cut.mkv",
        0,
        "",
        files={"cut.mkv": Clip("mkv", keep=0.5)},
        reads_of=(0,),
        true_frames=True,
    ),
    _run_source(
        "mkv with 16 KB of random bytes in the middle",
        "{tmp}/hit.mkv",
        0,
        "",
        files={"hit.mkv": Clip("mkv", damage=16384)},
        reads_of=(0, 2),
    ),
    _run_source(
        "ts with 16 KB of random bytes in the middle: reads keep their frame number",
        "{tmp}/hit.ts",
        0,
        "",
        files={"hit.ts": Clip("ts", damage=16384)},
        reads_of=(0, 2),
        true_frames=True,
    ),
    _run_source(
        "mp4 with 16 KB of random bytes in the middle",
        "{tmp}/hit.mp4",
        0,
        "",
        files={"hit.mp4": Clip("mp4", damage=16384)},
        reads_of=(0, 2),
    ),
    _run_source(
        "mp4 truncated at half (its index is at the end)",
        "{tmp}/cut.mp4",
        2,
        "cannot open video",
        files={"cut.mp4": Clip("mp4", keep=0.5)},
    ),
    # ---- deployment config ----
    _run_config("zero-byte config", "", 3, "no deployment declared"),
    _run_config("negative batch", PARIS + "pipeline: {batch: -1}\n", 2, "key 'pipeline.batch'"),
    _run_config("batch 0", PARIS + "pipeline: {batch: 0}\n", 2, "key 'pipeline.batch'"),
    _run_config("batch 10**9", PARIS + f"pipeline: {{batch: {10**9}}}\n", 2, "key 'pipeline.batch'"),
    _run_config(
        "batch: true",
        PARIS + "pipeline: {batch: true}\n",
        2,
        "key 'pipeline.batch': must be a number, not a boolean",
    ),
    _run_config("batch: eight", PARIS + "pipeline: {batch: eight}\n", 2, "key 'pipeline.batch'"),
    _run_config("negative stride", PARIS + "pipeline: {stride: -2}\n", 2, "key 'pipeline.stride'"),
    _run_config("input_size not a multiple of 32", PARIS + "detector: {input_size: 500}\n", 2, "multiple of 32"),
    _run_config("confidence 2", PARIS + "detector: {confidence: 2}\n", 2, "key 'detector.confidence'"),
    _run_config("confidence .nan", PARIS + "detector: {confidence: .nan}\n", 2, "key 'detector.confidence'"),
    _run_config("unknown plate region", PARIS + "region: [FR, XX]\n", 2, "unknown region XX"),
    _run_config("region: a number", PARIS + "region: 33\n", 2, "key 'region': must be a region code"),
    _run_config("second_pass: always", PARIS + "detector: {second_pass: always}\n", 2, "key 'detector.second_pass'"),
    _run_config("unknown top-level key", PARIS + "colour: red\n", 2, "unknown key 'colour'"),
    _run_config("typo in a nested key", PARIS + "pipeline: {batchsize: 4}\n", 2, "unknown key 'pipeline.batchsize'"),
    _run_config(
        "cameras: a string",
        PARIS.replace("cameras:\n", "cameras: scan-car-07\n_cameras:\n"),
        2,
        "key 'cameras': Input should be a valid list",
    ),
    _run_config(
        "purposes: a list",
        PARIS.replace("  parking_fps:\n    legal_basis", "  - parking_fps:\n    legal_basis"),
        2,
        "key 'purposes': Input should be a valid dictionary",
    ),
    _run_config("YAML that is a list", "- a\n- b\n", 2, "expected a mapping of sections at the top level, got list"),
    _run_config("invalid YAML", PARIS + "pipeline: [\n", 2, "not valid YAML"),
    Case("binary garbage config", RUN_WITH_CONFIG, 2, "not valid YAML", files={"c.yaml": bytes(range(256)) * 16}),
    Case("UTF-16 config", RUN_WITH_CONFIG, 2, "not valid YAML", files={"c.yaml": PARIS.encode("utf-16")}),
    _run_config("YAML nested 5000 deep", f"name: {_nested(5000)}\n", 2, "nested too deeply"),
    _run_config(
        "YAML alias bomb (9**6 strings)", UNNAMED + _alias_bomb(6), 2, "key 'name': Input should be a valid string"
    ),
    _run_config(
        "duplicate section", PARIS + "pipeline: {batch: 4}\npipeline: {stride: 2}\n", 2, "duplicate key 'pipeline'"
    ),
    _run_config("impossible date as a name (stays text)", UNNAMED + "name: 2021-02-30\n", 0, "", reads_of=(0,)),
    Case(
        "config whose name is not UTF-8",
        ("run", "{image}", "--config", f"{{tmp}}/c{NOT_UTF8}.yaml"),
        0,
        "",
        files={f"c{NOT_UTF8}.yaml": PARIS},
        reads_of=(0,),
    ),
    Case(
        "config is a folder",
        ("run", "{image}", "--config", "{tmp}/conf.d"),
        2,
        "cannot read config file",
        files={"conf.d": None},
    ),
    Case("config file not found", ("run", "{image}", "--config", "{tmp}/missing.yaml"), 2, "config file not found"),
    _run_config(
        "retention longer than its rule allows",
        PARIS.replace("retention_days: 1", "retention_days: 31"),
        0,
        "requested retention 31 days exceeds the 30 days FR-FPS allows: clamped to 30",
        reads_of=(0,),
        keeps_days=30,
    ),
    _run_config(
        "retention .inf",
        PARIS.replace("retention_days: 1", "retention_days: .inf"),
        2,
        "key 'purposes.parking_fps.retention_days'",
    ),
    _run_config(
        "retention 1e308 days",
        PARIS.replace("retention_days: 1", "retention_days: 1.0e+308"),
        2,
        "key 'purposes.parking_fps.retention_days'",
    ),
    _run_config(
        "negative retention",
        PARIS.replace("retention_days: 1", "retention_days: -5"),
        2,
        "key 'purposes.parking_fps.retention_days'",
    ),
    _run_config(
        "unknown purpose",
        PARIS.replace("parking_fps", "parking_fpz"),
        3,
        "is denied",
        also="unknown purpose 'parking_fpz'",
    ),
    _run_config(
        "unknown controller type",
        PARIS.replace("type: municipality", "type: sheriff"),
        3,
        "is denied",
        also="unknown controller type 'sheriff'",
    ),
    _run_config(
        "duplicate camera ids",
        PARIS.replace("cameras:\n", "cameras:\n  - {id: scan-car-07, purposes: [parking_fps]}\n"),
        2,
        "camera ids must be unique",
    ),
    _run_config(
        "camera feeds an undeclared purpose",
        PARIS.replace("purposes: [parking_fps]", "purposes: [zfe]"),
        2,
        "feeds purpose 'zfe', which is not declared",
    ),
    _run_config("hotlist file missing", HOTLIST.replace("{hotlist}", "stolen.txt"), 2, "cannot read hotlist"),
    Case(
        "hotlist of binary bytes",
        RUN_WITH_CONFIG,
        2,
        "not UTF-8",
        files={"c.yaml": HOTLIST.replace("{hotlist}", "stolen.bin"), "stolen.bin": NOISE},
    ),
    _run_config("hotlist path with a NUL byte", HOTLIST.replace("{hotlist}", '"stolen\\0.txt"'), 2, "null byte"),
    _run_config(
        "webhook to a closed port: the run goes on, the batch waits in its queue",
        WEBHOOK,
        0,
        "webhook http://127.0.0.1:",
        reads_of=(0,),
        queued="anpr-webhook-hook",
    ),
    _run_config("export into a missing folder", EXPORT, 2, "cannot write export", db_after="reads"),
    # ---- command-line options ----
    Case("--batch -1", ("run", "{image}", "--config", "{paris}", "--batch", "-1"), 2, "key 'pipeline.batch'"),
    Case("--batch eight", ("run", "{image}", "--config", "{paris}", "--batch", "eight"), 2, "--batch"),
    Case("--ocr tesseract", ("run", "{image}", "--config", "{paris}", "--ocr", "tesseract"), 2, "key 'pipeline.ocr'"),
    Case("--device gpu", ("run", "{image}", "--config", "{paris}", "--device", "gpu"), 2, "key 'detector.device'"),
    Case(
        "--camera not in the config",
        ("run", "{image}", "--config", "{paris}", "--camera", "cam-9"),
        2,
        "no camera 'cam-9'",
    ),
    Case("--db ''", ("run", "{image}", "--config", "{paris}", "--db", ""), 2, "key 'store.url'"),
    Case(
        "--db in a missing folder",
        ("run", "{image}", "--config", "{paris}", "--db", "{tmp}/no/reads.sqlite"),
        2,
        "database folder does not exist",
    ),
    Case(
        "--db a text file",
        ("run", "{image}", "--config", "{paris}", "--db", "{tmp}/notes.sqlite"),
        2,
        "file is not a database",
        files={"notes.sqlite": "my notes\n"},
    ),
    # A video source: its decoding thread, left running by a late failure, aborted the process.
    Case(
        "--db a read-only database file",
        ("run", "{tmp}/v.mkv", "--config", "{paris}", "--db", "{tmp}/old.sqlite"),
        2,
        "attempt to write a readonly database",
        files={"v.mkv": Clip("mkv"), "old.sqlite": BoundDatabase()},
        read_only=("old.sqlite",),
    ),
    Case(
        "--db a database in a read-only folder",
        ("run", "{tmp}/v.mkv", "--config", "{paris}", "--db", "{tmp}/old/reads.sqlite"),
        2,
        "attempt to write a readonly database",
        files={"v.mkv": Clip("mkv"), "old/reads.sqlite": BoundDatabase()},
        read_only=("old",),
    ),
    Case(
        "--mask without --annotate",
        ("run", "{tmp}/v.mkv", "--config", "{paris}", "--db", "{db}", "--mask", "none"),
        2,
        "--mask says what --annotate blurs",
        files={"v.mkv": Clip("mkv")},
        db_after="none",
    ),
    # ---- other commands ----
    Case(
        "eval on a folder without annotations",
        ("eval", "{tmp}/photos"),
        2,
        "no annotations",
        files={"photos/a.jpg": Photo(0)},
    ),
    Case("eval on a missing folder", ("eval", "{tmp}/nope"), 2, "dataset folder not found"),
    Case("eval --region XX", ("eval", "{tmp}/nope", "--region", "XX"), 2, "--region: unknown region XX"),
    Case(
        "db search without --purpose",
        ("db", "search", "AB123CD", "--config", "{paris}", "--db", "{db}"),
        2,
        "--purpose",
    ),
    Case(
        "db search for an undeclared purpose",
        ("db", "search", "AB123CD", "--purpose", "stalking", "--config", "{paris}", "--db", "{db}"),
        2,
        "database not found",
    ),  # a query never creates a database (refused queries are audited: test_passage_store, test_security)
    Case(
        "db search for a plate with no letter or digit",
        ("db", "search", "%%", "--purpose", "parking_fps", "--config", "{paris}", "--db", "{db}"),
        2,
        "plate",
    ),
    Case(
        "db search in a text file",
        (
            "db",
            "search",
            "AB123CD",
            "--purpose",
            "parking_fps",
            "--config",
            "{paris}",
            "--db",
            "{tmp}/notes.sqlite",
        ),
        2,
        "file is not a database",
        files={"notes.sqlite": "my notes\n"},
    ),
    Case(
        "db mark-paid where no purpose is FPS",
        ("db", "mark-paid", "AB123CD", "--config", "{tmp}/c.yaml", "--db", "{db}"),
        3,
        "deletes reads on payment",
        files=_config(CAR_PARK),
    ),
    Case(
        "audit verify on a text file",
        ("audit", "verify", "--db", "{tmp}/notes.sqlite"),
        2,
        "file is not a database",
        files={"notes.sqlite": "my notes\n"},
    ),
    Case(
        "audit verify on a zero-byte file",
        ("audit", "verify", "--db", "{tmp}/empty.sqlite"),
        2,
        "has no audit log",
        files={"empty.sqlite": b""},
    ),
    Case("audit verify on a missing file", ("audit", "verify", "--db", "{db}"), 2, "database not found"),
    Case("policy check on a missing file", ("policy", "check", "{tmp}/missing.yaml"), 2, "config file not found"),
    Case(
        "policy check on binary garbage",
        ("policy", "check", "{tmp}/c.yaml"),
        2,
        "not valid YAML",
        files={"c.yaml": NOISE},
    ),
]

MAX_ERROR_LENGTH = 1000  # characters: an error to read, not a dump


@pytest.fixture(scope="module")
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def web_page():
    """An HTTP server that answers every GET with a small HTML page."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html><body>camera offline</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class Clips:
    """Clean 30-frame clips by container, built on first use (a few seconds for the three)."""

    def __init__(self, folder: Path, photos) -> None:
        self.folder, self.photos = folder, photos
        self.built: dict[str, bytes] = {}
        self.passages: list[dict] = []

    def __getitem__(self, container: str) -> bytes:
        from dataclasses import asdict

        from benchmarks.clips import build_clip

        if container not in self.built:
            path = self.folder / f"clip.{container}"
            passages = build_clip(self.photos[:3], path, (640, 360), 25, 0.4, "h264")
            self.passages = [asdict(p) for p in passages]
            self.built[container] = path.read_bytes()
        return self.built[container]


@pytest.fixture(scope="module")
def clips(tmp_path_factory, few_photos) -> Clips:
    return Clips(tmp_path_factory.mktemp("bad-input-clips"), few_photos)


def _clip_bytes(clip: Clip, clean: bytes) -> bytes:
    data = bytearray(clean[: int(len(clean) * clip.keep)])
    if clip.damage:
        middle = len(data) // 2
        data[middle : middle + clip.damage] = random.Random(6).randbytes(clip.damage)
    return bytes(data)


@dataclass
class Outcome:
    result: subprocess.CompletedProcess
    tmp: Path
    db: Path
    inputs: dict[Path, bytes]
    started: float
    finished: float


def _run_case(case: Case, tmp: Path, few_photos, clips: Clips | None, port: int, http_base: str) -> Outcome:
    inputs = _write_inputs(case, tmp, few_photos, clips, port)
    db = tmp / "reads.sqlite"
    values = {
        "{tmp}": str(tmp),
        "{db}": str(db),
        "{image}": str(few_photos[0][0]),
        "{paris}": str(REPO / "configs" / "paris-fps.yaml"),
        "{port}": str(port),
        "{http}": http_base,
    }
    args = []
    for arg in case.args:
        for key, value in values.items():
            arg = arg.replace(key, value)
        args.append(arg)
    if args[0] == "run" and "--db" not in args:
        args += ["--db", str(db)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "anpr", *args]
    if case.read_only and os.geteuid() == 0:
        command = ["setpriv", "--bounding-set", "-dac_override", *command]
    for name in case.read_only:
        (tmp / name).chmod(0o555 if (tmp / name).is_dir() else 0o444)
    started = time.time()
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=tmp, timeout=120, env=env)
    finally:
        for name in case.read_only:
            (tmp / name).chmod(0o755 if (tmp / name).is_dir() else 0o644)
    return Outcome(result, tmp, db, inputs, started, time.time())


def _write_inputs(case: Case, tmp: Path, few_photos, clips: Clips | None, port: int) -> dict[Path, bytes]:
    """The case's files, written under `tmp`; what each holds (folders left out)."""
    inputs: dict[Path, bytes] = {}
    for name, content in case.files.items():
        path = tmp / name
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Photo):
            data = few_photos[content.index][0].read_bytes()
        elif isinstance(content, Clip):
            data = _clip_bytes(content, clips[content.container])
        elif isinstance(content, BoundDatabase):
            data = _bound_database(path)
        elif isinstance(content, str):
            data = content.replace("{port}", str(port)).replace("{tmp}", str(tmp)).encode()
        else:
            data = content
        path.write_bytes(data)
        inputs[path] = data
    return inputs


def _bound_database(path: Path) -> bytes:
    from support.keys import TEST_KEYS

    from anpr.config.settings import load_settings
    from anpr.storage.audit import AuditLog
    from anpr.storage.binding import require_binding
    from anpr.storage.store import ReadStore

    deployment = load_settings(REPO / "configs" / "paris-fps.yaml").deployment
    assert deployment is not None
    store = ReadStore(str(path), TEST_KEYS)
    try:
        store.check()
        require_binding(store, AuditLog(store.engine, TEST_KEYS), deployment, "earlier-run", bind_if_new=True)
    finally:
        store.close()
    return path.read_bytes()


def _problems(case: Case, outcome: Outcome, passages: list[dict]) -> list[str]:
    """Every expectation of `case` that `outcome` does not meet (the traceback check is apart)."""
    return [
        *_output_problems(case, outcome),
        *_database_problems(case, outcome, passages),
        *_queue_problems(case, outcome),
    ]


def _output_problems(case: Case, outcome: Outcome) -> list[str]:
    """The exit status, the error or warning line, and the inputs left as they were."""
    result, problems = outcome.result, []
    stderr_lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in stderr_lines if line.startswith("anpr: error: ")]
    if result.returncode != case.status:
        problems.append(f"exit status {result.returncode}, expected {case.status}")
    if case.status:
        if len(errors) != 1 or stderr_lines[-1] != errors[0]:
            problems.append(f"stderr does not end with exactly one 'anpr: error:' line: {stderr_lines[-6:]}")
        elif case.says not in errors[0]:
            problems.append(f"the error line does not say {case.says!r}: {errors[0]!r}")
        elif len(errors[0]) > MAX_ERROR_LENGTH:
            problems.append(f"the error line is {len(errors[0])} characters long")
    else:
        if errors:
            problems.append(f"an error on a run that should go on: {errors}")
        warnings = [line for line in stderr_lines if line.startswith("anpr: warning: ")]
        if case.says and not any(case.says in line for line in warnings):
            problems.append(f"no 'anpr: warning:' line says {case.says!r}: {stderr_lines[-6:]}")
    if case.also and case.also not in result.stderr:
        problems.append(f"stderr does not say {case.also!r}")
    for path, data in outcome.inputs.items():
        if not path.is_file() or path.read_bytes() != data:
            problems.append(f"input {path.name} was changed or removed")
    return problems


def _database_problems(case: Case, outcome: Outcome, passages: list[dict]) -> list[str]:
    """What the database holds: nothing, audit entries only, or the right reads with the right deadlines."""
    db_after = case.db_after or ("reads" if case.status == 0 else "none")
    db = outcome.db
    if db_after == "none":
        return [f"a database was created: {db.name}"] if db.exists() else []
    if not db.exists():
        return ["no database was written"]
    connection = sqlite3.connect(db)
    try:
        tables = {row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")}
        reads = (
            connection.execute("select plate, frame, time, delete_after from reads").fetchall()
            if "reads" in tables
            else []
        )
        audit = connection.execute("select action from audit_log").fetchall() if "audit_log" in tables else []
    finally:
        connection.close()
    if db_after == "audit":
        if reads or not audit:
            return [f"expected only audit entries, got {len(reads)} reads and {len(audit)} audit entries"]
        return []
    problems = [] if reads else ["no read was stored"]
    return problems + _read_problems(case, outcome, passages, reads)


def _stored_keys(db: Path) -> list[str]:
    connection = sqlite3.connect(db)
    try:
        return [key for (key,) in connection.execute("select key from reads order by id")]
    finally:
        connection.close()


def _queued_reads(folder: Path) -> list[dict]:
    return [read for path in sorted(folder.glob("*.json")) for read in json.loads(path.read_bytes())["reads"]]


def _queue_problems(case: Case, outcome: Outcome) -> list[str]:
    """A webhook that could not deliver left every read it was given in its queue, privately."""
    if not case.queued:
        return []
    folder = outcome.tmp / case.queued
    if not folder.is_dir():
        return [f"no queue folder {case.queued}"]
    problems = []
    if stat.S_IMODE(folder.stat().st_mode) != 0o700 or any(
        stat.S_IMODE(p.stat().st_mode) != 0o600 for p in folder.iterdir()
    ):
        problems.append("the queue folder or its files are not private")
    queued, stored = sorted(r["key"] for r in _queued_reads(folder)), sorted(_stored_keys(outcome.db))
    if not queued or queued != stored:
        problems.append(f"{len(queued)} read(s) queued, {len(stored)} stored: not the same reads")
    return problems


def _read_problems(case: Case, outcome: Outcome, passages: list[dict], reads: list[tuple]) -> list[str]:
    """The stored reads against the clip's truth: plates, frame numbers and deletion deadlines."""
    problems = []
    for index in case.reads_of:
        plate = passages[index]["plate"]
        if not any(same_plate(p, plate) for p, *_ in reads):
            problems.append(
                f"no stored read of {plate} (photo/passage {index}); stored: {sorted({p for p, *_ in reads})}"
            )
    if case.true_frames:
        for passage in passages:
            wrong = sorted(
                {
                    frame
                    for p, frame, t, _ in reads
                    if same_plate(p, passage["plate"])
                    and not (passage["first_frame"] <= frame <= passage["last_frame"] and abs(t - frame / 25) < 1e-6)
                }
            )
            if wrong:
                problems.append(
                    f"reads of {passage['plate']} (frames {passage['first_frame']}-"
                    f"{passage['last_frame']}) stored with frame numbers {wrong}"
                )
    if case.keeps_days is not None:
        early = outcome.started + case.keeps_days * DAY - 1
        late = outcome.finished + case.keeps_days * DAY + 1
        if not all(early <= delete_after <= late for *_, delete_after in reads):
            problems.append(f"a read is not deleted after {case.keeps_days} day(s)")
    return problems


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case, request, tmp_path, few_photos, closed_port, web_page):
    clips = request.getfixturevalue("clips") if any(isinstance(c, Clip) for c in case.files.values()) else None
    outcome = _run_case(case, tmp_path, few_photos, clips, closed_port, web_page)
    output = outcome.result.stdout + outcome.result.stderr
    # The acceptance criterion, asserted first and on every case.
    assert "Traceback" not in output, f"{case.name}: TRACEBACK\n{outcome.result.stderr[-3000:]}"
    passages = clips.passages if clips else [{"plate": plate} for _, plate in few_photos]
    problems = _problems(case, outcome, passages)
    assert not problems, f"{case.name}: {'; '.join(problems)}\nstderr:\n{outcome.result.stderr[-2000:]}"


def test_the_case_table():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    assert all(case.status in (0, 2, 3) for case in CASES)
    assert all(case.db_after in ("", "none", "reads", "audit") for case in CASES)


def test_a_batch_queued_by_a_run_is_delivered_once_the_webhook_answers(tmp_path, few_photos):
    """The case above, then the endpoint comes up on that port and the next run delivers
    the queued batch first, then its own: every read of both runs reaches it, once."""
    case = next(c for c in CASES if c.queued)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    first = _run_case(case, tmp_path, few_photos, None, port, "")
    assert first.result.returncode == 0, first.result.stderr
    assert "read(s) wait in anpr-webhook-hook; the next run sends them" in first.result.stderr  # said at close
    queued = [read["key"] for read in _queued_reads(tmp_path / case.queued)]
    assert queued and queued == _stored_keys(first.db)
    with Receiver(port) as receiver:
        second = _run_case(case, tmp_path, few_photos, None, port, "")
    assert second.result.returncode == 0, second.result.stderr
    assert "anpr: warning:" not in second.result.stderr
    delivered = [read["key"] for _, reads in receiver.posts for read in reads]
    assert delivered == _stored_keys(second.db)  # the first run's reads, then the second's: the same database
    assert delivered[: len(queued)] == queued and len(delivered) > len(queued)
    assert not (tmp_path / case.queued).exists()


def test_a_camera_id_or_purpose_code_longer_than_the_database_holds_is_refused(tmp_path):
    import yaml

    from anpr.config.settings import load_settings
    from anpr.errors import ConfigError

    data = yaml.safe_load((REPO / "configs" / "mixed-camera.yaml").read_text())
    data["cameras"][0]["id"] = "c" * 129
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"cameras\.0\.id.*at most 128 characters"):
        load_settings(path)
    data = yaml.safe_load((REPO / "configs" / "mixed-camera.yaml").read_text())
    data["purposes"]["p" * 65] = data["purposes"].pop("parking_fps")
    data["cameras"][0]["purposes"] = ["p" * 65, "law_enforcement_request"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"purpose code 'p+…' is longer than 64 characters"):
        load_settings(path)

"""Start / stop a real RTSP server (GStreamer) from tests.

The server itself is ``rtsp_server.py`` next to this file; it needs PyGObject and the
GStreamer RTSP server, which live in the *system* python (``/usr/bin/python3``), not
in the venv, so it runs as a subprocess.  Install its Debian packages with
``scripts/system-deps.sh``.

    with RtspServer("clip.mp4") as srv:        # free port picked by the server
        cap = cv2.VideoCapture(srv.url, cv2.CAP_FFMPEG)
        ...
        srv.restart()                          # same port, e.g. to test reconnects

Stdlib only.
"""

from __future__ import annotations

import functools
import os
import re
import selectors
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

SYSTEM_PYTHON = os.environ.get("ANPR_TEST_SYSTEM_PYTHON", "/usr/bin/python3")
SERVER_SCRIPT = Path(__file__).resolve().with_name("rtsp_server.py")
HOST = "127.0.0.1"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
BIND_RETRY_S = 5.0
INSTALL_HINT = "install the system packages with: bash scripts/system-deps.sh"

_READY_RE = re.compile(r"^READY (rtsp://\S+?:(\d+)(/\S*))\s*$")
_EXIT_CANNOT_LISTEN = 4  # rtsp_server.py's exit status when bind() fails

_PROBE = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [e for e in ("filesrc", "qtdemux", "h264parse", "rtph264pay")
           if Gst.ElementFactory.find(e) is None]
if missing:
    raise SystemExit("missing GStreamer elements: " + ", ".join(missing))
print(Gst.version_string())
"""


def _child_env() -> dict[str, str]:
    """Environment for the system python: drop the venv's python settings."""
    env = dict(os.environ)
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(key, None)
    return env


@functools.cache
def rtsp_available() -> tuple[bool, str]:
    """Can the system python run the GStreamer RTSP server?

    Returns ``(True, "GStreamer 1.x.y")`` or ``(False, reason)``; the reason says how to
    fix it.  Meant for clear error messages, not for skipping tests.
    """
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False, f"{SYSTEM_PYTHON} not found; {INSTALL_HINT}"
    try:
        proc = subprocess.run(
            [SYSTEM_PYTHON, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=30,
            env=_child_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot run {SYSTEM_PYTHON}: {exc}; {INSTALL_HINT}"
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        return False, f"{SYSTEM_PYTHON} cannot use the GStreamer RTSP server ({err}); {INSTALL_HINT}"
    return True, proc.stdout.strip()


def _terminate(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass
    if proc.stdout is not None:
        proc.stdout.close()


class RtspServer:
    """A GStreamer RTSP server subprocess streaming one H.264 MP4 file.

    ``port=None`` lets the server pick a free port on first start; the port is then kept
    for :meth:`restart`.  ``loop=True`` restarts the file at end of stream.  Each
    client connection plays the file from the start, at real-time rate.
    """

    def __init__(
        self,
        video_path: str | os.PathLike,
        port: int | None = None,
        loop: bool = False,
        path: str = "/stream",
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        self.video_path = Path(video_path)
        self.port = port
        self.loop = loop
        self.path = path if path.startswith("/") else "/" + path
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self._stderr = None
        self._finalizer = None

    # -- properties -----------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("RtspServer has no port yet: call start() first")
        return f"rtsp://{HOST}:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stderr_text(self) -> str:
        """Everything the server wrote on stderr so far (GStreamer warnings, errors)."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> RtspServer:
        if self.running:
            raise RuntimeError(f"RtspServer already running at {self.url}")
        if not self.video_path.is_file():
            raise RuntimeError(f"RtspServer: video file not found: {self.video_path}")
        started = time.monotonic()
        deadline = started + self.start_timeout
        while True:
            rc, detail = self._start_once(deadline)
            if rc is None:
                return self
            # The port may still be held briefly after a stop(): retry bind failures
            # for a few seconds.
            if (
                rc == _EXIT_CANNOT_LISTEN
                and self.port
                and time.monotonic() - started < min(BIND_RETRY_S, self.start_timeout / 2)
            ):
                time.sleep(0.2)
                continue
            break
        ok, why = rtsp_available()
        hint = "" if ok else f"\n{why}"
        raise RuntimeError(f"RTSP server failed to start ({detail}){hint}\n--- server stderr ---\n{self.stderr_text()}")

    def _start_once(self, deadline: float) -> tuple[int | None, str]:
        self._close_stderr()
        # Kept open while the server runs (its stderr); closed by _close_stderr.
        self._stderr = tempfile.TemporaryFile(prefix="rtsp_server_stderr_")  # noqa: SIM115
        cmd = [
            SYSTEM_PYTHON,
            "-u",
            str(SERVER_SCRIPT),
            str(self.video_path),
            "--port",
            str(self.port or 0),
            "--path",
            self.path,
        ]
        if self.loop:
            cmd.append("--loop")
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=_child_env(),
            )
        except OSError as exc:
            return -1, f"cannot run {SYSTEM_PYTHON}: {exc}"
        self.process = proc
        self._finalizer = weakref.finalize(self, _terminate, proc)

        line = b""
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stop()
                    return -1, f"no READY line within {self.start_timeout:.0f} s, command: {' '.join(cmd)}"
                if not sel.select(timeout=min(remaining, 0.5)):
                    if proc.poll() is not None:
                        break
                    continue
                chunk = os.read(proc.stdout.fileno(), 1)
                if not chunk:  # EOF: the server died
                    break
                line += chunk
        finally:
            sel.close()

        m = _READY_RE.match(line.decode("utf-8", "replace").strip())
        if m is None:
            try:
                rc = proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                rc = -1
            self.stop()
            return rc, f"exit status {rc}, stdout {line!r}, command: {' '.join(cmd)}"
        self.port = int(m.group(2))
        return None, ""

    def stop(self) -> None:
        """SIGTERM the server, kill it if it does not exit in time, and reap it."""
        proc, self.process = self.process, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _terminate(proc)

    def restart(self) -> RtspServer:
        """Stop, then start again on the same port (clients see a dropped server)."""
        self.stop()
        return self.start()

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def close(self) -> None:
        self.stop()
        self._close_stderr()

    # -- context manager --------------------------------------------------------------
    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = self.url if self.port else "no port"
        return f"<RtspServer {where} {self.video_path.name} loop={self.loop} {state}>"

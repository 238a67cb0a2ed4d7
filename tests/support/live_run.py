"""`anpr run` as a background process whose --jsonl output a test can watch line by line."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


class LiveRun:
    def __init__(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        """`anpr run ARGS`, in `cwd` (default: a folder of its own, where the files a run
        makes by default, key file, checkpoints and spool, go instead of the checkout), with
        `env` added to this process's environment."""
        exe = shutil.which("anpr") or str(Path(sys.executable).parent / "anpr")
        self.cwd = cwd or Path(tempfile.mkdtemp(prefix="anpr-live-run-"))
        self.process = subprocess.Popen(
            [exe, "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.cwd,
            env={**os.environ, **(env or {})},
        )
        self.objects: list[dict] = []  # every JSON line printed so far
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.process.stdout, self._lines), daemon=True).start()
        threading.Thread(target=self._collect_stderr, daemon=True).start()

    @staticmethod
    def _pump(stream, lines: queue.Queue) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    def _collect_stderr(self) -> None:
        for line in self.process.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def wait_for(self, condition, timeout: float, what: str) -> dict:
        """Wait for the first new JSON line satisfying `condition`; fails the test after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"anpr exited ({self.process.wait()}) before {what}: {self.stderr[-2000:]}")
            obj = json.loads(line)
            self.objects.append(obj)
            if condition(obj):
                return obj
        raise AssertionError(f"no {what} within {timeout:.0f} s: {self.stderr[-2000:]}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> float:
        """Signal the run and collect the rest of its output; the seconds it took to exit."""
        signalled = time.monotonic()
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        took = time.monotonic() - signalled
        while True:
            line = self._lines.get(timeout=10)
            if line is None:
                break
            self.objects.append(json.loads(line))
        return took

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def __enter__(self) -> LiveRun:
        return self

    def __exit__(self, *exc_info) -> None:
        self.kill()  # a test that failed before stopping the run leaves no process behind

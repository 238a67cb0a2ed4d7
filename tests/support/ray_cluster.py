"""A real local Ray cluster for tests: a head and more nodes, each a `ray start --block`
in a session (process group) of its own, as separate machines would be.

    with RayNode.head(resources={"node_a": 1}) as head, RayNode.joining(head.address, {"node_b": 1}) as b:
        ...
        b.kill()   # the node dies at once, as a machine that loses power: every process of it, workers too

Ray's workers run in process groups of their own, children of the node's raylet, so
`kill` takes the node's whole process tree, not only its group. Nothing here uses
`ray stop`, which stops every Ray process of the machine (other runs' too).

The cluster has token authentication (Ray's default for a new cluster) with a token of its
own, `AUTH`, in the environment of its nodes and of the driver (`LiveRun(..., env=AUTH)`):
Ray reads it before ~/.ray/auth_token, so a token a local `ray.init()` once left in the
home folder cannot split the head from its nodes (issue 26, case 17).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
READY = "will now block forever"
START_TIMEOUT_S = 120.0
OBJECT_STORE_BYTES = 80 * 2**20  # Ray's smallest is 75 MiB: the tests pass no large objects
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children() -> dict[int, list[int]]:
    """Every process's children, by parent pid."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def _tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    children, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


class RayNode:
    """One Ray node (`ray start --block`) in a session of its own."""

    def __init__(
        self, args: list[str], resources: dict[str, float], cpus: int, temp_dir: Path | None = None, port: int = 0
    ) -> None:
        self.temp_dir, self.port = temp_dir, port  # the head's
        command = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--block",
            f"--num-cpus={cpus}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--resources={json.dumps(resources)}",
            f"--dashboard-agent-listen-port={_free_port()}",
            "--disable-usage-stats",
            *args,
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", **AUTH}
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=temp_dir or REPO,
            start_new_session=True,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._wait_ready()

    @classmethod
    def head(cls, resources: dict[str, float], cpus: int = 1) -> RayNode:
        # Short: the node's sockets live under it, and a socket path is at most 107 bytes.
        temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        port = _free_port()
        args = [
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=false",
            f"--dashboard-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}",
        ]
        return cls(args, resources, cpus, temp_dir, port)

    @classmethod
    def joining(cls, address: str, resources: dict[str, float], cpus: int = 1) -> RayNode:
        return cls([f"--address={address}", "--node-ip-address=127.0.0.1"], resources, cpus)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"ray start exited ({self.process.wait()}): {''.join(self.output)[-3000:]}")
            if READY in line:
                return
        self.kill()
        raise RuntimeError(f"ray start did not start within {START_TIMEOUT_S:.0f} s: {''.join(self.output)[-3000:]}")

    def kill(self) -> None:
        """SIGKILL to every process of the node at once, workers included."""
        if self.process.poll() is not None:
            return
        for pid in _tree(self.process.pid):
            with contextlib.suppress(ProcessLookupError):  # gone already
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM to the node's process group (Ray stops its processes), then whatever is left killed."""
        if self.process.poll() is not None:
            return
        tree = _tree(self.process.pid)
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):  # gone already
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> RayNode:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

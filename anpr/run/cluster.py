"""One deployment across many machines: `anpr run --config CITY.yaml --cluster ADDRESS`.

A city's cameras outgrow one machine, but the deployment stays one: one policy, one
database, one audit log. The cameras are spread over the nodes of a Ray cluster
(https://docs.ray.io), which runs Python work across machines and says when one is lost.
Ray is an optional extra (`pip install 'anpr[cluster]'`), imported only here and only
when `--cluster` is given; a run on one machine needs nothing more.

The driver (`ClusterRun`, in the `anpr run` process; run it on the Ray head):

1. validates the config and the policy as a run on one machine does (the CLI announces
   each purpose's decision, and a denied deployment is refused before anything starts),
   then what a cluster needs (`check_cluster_run`): the database on a PostgreSQL server
   that every node writes to (a SQLite file is one machine's), every camera a live
   stream (see "Node loss"), and only sinks of type `database`;
2. opens the database as one machine does (`assemble.open_database`: the binding, the
   audit log, its own spool), writes `run.start` and `run.end` to the audit log, and
   applies retention to the database every minute, for every node (the nodes apply it
   to their spools only: one purge, not one per node);
3. spreads the cameras over the alive nodes that have a CPU to give, in proportion to
   their CPUs (`spread`), and starts one `NodeRun` actor per node, pinned to it (Ray's
   NodeAffinitySchedulingStrategy, not soft);
4. asks every node once a second for its cameras' status, which the progress line and
   `--log-json` show per node and per camera, for its log messages, and, for `--jsonl` and
   `--passages`, for the reads and passages its gates kept;
5. on Ctrl-C or SIGTERM, asks every node to drain its frames and stop, then writes the
   run's end.

A node (`NodeRun`) runs the one-machine loop for its cameras: their lanes (reader,
pipeline, policy gate: `assemble.build_lanes`) in `pipeline.run_lanes`, so its cameras'
frames go through the detector together and their crops through the recogniser in one
call per round. Every read is gated on the node that made it, and only what the gate
keeps goes further: to the deployment's database with its key, through the node's own
outage spool (`<store.spool_dir>-<host>-<n>`, the first such folder no other process
holds), and to the driver for `--jsonl`. Of a denied purpose only its hourly count
leaves the node. A node gets the deployment's plate-hash key and not the audit key: it
stores reads and cannot sign the audit log. It runs the models on the node's GPU when
Ray lists one there (`detector.device: cuda` on that node), on its CPU otherwise.

Node loss. A node whose actor died (Ray's ActorDiedError) or that Ray no longer lists as
alive is lost, and so is one that stopped on its own (below): its cameras start again on
the surviving nodes, each joining the running loop of the node with the fewest cameras
per CPU (`run_lanes`' `joining`), or a new actor on an alive node that has none. The
driver logs, and writes as `node.lost` and `camera.restarted` events, how long each camera
was down: from the loss noticed, and from the node's last answer. Ray notices a killed
node's actor at once (it stops answering) but declares it dead only after its health
checks fail (about 10 s by default); until then it is `unresponsive` and keeps its
cameras, as moving them while it may still be reading would read them twice. A node
that hears nothing from the driver for ORPHAN_SECONDS (cut off from the head) stops
reading by itself, which bounds how long a node cut off but still reading may overlap
the node that took its cameras.

What was in flight on a lost node: a batch whose transaction committed is stored, one
that did not was never acknowledged (neither reported nor stored), and one in the
node's spool (the database was down) waits there for the next cluster run on that
machine. Nothing is stored twice: a batch sent again is known by its keys (anpr/storage/store.py).
A read's key is random (`records.new_key`), which is why a cluster reads live streams
only: a restarted stream resumes live (what passed while it was down is missed, nothing
is read twice), where a file started again on another node would be read from its start
again and its reads stored a second time under new keys.

The database down behaves as on one machine, on every node: batches wait in the node's
spool and are sent, once, when it is back.

`--cluster auto` joins the local Ray instance if one runs, and leaves it running. If none
does, it starts one of the run's own (`OwnInstance`), stopped at the run's end and leaving
nothing of it behind: its files in a temporary folder of its own, removed then (not Ray's
shared /tmp/ray), and the token Ray's authentication asks for held in the environment of
the run and of Ray's processes, never written to ~/.ray/auth_token (where Ray would put
it, and where every later cluster of this user would then look for it).

Limits: the driver and the Ray head are single points of failure (when the driver ends,
Ray ends its actors too; a new run picks up the spools); cameras are not moved back when
a lost node returns, nor spread again when a node joins (a node that joins takes
cameras only while some wait for a node).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TextIO

from sqlalchemy.engine import make_url

from anpr.config.settings import RunSettings, Settings
from anpr.errors import AnprError, ClusterError, first_line
from anpr.policy.engine import Policy, PurposeDecision
from anpr.policy.gate import PURGE_INTERVAL_SECONDS, GateTally, PolicedSink, PolicyGate
from anpr.reading.source import STREAM_SCHEMES, Reconnect, decode_threads, open_source
from anpr.records import Passage, PolicedRead
from anpr.registry import DETECTORS
from anpr.run.assemble import CameraSource, Models, build_lanes, load_models, open_database, record_run_end
from anpr.run.outputs import PassageOutput, ProgressLine, StatusLog, lane_status
from anpr.run.pipeline import DRAIN_SECONDS, Lane, run_lanes
from anpr.storage.keys import Keys
from anpr.storage.spool import SpooledStore, SpoolInUse, node_spool_dir
from anpr.storage.store import DatabaseUnavailable, ReadStore, database_url

log = logging.getLogger("anpr")

RAY_MISSING = "--cluster needs Ray, which is not installed: pip install 'anpr[cluster]'"
RAY_DEFAULT_PORT = 6379  # where `ray start --head` listens unless told otherwise
HEAD_TIMEOUT_SECONDS = 5.0  # to open a connection to the head's port
ACTOR_CPUS = 1  # what a node's actor asks Ray for: a node with less gets no cameras
POLL_SECONDS = 1.0  # the driver asks every node for its status this often
SNAPSHOT_SECONDS = 0.5  # a node's loop writes down its status at most this often
START_TIMEOUT_SECONDS = 300.0  # a node's actor starts, loads the models and opens its cameras within this
FINISH_TIMEOUT_SECONDS = DRAIN_SECONDS + 60.0  # a node drains its frames and sends its spool within this
# A node that hears nothing from the driver for this long stops reading: the driver is gone,
# or the node is cut off from it and its cameras are about to run elsewhere. Ten polls.
ORPHAN_SECONDS = 10.0
MAX_NODE_SPOOLS = 64  # spool folders tried per machine: more actors than that on one machine is a mistake
MESSAGES_KEPT = 1000  # a node's log messages waiting for the driver; older ones go first
# Ray's token authentication: the token (Ray reads it before ~/.ray/auth_token), and the
# mode, which Ray sets in this process as it starts a local instance.
RAY_TOKEN_VARIABLE, RAY_AUTH_MODE_VARIABLE = "RAY_AUTH_TOKEN", "RAY_AUTH_MODE"


# --- before anything starts ---------------------------------------------------------------


def require_ray() -> ModuleType:
    """The `ray` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(RAY_MISSING) from None
    return ray


def check_cluster_run(settings: Settings, cameras: Sequence[CameraSource]) -> None:
    """Refuse what a cluster cannot run (ClusterError), before anything is opened."""
    backend = make_url(database_url(settings.store.url)).get_backend_name()
    if backend != "postgresql":
        raise ClusterError(
            f"--cluster needs the deployment's database on a PostgreSQL server that every node can reach "
            f"(--db or store.url postgresql+psycopg://USER@HOST/DB), not {backend}: every node writes to it"
        )
    files = [c.camera.id for c in cameras if not c.location.startswith(STREAM_SCHEMES)]
    if files:
        raise ClusterError(
            f"--cluster reads live streams only, and camera(s) {', '.join(files)} read a file or folder: a file "
            f"started again on another node after a node is lost would be read twice (run files on one machine)"
        )
    assert settings.deployment is not None
    other = sorted(
        f"{name} ({spec.type})" for name, spec in settings.deployment.sinks.items() if spec.type != "database"
    )
    if other:
        raise ClusterError(
            f"--cluster writes to the deployment's database only, and sink(s) {', '.join(other)} are not of type "
            f"database: their files and queues are one machine's"
        )


def head_reachable(address: str) -> None:
    """A head that nobody answers at `address` is an error now: Ray itself waits minutes for it."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        host, port = address, str(RAY_DEFAULT_PORT)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=HEAD_TIMEOUT_SECONDS).close()
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray head at {host}:{port} ({exc.strerror or exc}): start it with "
            f"`ray start --head --port={port}`, or give its address as HOST:PORT"
        ) from None


@dataclass
class OwnInstance:
    """The local Ray instance that `--cluster auto` starts when none runs: the run's alone, and
    gone with it. `ray.shutdown()` stops it; `remove` then puts back what it changed."""

    folder: str  # Ray's temporary folder for it (sessions, logs, sockets), instead of /tmp/ray
    environment: dict[str, str | None]  # the variables it set in this process, with their values before

    @classmethod
    def start(cls, ray: ModuleType, options: Mapping[str, Any]) -> OwnInstance:
        # A token of its own, which Ray's processes inherit: without one, Ray writes the one it
        # makes to ~/.ray/auth_token, and every later cluster of this user then expects it.
        variables = (RAY_TOKEN_VARIABLE, RAY_AUTH_MODE_VARIABLE)
        instance = cls(tempfile.mkdtemp(prefix="anpr-ray-"), {name: os.environ.get(name) for name in variables})
        os.environ[RAY_TOKEN_VARIABLE] = secrets.token_hex(32)
        try:
            ray.init(address="local", include_dashboard=False, _temp_dir=instance.folder, **options)
        except BaseException:
            with contextlib.suppress(Exception):
                ray.shutdown()  # whatever it had started
            instance.remove()
            raise
        log.info("no Ray instance ran on this machine: started one for this run, stopped at its end")
        return instance

    def remove(self) -> None:
        """The environment as it was, and the folder removed (after `ray.shutdown()`)."""
        for name, value in self.environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(self.folder, ignore_errors=True)


# --- where cameras go ---------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """A Ray node that can run cameras."""

    id: str  # Ray's node id
    address: str
    cpus: float
    gpus: float
    resources: tuple[str, ...] = ()  # its custom resources: how an operator names a node's role

    @property
    def label(self) -> str:
        """How the node is shown: its address and the start of its id (two nodes may share a machine)."""
        return f"{self.address}/{self.id[:8]}"


def alive_nodes(ray: ModuleType) -> list[Node]:
    """The cluster's alive nodes with a CPU to give an actor, in a stable order."""
    standard = {"CPU", "GPU", "memory", "object_store_memory"}
    nodes = []
    for entry in ray.nodes():
        resources = entry.get("Resources", {})
        if entry.get("Alive") and resources.get("CPU", 0) >= ACTOR_CPUS:
            custom = tuple(sorted(k for k in resources if k not in standard and not k.startswith(("node:", "accel"))))
            nodes.append(
                Node(entry["NodeID"], entry["NodeManagerAddress"], resources["CPU"], resources.get("GPU", 0), custom)
            )
    return sorted(nodes, key=lambda n: n.id)


def spread(cameras: Sequence[str], nodes: Sequence[Node], load: Mapping[str, int]) -> dict[str, list[str]]:
    """Each camera to the node with the fewest cameras per CPU once it has it (`load`:
    the cameras each node already runs, by node id); ties go to the first node."""
    counts = {node.id: load.get(node.id, 0) for node in nodes}
    plan: dict[str, list[str]] = {}
    for camera in cameras:
        best = min(nodes, key=lambda n: (counts[n.id] + 1) / n.cpus)
        counts[best.id] += 1
        plan.setdefault(best.id, []).append(camera)
    return plan


def node_settings(settings: Settings, gpu: bool) -> Settings:
    """The settings a node runs with: on its GPU when it has one and the detector backend
    runs there, on its CPU otherwise."""
    backend = settings.detector.backend
    on_gpu = gpu and (backend == "auto" or "cuda" in DETECTORS.get(backend).devices)
    detector = settings.detector.model_copy(update={"device": "cuda" if on_gpu else "cpu"})
    return settings.model_copy(update={"detector": detector})


# --- a node ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodePlan:
    """What the driver gives a node's actor: the validated settings and policy (hotlists
    included, so nodes need no copy of the config's files), the plate-hash key, and what
    to send back."""

    node: str  # the node's label
    settings: Settings
    policy: Policy
    keys: Keys  # the plate-hash key only (Keys.plates_only)
    spool_base: str  # an absolute store.spool_dir: the node's spool is a folder beside it
    reads: bool  # send the reads the gates kept to the driver (--jsonl)
    passages: bool  # and the passages (--passages)


class _Messages(logging.Handler):
    """The node's log messages, kept for the driver to show."""

    def __init__(self, kept: deque[tuple[int, str]]) -> None:
        super().__init__(logging.INFO)
        self.kept = kept

    def emit(self, record: logging.LogRecord) -> None:
        self.kept.append((record.levelno, record.getMessage()))


class _Kept:
    """What the node's gates kept, as dictionaries, for the driver's --jsonl and --passages."""

    def __init__(self) -> None:
        self.reads: deque[dict[str, Any]] = deque()
        self.passages: deque[dict[str, Any]] = deque()

    def write(self, reads: Sequence[PolicedRead]) -> None:
        self.reads.extend(read.to_dict(exact=True) for read in reads)

    def write_passages(self, passages: Sequence[Passage]) -> None:
        self.passages.extend(passage.to_dict(exact=True) for passage in passages)


def _drain(kept: deque[Any]) -> list[Any]:
    taken = []
    while kept:
        taken.append(kept.popleft())
    return taken


def open_node_spool(store: ReadStore, settings: RunSettings, base: str) -> SpooledStore:
    """The node's outage spool: `<base>-<host>-<n>`, the first such folder no other process
    holds (a machine may run several nodes). Retention of the database is the driver's."""
    host = socket.gethostname()
    for n in range(MAX_NODE_SPOOLS):
        folder = node_spool_dir(base, host, n)
        try:
            return SpooledStore(store, folder, settings.store.spool_max_mb * 2**20, purge_database=False)
        except SpoolInUse:
            continue
    raise ClusterError(
        f"every spool folder {node_spool_dir(base, host, 0)} to -{MAX_NODE_SPOOLS - 1} is in use on {host}"
    )


class NodeRun:
    """One node's cameras in one loop (a Ray actor, made by `ClusterRun`). Its methods
    are called from the driver, in threads of their own; the loop runs in another."""

    def __init__(self, plan: NodePlan) -> None:
        os.umask(0o077)  # the spool's files are for the owner only, as on one machine
        self.plan = plan
        self._lock = threading.Lock()
        self._messages: deque[tuple[int, str]] = deque(maxlen=MESSAGES_KEPT)
        logger = logging.getLogger("anpr")
        logger.addHandler(_Messages(self._messages))
        logger.setLevel(logging.INFO)
        logger.propagate = False
        self._kept = _Kept()
        self._store: ReadStore | None = None
        self._spool: SpooledStore | None = None
        self._models: Models | None = None
        self._joining: list[Lane] = []  # lanes for the loop to take in
        self._lanes: list[Lane] = []  # every lane this node ran
        self._gates: list[PolicyGate] = []
        self._changes_seen: dict[str, int] = {}
        self._changes: list[tuple[str, float, str, str | None]] = []  # (camera, time, state, why) not yet sent
        self._snapshot: dict[str, Any] = {"cameras": {}, "tally": GateTally(), "database": {}}
        self._next_snapshot = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._orphaned = False
        self._heard: float | None = None  # when the driver last asked for the status (None: not yet)

    def add_cameras(self, cameras: list[CameraSource]) -> dict[str, Any]:
        """Open the node (database, spool, models) on the first call, then these cameras'
        sources, and run them in the node's loop from its next round."""
        with self._lock:
            if self._stop.is_set():
                raise ClusterError(f"node {self.plan.node} is stopping: it takes no more cameras")
            self._open()
        assert self._spool is not None and self._models is not None
        settings, policy = self.plan.settings, self.plan.policy
        threads = decode_threads(len(self._lanes) + len(cameras))
        sources = []
        try:
            for camera in cameras:
                sources.append(open_source(camera.location, Reconnect.of(settings.stream), True, threads))
        except BaseException:
            for source in sources:
                source.close()
            raise
        outputs: list[PolicedSink] = [self._kept] if self.plan.reads else []
        passages = [self._kept] if self.plan.passages else []
        lanes = build_lanes(settings, policy, cameras, sources, self._models, self._spool, outputs, passages)
        with self._lock:
            self._joining += lanes.lanes
            self._lanes += lanes.lanes
            self._gates += lanes.gates
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="anpr-node-loop", daemon=True)
                self._thread.start()
        return {"host": socket.gethostname(), "spool": str(self._spool.directory), "device": self._device}

    @property
    def _device(self) -> str:
        return self.plan.settings.detector.device

    def _open(self) -> None:
        if self._store is not None:
            return
        settings = self.plan.settings
        store = ReadStore(settings.store.url, self.plan.keys, settings.store.timeout_seconds)
        try:
            try:
                store.check()
            except DatabaseUnavailable as exc:  # down for now (the driver reached it): the spool takes the reads
                log.warning("%s; keeping allowed reads in the spool until it returns", exc)
            spool = open_node_spool(store, settings, self.plan.spool_base)
        except BaseException:
            store.close()
            raise
        try:
            spool.send_left_over()
            self._models = load_models(settings)
        except BaseException:
            spool.close()
            store.close()
            raise
        self._store, self._spool = store, spool

    def _loop(self) -> None:
        try:
            run_lanes([], self._stop, progress=self._progress, joining=self._take_joining)
        except BaseException as exc:  # shown to the driver by the next status()
            self._failure = exc

    def _take_joining(self) -> list[Lane]:
        with self._lock:
            joining, self._joining = self._joining, []
        return joining

    def _progress(self, lanes: Sequence[Lane]) -> None:
        """In the loop's thread, which alone touches the lanes and gates while it runs."""
        now = time.monotonic()
        # Counted from the first status call: the driver asks none before every node has started.
        if self._heard is not None and now - self._heard > ORPHAN_SECONDS and not self._stop.is_set():
            log.warning(
                "heard nothing from the driver for %.0f s: stopping (its cameras are the driver's to start elsewhere)",
                now - self._heard,
            )
            self._orphaned = True
            self._stop.set()
        if now >= self._next_snapshot:
            self._next_snapshot = now + SNAPSHOT_SECONDS
            self._note(lanes)

    def _note(self, lanes: Sequence[Lane]) -> None:
        changes = []
        for lane in lanes:
            history = lane.reader.status.changes
            seen = self._changes_seen.get(lane.name, 0)
            changes += [(lane.name, when, state.value, why) for when, state, why in history[seen:]]
            self._changes_seen[lane.name] = len(history)
        snapshot = {
            "cameras": lane_status(lanes),
            "tally": GateTally.combined([gate.tally for gate in self._gates]),
            "database": self._spool.as_json() if self._spool else {},
        }
        with self._lock:
            self._snapshot = snapshot
            self._changes += changes

    def status(self) -> dict[str, Any]:
        """The node's cameras and spool as last noted, and what happened since the last call:
        camera state changes, log messages, kept reads and passages (when asked for)."""
        self._heard = time.monotonic()
        if self._failure is not None:
            raise self._failure
        return self._report()

    def _report(self) -> dict[str, Any]:
        with self._lock:
            snapshot, changes, self._changes = dict(self._snapshot), self._changes, []
        return {
            **snapshot,
            "changes": changes,
            "messages": _drain(self._messages),
            "reads": _drain(self._kept.reads),
            "passages": _drain(self._kept.passages),
            "stopped": self._orphaned,
        }

    def finish(self) -> dict[str, Any]:
        """Stop: the frames already decoded go through (for at most DRAIN_SECONDS), the
        spool is sent if the database answers; the node's last status."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(DRAIN_SECONDS + 10)
            if self._thread.is_alive():  # the spool is the loop's as long as it runs
                raise ClusterError(f"node {self.plan.node} did not drain its frames within {DRAIN_SECONDS:.0f} s")
        if self._spool is not None:
            self._spool.flush()
            self._note(self._lanes)  # the loop is over: every lane's last figures, the spool's last state
        report = self._report()
        if self._failure is not None:
            report["failure"] = first_line(self._failure)
        if self._spool is not None:
            self._spool.close()
        if self._store is not None:
            self._store.close()
        return report


# --- the driver -----------------------------------------------------------------------------


@dataclass
class NodeActor:
    """A node's actor as the driver follows it."""

    node: Node
    handle: Any  # Ray's actor handle
    cameras: list[str] = field(default_factory=list)  # the cameras it runs (and, once lost, ran)
    state: str = "starting"  # starting | running | unresponsive | lost | refused (could not take cameras) | finished
    last_seen: float = field(default_factory=time.time)  # Unix time of its last answer
    poll: Any = None  # its status call in flight
    status: dict[str, Any] = field(default_factory=dict)  # its last status
    info: dict[str, Any] = field(default_factory=dict)  # host, spool folder, device

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running", "unresponsive")


@dataclass
class Outage:
    """Cameras of a lost node, from the loss noticed to their running again elsewhere."""

    node: str  # the lost node's label
    noticed: float  # Unix time the loss was noticed
    last_seen: float  # Unix time of the node's last answer


@dataclass
class Move:
    """Cameras given to a node's actor, not yet taken (its add_cameras call in flight)."""

    actor: NodeActor
    cameras: list[str]
    call: Any


@dataclass
class ClusterReport:
    """How a cluster run ended, for the summary."""

    tally: GateTally
    cameras: dict[str, dict[str, Any]]  # per camera: its figures summed over the nodes that ran it
    nodes: dict[str, dict[str, Any]]  # per node: state, cameras, spool
    restarts: list[dict[str, Any]]  # per camera started again: from, to, seconds
    store_url: str
    spool: SpooledStore  # the driver's


class ClusterRun:
    """A deployment's cameras spread over a Ray cluster's nodes (see the module docstring).
    Use as a context manager: it ends the nodes' actors and closes the database on every exit."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        decisions: Mapping[str, Sequence[PurposeDecision]],
        cameras: Sequence[CameraSource],
        address: str,
        *,
        reads: PolicedSink | None = None,
        passages: PassageOutput | None = None,
        status_log: StatusLog | None = None,
        config: os.PathLike[str] | None = None,
        demo: bool = False,
    ) -> None:
        self.ray = require_ray()
        check_cluster_run(settings, cameras)
        self.settings, self.policy, self.decisions, self.address = settings, policy, decisions, address
        self.cameras = {c.camera.id: c for c in cameras}
        self.reads, self.passages, self.status_log = reads, passages, status_log
        self.config, self.demo = config, demo
        self.actors: list[NodeActor] = []
        self.waiting: dict[str, Outage | None] = {}  # cameras with no node (None: not started yet)
        self.moves: list[Move] = []
        self.restarting: dict[str, tuple[Outage, NodeActor]] = {}
        # A node may report a moved camera connected before the driver has settled its move
        # (the status call and the move's answer arrive in one poll): kept until it is.
        self.connected_early: dict[tuple[int, str], float] = {}
        self.restarts: list[dict[str, Any]] = []
        self.refused: set[str] = set()  # nodes that could not take cameras: not tried again
        self.connected = False
        self.own: OwnInstance | None = None  # the local instance this run started (`--cluster auto`)
        self._stdout: TextIO | None = None  # the real stdout, while Ray's messages go to stderr
        self.database = open_database(settings, policy)
        try:
            self._connect()
            self._start()
        except BaseException:
            self.close()
            raise

    # --- starting ---------------------------------------------------------------------------

    def _connect(self) -> None:
        ray = self.ray
        # The driver prints the cluster's error messages (a node declared dead) on sys.stdout,
        # whatever `log_to_driver` says: on stderr they keep --jsonl's stdout JSON (the
        # outputs hold the real stdout already).
        self._stdout, sys.stdout = sys.stdout, sys.stderr
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        # Ray's core installs signal handlers of its own, which end the process at once: the
        # run's own (drain on the first signal, abort on the second) are put back.
        handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.address != "auto":
                head_reachable(self.address)
                ray.init(address=self.address, **options)
            else:
                try:
                    ray.init(address="auto", **options)
                except ConnectionError:  # no local instance running: start one of the run's own
                    self.own = OwnInstance.start(ray, options)
        except Exception as exc:  # whatever Ray raises for an address it cannot join
            raise ClusterError(f"cannot join the Ray cluster at {self.address}: {first_line(exc)}") from None
        finally:
            for number, handler in handlers.items():
                if handler is not None:  # None: not set from Python, nothing to put back
                    signal.signal(number, handler)
        self.connected = True

    def _start(self) -> None:
        """Every camera placed, every node's actor started and its cameras open, or an error."""
        self.waiting = dict.fromkeys(self.cameras)
        if not alive_nodes(self.ray):
            raise ClusterError(f"the Ray cluster at {self.address} has no alive node with {ACTOR_CPUS} CPU to give")
        self._place()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while self.moves:
            if time.monotonic() > deadline:
                raise ClusterError(f"the nodes did not start their cameras within {START_TIMEOUT_SECONDS:.0f} s")
            self._settle_moves(timeout=1.0, starting=True)

    def _actor(self, node: Node) -> NodeActor:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        for actor in self.actors:
            if actor.node.id == node.id and actor.active:
                return actor
        settings = node_settings(self.settings, gpu=node.gpus >= 1)
        spool = os.path.abspath(os.path.expanduser(self.settings.store.spool_dir))
        plan = NodePlan(
            node.label,
            settings,
            self.policy,
            self.database.store.keys.plates_only(),
            spool,
            reads=self.reads is not None,
            passages=self.passages is not None,
        )
        remote = self.ray.remote(NodeRun).options(
            num_cpus=ACTOR_CPUS,
            num_gpus=1 if settings.detector.device == "cuda" else 0,
            max_restarts=0,
            max_concurrency=4,  # status calls answer while cameras are being opened
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.id, soft=False),
        )
        actor = NodeActor(node, remote.remote(plan))
        self.actors.append(actor)
        return actor

    def _place(self) -> None:
        """Cameras waiting for a node given to the alive ones (those that refused none)."""
        moving = {camera for move in self.moves for camera in move.cameras}
        cameras = [c for c in self.waiting if c not in moving]
        if not cameras:
            return
        nodes = [n for n in alive_nodes(self.ray) if n.id not in self.refused and not self._lost_node(n.id)]
        if not nodes:
            return  # they wait for a node to join
        load = {a.node.id: len(a.cameras) for a in self.actors if a.active}
        for node_id, chosen in spread(cameras, nodes, load).items():
            actor = self._actor(next(n for n in nodes if n.id == node_id))
            call = actor.handle.add_cameras.remote([self.cameras[c] for c in chosen])
            self.moves.append(Move(actor, chosen, call))

    def _lost_node(self, node_id: str) -> bool:
        """A node whose actor was lost keeps no cameras for this run (Ray may not have noticed it is gone)."""
        return any(a.node.id == node_id and a.state == "lost" for a in self.actors)

    def _settle_moves(self, timeout: float, starting: bool = False) -> None:
        """Cameras taken by their new node are its from now on; a node that could not take
        them is not tried again (at the start, it is an error)."""
        ready, _ = self.ray.wait([m.call for m in self.moves], num_returns=len(self.moves), timeout=timeout)
        done = {id(ref) for ref in ready}
        for move in [m for m in self.moves if id(m.call) in done]:
            self.moves.remove(move)
            actor = move.actor
            try:
                actor.info = self.ray.get(move.call)
            except Exception as exc:
                if starting:
                    raise _node_error(actor, exc, "could not start its cameras") from None
                log.warning(
                    "node %s could not take camera(s) %s: %s",
                    actor.node.label,
                    ", ".join(move.cameras),
                    first_line(_cause(exc)),
                )
                self.refused.add(actor.node.id)  # its cameras wait for another node
                if actor.active and not actor.cameras:
                    self._kill(actor, "refused")
                continue
            if actor.state == "starting":
                actor.state = "running"
            actor.cameras += move.cameras
            for camera in move.cameras:
                outage = self.waiting.pop(camera, None)
                when = self.connected_early.pop((id(actor), camera), None)
                if outage is not None:  # None: its first start
                    self.restarting[camera] = (outage, actor)
                    self._event("camera.moved", camera=camera, node=actor.node.label, lost_node=outage.node)
                    if when is not None:
                        self._restarted(camera, actor, outage, when)

    # --- running ----------------------------------------------------------------------------

    def run(self, stop: threading.Event, progress: ProgressLine | None = None) -> ClusterReport:
        self.database.audit.append(
            "run.start",
            "pipeline",
            {
                "deployment": self.policy.deployment.name,
                "fingerprint": self.policy.deployment.fingerprint(),
                "user": self.database.user,
                "config": str(self.config),
                "cameras": list(self.cameras),
                "demo": self.demo,
                "decisions": {
                    camera: {d.purpose: {"verdict": d.verdict.value, "rule": d.rule.id} for d in ds}
                    for camera, ds in self.decisions.items()
                },
                "cluster": {a.node.label: list(a.cameras) for a in self.actors if a.active},
            },
        )
        self._event(
            "run.start",
            cameras={c: s.shown for c, s in self.cameras.items()},
            nodes={a.node.label: self._describe(a) for a in self.actors if a.active},
        )
        for actor in self.actors:
            if actor.active:
                log.info(
                    "node %s (%s): camera(s) %s", actor.node.label, actor.info.get("device"), ", ".join(actor.cameras)
                )
        log.info(
            "ocr %s, batch %d, into %s",
            self.settings.pipeline.ocr,
            self.settings.pipeline.batch,
            self.database.store.safe_url,
        )
        next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
        next_status = 0.0
        purged = 0
        while not stop.is_set():
            started = time.monotonic()
            self._poll()
            self._watch_nodes()
            if self.moves:
                self._settle_moves(timeout=0)
            self._place()
            if progress is not None:
                progress.show_nodes({a.node.label: a.status.get("cameras", {}) for a in self.actors if a.active})
            if started >= next_status:
                next_status = started + StatusLog.STATUS_EVERY_SECONDS
                self._event(
                    "status",
                    nodes=self._nodes_json(),
                    waiting=sorted(self.waiting),
                    database=self.database.spool.as_json(),
                )
            if started >= next_purge:
                next_purge = started + PURGE_INTERVAL_SECONDS
                purged += self.database.spool.purge(time.time())
            stop.wait(max(0.0, POLL_SECONDS - (time.monotonic() - started)))
        return self._finish(purged)

    def _poll(self) -> None:
        """Every node's status: its cameras, what it kept; a node that died is lost."""
        polled = [a for a in self.actors if a.state in ("running", "unresponsive")]
        for actor in polled:
            if actor.poll is None:
                actor.poll = actor.handle.status.remote()
        calls = [a.poll for a in polled]
        ready, _ = self.ray.wait(calls, num_returns=len(calls), timeout=POLL_SECONDS / 2) if calls else ([], [])
        answered = {id(ref) for ref in ready}
        for actor in polled:
            if id(actor.poll) not in answered:
                continue
            call, actor.poll = actor.poll, None
            try:
                status = self.ray.get(call)
            except self.ray.exceptions.ActorUnavailableError:
                actor.state = "unresponsive"  # it may come back: its cameras stay
                continue
            except self.ray.exceptions.RayActorError as exc:
                self._lose(actor, f"its actor died: {first_line(exc)}")
                continue
            except Exception as exc:  # the node's loop failed (a database that refuses a batch)
                raise _node_error(actor, exc, "failed") from None
            actor.state, actor.last_seen = "running", time.time()
            self._take(actor, status)
            if status["stopped"]:
                self._lose(actor, "it stopped reading: it heard nothing from the driver for too long")

    def _take(self, actor: NodeActor, status: dict[str, Any]) -> None:
        """A node's status: shown, logged, and what it kept written out."""
        actor.status = status
        for level, message in status["messages"]:
            log.log(level, "node %s: %s", actor.node.label, message)
        for camera, when, state, why in status["changes"]:
            self._event("camera", camera=camera, node=actor.node.label, state=state, since=round(when, 3), error=why)
            if state != "connected":
                continue
            pending = self.restarting.get(camera)
            if pending and pending[1] is actor:
                self._restarted(camera, actor, pending[0], when)
            elif any(m.actor is actor and camera in m.cameras for m in self.moves):
                self.connected_early.setdefault((id(actor), camera), when)
        if self.reads is not None and status["reads"]:
            self.reads.write([PolicedRead.from_dict(r) for r in status["reads"]])
        if self.passages is not None and status["passages"]:
            self.passages.write_passages([Passage.from_dict(p) for p in status["passages"]])

    def _restarted(self, camera: str, actor: NodeActor, outage: Outage, when: float) -> None:
        del self.restarting[camera]
        seconds, down = round(when - outage.noticed, 1), round(when - outage.last_seen, 1)
        restart = {
            "camera": camera,
            "node": actor.node.label,
            "lost_node": outage.node,
            "since": round(when, 3),  # when it connected on its new node
            "seconds": seconds,
        }
        self.restarts.append({**restart, "since_last_answer": down})
        log.info(
            "camera %s runs again on node %s, %.1f s after node %s was found lost (%.1f s after its last answer)",
            camera,
            actor.node.label,
            seconds,
            outage.node,
            down,
        )
        self._event("camera.restarted", **restart, since_last_answer=down)

    def _watch_nodes(self) -> None:
        """A node Ray no longer lists as alive is lost, whatever its actor last said."""
        alive = {node.id for node in alive_nodes(self.ray)}
        for actor in self.actors:
            if actor.active and actor.node.id not in alive:
                self._lose(actor, "Ray no longer lists the node as alive")

    def _lose(self, actor: NodeActor, why: str) -> None:
        noticed = time.time()
        self._kill(actor, "lost")
        outage = Outage(actor.node.label, noticed, actor.last_seen)
        cameras = list(actor.cameras)
        for camera in cameras:
            self.waiting[camera] = outage
            self.restarting.pop(camera, None)
        for move in [m for m in self.moves if m.actor is actor]:
            self.moves.remove(move)  # its cameras are still waiting, since their own loss
            cameras += move.cameras
            for camera in move.cameras:
                self.connected_early.pop((id(actor), camera), None)
        log.warning(
            "node %s lost (%s): camera(s) %s start again on the other nodes",
            actor.node.label,
            why,
            ", ".join(cameras) or "none",
        )
        self._event(
            "node.lost", node=actor.node.label, reason=why, cameras=cameras, last_answer=round(actor.last_seen, 3)
        )

    def _kill(self, actor: NodeActor, state: str) -> None:
        actor.state, actor.poll = state, None
        try:
            self.ray.kill(actor.handle, no_restart=True)
        except Exception as exc:  # already gone
            log.debug("node %s: %s", actor.node.label, exc)

    # --- ending -------------------------------------------------------------------------------

    def _finish(self, purged: int) -> ClusterReport:
        """Every node stops (draining its frames), then the run's end is written."""
        finishing = [a for a in self.actors if a.state in ("running", "unresponsive")]
        calls = [a.handle.finish.remote() for a in finishing]
        ready, _ = self.ray.wait(calls, num_returns=len(calls), timeout=FINISH_TIMEOUT_SECONDS) if calls else ([], [])
        finished = {id(ref) for ref in ready}
        for actor, call in zip(finishing, calls, strict=True):
            actor.poll = None
            if id(call) not in finished:
                log.warning("node %s did not finish within %.0f s", actor.node.label, FINISH_TIMEOUT_SECONDS)
                self._kill(actor, "lost")
                continue
            try:
                self._take(actor, self.ray.get(call))
                actor.state = "finished"
            except Exception as exc:
                log.warning("node %s could not finish: %s", actor.node.label, first_line(_cause(exc)))
                self._kill(actor, "lost")
        report = self._report()
        report.tally.purged += purged
        record_run_end(
            self.database.audit,
            self.database.spool,
            {
                "cameras": {
                    c: {k: s.get(k) for k in ("processed", "reconnects", "nodes")} for c, s in report.cameras.items()
                },
                "reads_seen": report.tally.seen,
                "kept": dict(report.tally.stored),
                "purged": report.tally.purged,
                "counted": {f"{p}/{r}/{o.value}": n for (p, r, o), n in report.tally.counted.items()},
                "nodes": {label: {"state": n["state"], "cameras": n["cameras"]} for label, n in report.nodes.items()},
                "restarts": report.restarts,
            },
        )
        return report

    def _report(self) -> ClusterReport:
        tally = GateTally.combined([a.status["tally"] for a in self.actors if "tally" in a.status])
        cameras: dict[str, dict[str, Any]] = {}
        for actor in self.actors:
            for camera, figures in actor.status.get("cameras", {}).items():
                total = cameras.setdefault(
                    camera, {"processed": 0, "reads": 0, "dropped": 0, "reconnects": 0, "rejected": 0, "nodes": []}
                )
                for key in ("processed", "reads", "dropped", "reconnects", "rejected"):
                    total[key] += figures.get(key, 0)
                total["nodes"].append(actor.node.label)
        return ClusterReport(
            tally, cameras, self._nodes_json(), self.restarts, self.database.store.safe_url, self.database.spool
        )

    def _describe(self, actor: NodeActor) -> dict[str, Any]:
        return {
            "cameras": list(actor.cameras),
            "address": actor.node.address,
            "resources": list(actor.node.resources),
            "device": actor.info.get("device"),
            "spool": actor.info.get("spool"),
        }

    def _nodes_json(self) -> dict[str, dict[str, Any]]:
        return {
            a.node.label: {
                **self._describe(a),
                "state": a.state,
                "cameras": a.status.get("cameras", {}),
                "database": a.status.get("database", {}),
            }
            for a in self.actors
        }

    def _event(self, name: str, **fields: Any) -> None:
        if self.status_log is not None:
            self.status_log.event(name, **fields)

    def close(self) -> None:
        try:
            if self.connected:
                for actor in self.actors:
                    if actor.active:
                        self._kill(actor, "lost")
                self.ray.shutdown()
                self.connected = False
        finally:
            if self.own is not None:
                self.own.remove()
                self.own = None
            if self._stdout is not None:
                sys.stdout, self._stdout = self._stdout, None
            self.database.spool.close()
            self.database.store.close()

    def __enter__(self) -> ClusterRun:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _node_error(actor: NodeActor, exc: BaseException, what: str) -> AnprError:
    """A node's error as the run's: an anpr error keeps its kind (and exit status), with the node named."""
    cause = _cause(exc)
    if isinstance(cause, AnprError):
        return type(cause)(f"node {actor.node.label}: {cause}")
    return ClusterError(f"node {actor.node.label} {what}: {first_line(cause)}")


def _cause(exc: BaseException) -> BaseException:
    """The exception a node raised, out of Ray's wrapping (RayTaskError keeps it as `cause`)."""
    return getattr(exc, "cause", None) or exc

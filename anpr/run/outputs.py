"""What a run shows its operator: JSON lines, passages, the progress line, the status log
and the end-of-run summary.

The gate hands every output only the reads a purpose keeps (`PolicedRead`s), so nothing
here can show a read of a denied purpose. Writers (`JsonLines`, `PassageOutput`,
`ProgressLine`, `StatusLog`) write to their stream; the `*_lines` functions return text
for the CLI to print.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from anpr.errors import ConfigError
from anpr.files import open_file
from anpr.policy.engine import PurposeDecision
from anpr.policy.gate import GateTally
from anpr.records import Passage, PolicedRead
from anpr.run.pipeline import Lane


class ReadOutput(Protocol):
    """Receives every batch of kept reads of a run (as sinks do, but for the operator's eyes)."""

    def write(self, reads: Sequence[PolicedRead]) -> None: ...


class JsonLines:
    """One JSON object per kept read (`--jsonl`)."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout

    def write(self, reads: Sequence[PolicedRead]) -> None:
        for read in reads:
            self.out.write(json.dumps(read.to_dict()) + "\n")
        self.out.flush()


class PlateTally:
    """Confidence, time and frame of every kept read, by plate text, for the end-of-run summary."""

    def __init__(self) -> None:
        self.by_plate: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)

    def write(self, reads: Sequence[PolicedRead]) -> None:
        for policed in reads:
            read = policed.read
            self.by_plate[read.plate][read.frame] = (read.confidence, read.time)

    def lines(self) -> list[str]:
        if not self.by_plate:
            return []
        lines = [f"{'plate':<12} {'reads':>5} {'best':>5}  {'first s':>8} {'last s':>8}"]
        for plate, frames in sorted(self.by_plate.items(), key=lambda kv: -len(kv[1])):
            confidences = [c for c, _ in frames.values()]
            times = [t for _, t in frames.values()]
            lines.append(
                f"{plate:<12} {len(frames):>5} {max(confidences):>5.2f}  {min(times):>8.2f} {max(times):>8.2f}"
            )
        return lines


class PassageOutput:
    """The passages of a run as their tracks end; with `out`, each written as a JSON line
    at once (`--jsonl --passages`), else kept for the table at the end."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out
        self.passages: list[Passage] = []

    def write_passages(self, passages: Sequence[Passage]) -> None:
        self.passages += passages
        if self.out is not None:
            for passage in passages:
                self.out.write(json.dumps(passage.to_dict()) + "\n")
            self.out.flush()

    def lines(self) -> list[str]:
        lines = [f"{'plate':<12} {'conf':>5} {'reads':>5}  {'first s':>8} {'last s':>8}  country"]
        for passage in sorted(self.passages, key=lambda p: (p.source, p.first_frame)):
            p = passage.to_dict()  # the rounded figures, as the JSON lines give them
            lines.append(
                f"{p['plate']:<12} {p['confidence']:>5.2f} {p['reads']:>5}  {p['first_time']:>8.2f} "
                f"{p['last_time']:>8.2f}  {p['country'] or '-'}"
            )
        return lines


def lane_status(lanes: Sequence[Lane]) -> dict[str, dict[str, Any]]:
    """Each camera's source status and counters, for the JSON status log."""
    return {
        lane.name: {
            **lane.reader.status.as_json(),
            "processed": lane.stats.frames,
            "fps": round(lane.stats.fps, 2),
            "reads": lane.stats.reads,
            "dropped": lane.reader.dropped,
            "rejected": sum(lane.pipeline.rejected.values()),
        }
        for lane in lanes
    }


def _open_private(path: Path) -> IO[str]:
    """`path` opened for appending as anpr's private file (anpr/files.py: created 0600, never
    through a link, refused if another user's or open to others): the log names cameras,
    their sources and their errors. `-` is the way to stderr."""
    return os.fdopen(open_file(path, "append"), "a", encoding="utf-8")


class StatusLog:
    """JSON lines for monitoring (`--log-json`): run start and end, every change of a camera's
    state, and every camera's status at least every STATUS_EVERY_SECONDS."""

    STATUS_EVERY_SECONDS = 10.0

    def __init__(self, path: Path) -> None:
        try:
            self._out = sys.stderr if str(path) == "-" else _open_private(path)
        except OSError as exc:
            hint = " (`-` for stderr)" if str(path).startswith("/dev/") else ""  # /dev/stdout is a link
            raise ConfigError(f"cannot write the JSON log {path}: {exc.strerror or exc}{hint}") from None
        self._logged: dict[str, int] = {}  # camera -> state changes already written
        self._next_status = 0.0
        self.database: Any = None  # the spool, when the run has one: its as_json() is the database's state

    def event(self, name: str, **fields: Any) -> None:
        self._out.write(json.dumps({"time": round(time.time(), 3), "event": name, **fields}) + "\n")
        self._out.flush()

    def update(self, lanes: Sequence[Lane]) -> None:
        for lane in lanes:
            changes = lane.reader.status.changes
            for when, state, why in changes[self._logged.get(lane.name, 0) :]:
                self.event("camera", camera=lane.name, state=state.value, since=round(when, 3), error=why)
            self._logged[lane.name] = len(changes)
        if time.monotonic() >= self._next_status:
            self._next_status = time.monotonic() + self.STATUS_EVERY_SECONDS
            self.event(
                "status", cameras=lane_status(lanes), **({"database": self.database.as_json()} if self.database else {})
            )


class ProgressLine:
    """A one-line progress display on stderr, redrawn in place on a terminal: per camera,
    its state, frames and reads; it also feeds the JSON status log."""

    def __init__(self, total: int | None, status_log: StatusLog | None = None) -> None:
        self.total = total
        self.enabled = sys.stderr.isatty()
        self.status_log = status_log

    def __call__(self, lanes: Sequence[Lane]) -> None:
        if self.status_log:
            self.status_log.update(lanes)
        if self.enabled:
            total = self.total if len(lanes) == 1 else None
            named = len(lanes) > 1
            self._show(
                " | ".join(camera_progress(name if named else None, c, total) for name, c in lane_status(lanes).items())
            )

    def show_nodes(self, nodes: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
        """A cluster's cameras, by node (`lane_status` dictionaries, as the nodes report them)."""
        if self.enabled:
            self._show(
                "  ".join(
                    f"{node}[" + " | ".join(camera_progress(name, c) for name, c in cameras.items()) + "]"
                    for node, cameras in nodes.items()
                )
            )

    def _show(self, line: str) -> None:
        sys.stderr.write("\r  " + line + "   ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def camera_progress(name: str | None, camera: Mapping[str, Any], total: int | None = None) -> str:
    """One camera's part of the progress line, from its `lane_status` dictionary."""
    state = "" if camera["state"] == "connected" else f" {str(camera['state']).upper()}"
    again = f" reconnects {camera['reconnects']}" if camera["reconnects"] else ""
    dropped = f" dropped {camera['dropped']}" if camera["dropped"] else ""
    of_total = f"/{total}" if total else ""
    label = f"{name}:" if name else ""
    frames = f"frames {camera['processed']}{of_total} {camera['fps']:5.1f}/s"
    return f"{label}{state} {frames} reads {camera['reads']}{again}{dropped}"


def decision_lines(decisions: Sequence[PurposeDecision], camera: str | None = None) -> list[str]:
    """Each purpose's verdict as announced before a run (warnings prefixed `warning: `)."""
    where = f"camera {camera}: " if camera else ""
    lines = []
    for decision in decisions:
        if decision.allowed:
            kept = (
                f"reads kept {decision.retention_days:g} days"
                if decision.retention_days is not None
                else "aggregate counts only"
            )
            lines.append(f"{where}purpose {decision.purpose}: allowed by {decision.rule.id} ({kept})")
        else:
            lines.append(
                f"{where}purpose {decision.purpose}: DENIED by {decision.rule.id}: "
                f"{'; '.join(decision.reasons)} [{decision.legal_reference}]"
            )
        lines.extend(f"warning: {where}purpose {decision.purpose}: {note}" for note in decision.retention_notes)
    return lines


def summary_lines(
    gate_tally: GateTally, lanes: Sequence[Lane], store_url: str, database: Mapping[str, Any] | None = None
) -> list[str]:
    """The end of a run, per purpose and per camera (warnings prefixed `warning: `);
    `database`: the spool's as_json(), for where the kept reads went."""
    lines = purpose_lines(gate_tally)
    for lane in lanes:
        lines += _camera_lines(lane, f"camera {lane.name}: " if len(lanes) > 1 else "")
    lines.append(kept_line(gate_tally, store_url, [database or {}]))
    return lines


def kept_line(gate_tally: GateTally, store_url: str, spools: Sequence[Mapping[str, Any]]) -> str:
    """The reads seen, and where those the policy kept went, by the spools' figures (as_json):
    a read the spool could not take (full, not writable) is counted as lost, not as kept."""
    allowed = sum(gate_tally.stored.values())
    waiting = sum(int(spool.get("pending_reads", 0)) for spool in spools)
    lost = sum(int(spool.get("lost_reads", 0)) for spool in spools)
    if not waiting and not lost:
        return f"{gate_tally.seen} reads seen, {allowed} kept in {store_url}"
    parts = [f"{max(allowed - waiting - lost, 0)} kept in {store_url}"]
    parts += [f"{waiting} waiting in the spool for it"] if waiting else []
    parts += [f"{lost} lost (the spool was full or not writable)"] if lost else []
    return f"{gate_tally.seen} reads seen, {allowed} allowed: " + ", ".join(parts)


def purpose_lines(gate_tally: GateTally) -> list[str]:
    """Per purpose: the reads kept and passages made, the reads only counted; tracks that made no passage."""
    lines = [
        f"{purpose}: {number} reads kept, {gate_tally.passages[purpose]} passages"
        for purpose, number in sorted(gate_tally.stored.items())
    ]
    if gate_tally.dropped_tracks:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(gate_tally.dropped_tracks.items()))
        lines.append(f"{sum(gate_tally.dropped_tracks.values())} tracks made no passage ({reasons})")
    lines += [
        f"{purpose}: {number} reads {outcome.value.replace('_', ' ')} ({rule}); only the count is kept"
        for (purpose, rule, outcome), number in sorted(gate_tally.counted.items())
    ]
    return lines


def _camera_lines(lane: Lane, name: str) -> list[str]:
    stats, status = lane.stats, lane.reader.status
    lines = [
        f"{name}{stats.frames} frames in {stats.seconds:.1f} s ({stats.fps:.1f} frames/s)"
        + (f", {lane.reader.dropped} frames dropped" if lane.reader.dropped else "")
        + (f", {status.reconnects} reconnections" if status.reconnects else "")
    ]
    if lane.pipeline.rejected:
        reasons = ", ".join(f"{n} {reason.value}" for reason, n in sorted(lane.pipeline.rejected.items()))
        lines.append(f"{name}{sum(lane.pipeline.rejected.values())} texts rejected as no plate ({reasons})")
    if status.damaged_stretches:
        lines.append(
            f"warning: {name}{lane.reader.source.name} is damaged: {status.damaged_stretches} "
            f"stretch(es) of undecodable frames skipped"
        )
    if status.skipped:
        lines.append(
            f"warning: {name}{len(status.skipped)} image(s) skipped: "
            + "; ".join(f"{image}: {why}" for image, why in status.skipped[:5])
            + (" ..." if len(status.skipped) > 5 else "")
        )
    return lines


def cluster_summary_lines(
    gate_tally: GateTally,
    cameras: Mapping[str, Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, Any]],
    restarts: Sequence[Mapping[str, Any]],
    store_url: str,
) -> list[str]:
    """The end of a cluster run (anpr/run/cluster.py): per purpose, per camera with the nodes
    that ran it, the cameras started again after a node was lost, and each node's spool
    (warnings prefixed `warning: `). A lost node's figures are those of its last answer."""
    lines = purpose_lines(gate_tally)
    for camera, figures in cameras.items():
        lines.append(
            f"camera {camera}: {figures['processed']} frames on node(s) {', '.join(figures['nodes'])}"
            + (f", {figures['dropped']} frames dropped" if figures["dropped"] else "")
            + (f", {figures['reconnects']} reconnections" if figures["reconnects"] else "")
            + (f", {figures['rejected']} texts rejected as no plate" if figures["rejected"] else "")
        )
    lines += [
        f"camera {r['camera']}: ran again on node {r['node']} {r['seconds']:.1f} s after node {r['lost_node']} "
        f"was found lost ({r['since_last_answer']:.1f} s after its last answer)"
        for r in restarts
    ]
    for node, state in nodes.items():
        database = state.get("database") or {}
        if state["state"] == "lost":
            lines.append(f"warning: node {node} was lost: its figures above are those of its last answer")
        if database.get("spooled_batches") or database.get("flushed_batches"):
            lines.append(
                f"node {node}: the database was unreachable for part of the run: "
                f"{database['spooled_reads']} read(s) spooled, {database['flushed_reads']} sent later"
            )
        if database.get("pending_batches"):
            lines.append(
                f"warning: node {node}: {database['pending_reads']} read(s) kept in {database['spool_dir']} on "
                f"that machine: the next cluster run there sends them (each is deleted when its retention ends)"
            )
    lines.append(kept_line(gate_tally, store_url, [state.get("database") or {} for state in nodes.values()]))
    return lines

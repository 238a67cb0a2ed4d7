"""`anpr demo`: one clip, every deployment config, side by side.

The clip is read once for each distinct set of run settings among the configs (the
configs in configs/ share the defaults, so once), with the models those settings name.
Its reads then pass each deployment's policy gate into a database of that config's own,
exactly as `anpr run --config ... --demo` would store them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anpr.config.settings import Settings, load_settings
from anpr.errors import AnprError
from anpr.policy.engine import Policy
from anpr.policy.gate import PolicyGate
from anpr.reading.source import open_source
from anpr.reading.track import TrackEnd
from anpr.records import Outcome, PlateRead
from anpr.run.assemble import load_models, read_lane, require_deployment
from anpr.run.pipeline import run_lanes
from anpr.sinks.catalog import close_sinks, make_sinks
from anpr.storage.keys import load_keys
from anpr.storage.store import ReadStore

log = logging.getLogger("anpr")


class _Collect:
    def __init__(self) -> None:
        self.reads: list[PlateRead] = []

    def write(self, reads: Sequence[PlateRead]) -> None:
        self.reads.extend(reads)

    def end_tracks(self, source: str, ends: Sequence[TrackEnd]) -> None:
        pass  # the demo compares reads per config; passages are the run's (anpr run --passages)


def _reads_of(sample: Path, settings: Settings) -> list[PlateRead]:
    collected = _Collect()
    run_lanes([read_lane("sample", open_source(str(sample)), settings, load_models(settings), [collected])])
    return collected.reads


def gate_sample(configs: Path, sample: Path, workdir: Path) -> list[dict[str, Any]]:
    """One row per (config, purpose): verdict, rule, reads seen, stored, blocked, counted only,
    not stored. Each config's database (and export files) are written in `workdir`."""
    paths = sorted(configs.glob("*.yaml"))
    if not paths:
        raise AnprError(f"no *.yaml configs in {configs}")
    # An invalid config, or one that declares no deployment, fails before reading.
    loaded = [(path, load_settings(path)) for path in paths]
    deployments = [(path, settings, require_deployment(settings)) for path, settings in loaded]
    log.info("reading %s once for %d configs", sample, len(paths))
    reads_by_settings: dict[str, list[PlateRead]] = {}
    workdir.mkdir(parents=True, exist_ok=True)
    keys = load_keys(workdir / "anpr.key", create=True)
    rows = []
    for path, settings, deployment in deployments:
        reading = json.dumps(settings.model_dump(include={"pipeline", "detector"}), sort_keys=True)
        if reading not in reads_by_settings:
            reads_by_settings[reading] = _reads_of(sample, settings)
        reads = reads_by_settings[reading]
        policy = Policy(deployment)
        store = ReadStore(str(workdir / f"{path.stem}.sqlite"), keys)
        # Exports go to the work folder, never into the current directory.
        sinks = make_sinks(
            {name: spec.in_folder(workdir, f"{path.stem}-{name}") for name, spec in deployment.sinks.items()}, store
        )
        try:
            for camera in deployment.cameras:
                gate = PolicyGate(policy, camera, store, sinks)
                gate.write(reads)
                for code in camera.purposes:
                    decision = policy.purpose(code)
                    counted = {o: gate.tally.counted_for(code, o) for o in Outcome}
                    rows.append(
                        {
                            "config": path.name,
                            "purpose": code,
                            "verdict": decision.verdict.value,
                            "rule": decision.rule.id,
                            "seen": gate.tally.seen,
                            "stored": gate.tally.stored[code],
                            "blocked": counted[Outcome.BLOCKED],
                            "counted_only": counted[Outcome.AGGREGATED],
                            "not_stored": counted[Outcome.NOT_STORED],
                        }
                    )
        finally:
            close_sinks(sinks.values(), store)
            store.close()
    return rows

"""Issue 26: (filled in by the work on this group)."""

from __future__ import annotations

from benchmarks.attacks.kit import Target


def run(target: Target) -> None:
    """Every attack of this group, each adding its row."""

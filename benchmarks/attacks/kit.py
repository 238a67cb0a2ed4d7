"""What every attack script shares: running `anpr` as a user would, and the table's rows.

Each group of attacks is a module of this package with a `run(target)` function that
adds its rows with `row`; `benchmarks/red_team.py` runs them all and prints the table.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "sample.mp4"
CONFIGS = REPO / "configs"
ME = __import__("pwd").getpwuid(os.geteuid()).pw_name
ROWS: list[tuple[str, str, str, str]] = []  # case, attack, command, result


def anpr(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anpr", *args], capture_output=True, text=True, cwd=cwd, timeout=900)


def verified(result: subprocess.CompletedProcess[str]) -> str:
    """`anpr audit verify`'s exit status and every problem it named."""
    return f"exit {result.returncode}: " + "; ".join(f"`{line}`" for line in result.stdout.splitlines()[:6])


def search(
    work: Path, plate: str, purpose: str, config: Path, db: Path, *more: str
) -> subprocess.CompletedProcess[str]:
    """`anpr db search PLATE --purpose P --config C --db D ...` in `work`."""
    return anpr("db", "search", plate, "--purpose", purpose, "--config", str(config), "--db", str(db), *more, cwd=work)


def said(result: subprocess.CompletedProcess[str]) -> str:
    """The exit status and the first error or result line."""
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    key = next((line for line in lines if "error" in line or "problem" in line), lines[-1] if lines else "")
    return f"exit {result.returncode}: `{key.strip()[:220]}`"


def row(case: str, attack: str, command: str, result: str) -> None:
    ROWS.append((case, attack, command, result))
    print(f"  {case} {attack}: {result}", file=sys.stderr, flush=True)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def paris_with_agents(folder: Path) -> Path:
    data = yaml.safe_load((CONFIGS / "paris-fps.yaml").read_text())
    data["purposes"]["parking_fps"]["safeguards"]["designated_agents"] = [ME]
    data["cameras"][0]["source"] = str(SAMPLE)
    return write_yaml(folder / "paris-agents.yaml", data)


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


@dataclass(frozen=True)
class Target:
    """What the attacks start from: a work folder, the deployment's config (Paris FPS with
    this user as its designated agent), its database after one run of the sample, and one
    plate that run stored."""

    work: Path
    config: Path
    db: Path
    plate: str

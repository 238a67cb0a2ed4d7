"""Charts of what `anpr eval` and `anpr bench` measured (`--plot OUT.png`).

Each function takes the summary the command prints with `--json` (so a chart always shows
the printed figures) and writes one PNG. Matplotlib runs without a display (Agg) and is
imported only here, only when a chart is asked for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from anpr.errors import ConfigError

TOP_CONFUSIONS_SHOWN = 10
# Bench bars, top to bottom: the limit, the result, then each stage as if it ran alone.
BENCH_BARS = (
    ("decode_fps", "decode only (the limit)"),
    ("fps", "anpr, end to end"),
    ("naive_fps", "naive: YOLO + EasyOCR per frame"),
)
STAGE_LABELS = {
    "detect": "detect (motion, detector)",
    "track": "track",
    "read": "read (recogniser)",
    "keep": "keep (policy gate, database)",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    try:
        figure.savefig(path, dpi=110, bbox_inches="tight")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        _pyplot().close(figure)


def plot_eval(summaries: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Exact plates, right in the top 3 and detection recall per set; the top character
    confusions of all sets together (expected -> read)."""
    plt = _pyplot()
    figure, (scores, confused) = plt.subplots(1, 2, figsize=(12, 0.6 * len(summaries) + 3.2))
    names = [
        f"{Path(s['dataset']).name}"
        + (
            f" ({s['split']}" + (", detector" if s.get("via") == "through the detector" else "") + ")"
            if s.get("split")
            else ""
        )
        for s in summaries
    ]
    measures = [("exact", "exact plate"), ("top3", "right in top 3"), ("detection_recall", "detection recall")]
    height = 0.8 / len(measures)
    for offset, (key, label) in enumerate(measures):
        values = [s[key] if s[key] is not None else 0.0 for s in summaries]
        rows = [i + offset * height for i in range(len(summaries))]
        bars = scores.barh(rows, values, height=height, label=label)
        scores.bar_label(
            bars,
            labels=[f"{v:.3f}" if s[key] is not None else "n/a" for v, s in zip(values, summaries, strict=True)],
            fontsize=8,
            padding=2,
        )
    scores.set_yticks([i + height for i in range(len(summaries))], names)
    scores.invert_yaxis()
    scores.set_xlim(0, 1.12)
    scores.set_xlabel("share of images")
    scores.set_title("Accuracy per set")
    scores.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(measures), fontsize=8)

    counted: Counter[str] = Counter()
    for summary in summaries:
        for expected, read, count in summary["confusions"]:
            counted[f"{expected or '-'} > {read or '-'}"] += count
    top = counted.most_common(TOP_CONFUSIONS_SHOWN)
    if top:
        confused.barh([pair for pair, _ in top], [count for _, count in top], color="tab:red")
        confused.invert_yaxis()
        confused.set_xlabel("times, in wrong reads ('-': nothing)")
    else:
        confused.text(0.5, 0.5, "no confusion: every read right", ha="center", va="center")
        confused.set_axis_off()
    confused.set_title("Top character confusions (expected > read)")
    _save(figure, path)


def plot_bench(result: Mapping[str, Any], path: Path) -> None:
    """Frames/s of the decode limit, of anpr end to end, of the naive pipeline, and of each
    of anpr's stages as if it ran alone (the video's frames over the stage's seconds)."""
    plt = _pyplot()
    bars = [(label, float(result[key])) for key, label in BENCH_BARS]
    bars += [(STAGE_LABELS.get(stage, stage), float(fps)) for stage, fps in result.get("stage_fps", {}).items()]
    colours = ["tab:gray", "tab:green", "tab:orange"] + ["tab:blue"] * (len(bars) - len(BENCH_BARS))
    figure, axes = plt.subplots(figsize=(9, 0.45 * len(bars) + 1.6))
    drawn = axes.barh([label for label, _ in bars], [fps for _, fps in bars], color=colours)
    axes.bar_label(drawn, labels=[f"{fps:.1f}" for _, fps in bars], fontsize=8, padding=2)
    axes.axvline(float(result["decode_fps"]), color="tab:gray", linestyle="--", linewidth=1)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("frames/s (log scale); a stage's bar: its frames/s alone")
    video = Path(str(result["video"])).name
    axes.set_title(
        f"{video}: {result['frames']} frames, {result['fraction_of_decode']:.2f} of the decode limit "
        f"({result['detector']}, stride {result['stride']}, batch {result['batch']})"
    )
    _save(figure, path)
